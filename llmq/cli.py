"""The `llmq` command: `dev`, `api`, `worker` (and the operator commands registered below).

Every flag is a setting of `llmq.schemas.settings` (its groups say which commands take their
fields), so each can also be given as an `LLMQ_<NAME>` environment variable; a flag wins
over the environment.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from llmq import event_loop
from llmq.schemas.settings import Leaf, Settings, leaves

Handler = Callable[[argparse.Namespace], int]
Command = Literal["api", "worker", "dev"]


def flags_for(command: Command) -> list[Leaf]:
    """The settings `llmq <command>` takes as flags, as their groups and fields declare.
    Secrets (LLMQ_ADMIN_TOKEN, LLMQ_WEBHOOK_SECRET, backend keys) never get one: it would
    show in `ps`; they come from the environment or a file."""
    return [leaf for leaf in leaves(Settings) if command in leaf.commands]


def add_settings_flags(parser: argparse.ArgumentParser, command: Command) -> None:
    """One `--flat-name` flag per setting of `command`, typed and documented from the model."""
    for leaf in flags_for(command):
        help_text = f"{leaf.info.description} (env {leaf.env})"
        annotation = leaf.info.annotation
        if annotation is bool:
            parser.add_argument(
                leaf.flag,
                dest=leaf.flat,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif leaf.repeat:
            parser.add_argument(
                leaf.flag, dest=leaf.flat, action="append", default=None, help=help_text
            )
        else:
            kind: Any = annotation if annotation in (int, float) else str
            parser.add_argument(leaf.flag, dest=leaf.flat, type=kind, default=None, help=help_text)


def settings_from(args: argparse.Namespace, command: Command) -> Settings:
    """Settings from the environment, with the flags given to `command` on top. A server
    URL flag carrying a password is refused: a command line shows in `ps`."""
    from llmq.dispatcher.connection import has_password

    overrides = {
        leaf.flat: getattr(args, leaf.flat)
        for leaf in flags_for(command)
        if getattr(args, leaf.flat, None) is not None
    }
    for name in ("nats_url", "redis_url"):
        if name in overrides and has_password(str(overrides[name])):
            raise SystemExit(
                f"llmq {command}: no credentials in --{name.replace('_', '-')} (a command "
                f"line shows in `ps`); put them in LLMQ_{name.upper()} or the "
                "LLMQ_NATS_*/LLMQ_REDIS_PASSWORD settings (docs/security.md)"
            )
    return Settings(**overrides)


def setup_logging(settings: Settings) -> None:
    from llmq.api.logs import configure

    configure(settings.observability.log_level, settings.observability.log_json)


# --- commands --------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    settings = settings_from(args, "api")
    setup_logging(settings)
    from llmq.api.server import run_api

    return 0 if run_api(settings) else 3


def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args, "worker")
    setup_logging(settings)
    from llmq.dispatcher.connection import NatsRefused
    from llmq.worker.main import run_worker

    try:
        _run(run_worker(settings))
    except NatsRefused as exc:
        print(f"llmq worker: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    settings = settings_from(args, "dev")
    setup_logging(settings)
    from llmq.dev import run_dev

    return run_dev(
        settings, data_dir=args.data_dir, nats_port=args.nats_port, redis_port=args.redis_port
    )


def _run(coro: Any) -> None:
    event_loop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmq", description="OpenAI-compatible LLM gateway on NATS"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser(
        "dev", help="run nats-server, a Redis-compatible server, the api and an echo worker"
    )
    add_settings_flags(dev, "dev")
    dev.add_argument("--data-dir", default=None, help="keep server data here (default: a temp dir)")
    dev.add_argument("--nats-port", type=int, default=0, help="nats-server's port (default: free)")
    dev.add_argument(
        "--redis-port",
        type=int,
        default=0,
        help="the Redis-compatible server's port (default: free)",
    )
    dev.set_defaults(handler=cmd_dev)

    api = sub.add_parser("api", help="run the HTTP api")
    add_settings_flags(api, "api")
    api.set_defaults(handler=cmd_api)

    worker = sub.add_parser("worker", help="run a worker in front of one backend")
    add_settings_flags(worker, "worker")
    worker.set_defaults(handler=cmd_worker)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Operator command groups living beside the code they drive."""
    from llmq import batches_cli, ops_cli, provision, redis_keys, tenants_cli, top_cli

    return [
        tenants_cli.register,
        ops_cli.register,
        top_cli.register,
        batches_cli.register,
        redis_keys.register,
        provision.register,
    ]


def _innermost(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)command `args` ran, e.g. `llmq keys`'s or `llmq redis
    migrate-keys`'s, so a wrong flag is answered with that command's usage."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None or chosen not in subs[0].choices:
            return parser
        parser = subs[0].choices[chosen]


def _unknown(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """`unrecognized arguments: --rmp (did you mean --rpm?)`."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    said = []
    for arg in extra:
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
        said.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    return "unrecognized arguments: " + " ".join(said)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _innermost(parser, args)
        command.error(_unknown(command, extra))
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
