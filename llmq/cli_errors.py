"""Errors of the operator commands as one sentence that names the flag or the setting to fix
(never a secret), instead of a library's message."""

from __future__ import annotations

import argparse
import re

import msgspec
from redis import exceptions as redis_errors

from llmq.api.tenancy.client import SentinelPasswordRefused

_FLAG_OF = {
    "input_per_1m": "--input",
    "output_per_1m": "--output",
    "cached_input_per_1m": "--cached-input",
    "cache_write_per_1m": "--cache-write",
}
"""Fields whose flag is not simply `--<field>`."""
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<field>[^`]*)`)?$")


def invalid_input(exc: msgspec.ValidationError, args: argparse.Namespace) -> str:
    """One sentence naming the flag (or the tenant name) msgspec refused, and why."""
    match = _AT.match(str(exc))
    what, field = (match["what"], match["field"] or "") if match else (str(exc), "")
    if field == "name":
        name = getattr(args, "name", None) or getattr(args, "tenant", "")
        return (
            f"tenant name {name!r} is not valid: use 1 to 64 letters, digits, '.', '_', '@' "
            "or '-', starting with a letter or digit"
        )
    flag = _FLAG_OF.get(field, "--" + field.replace("_", "-")) if field else "the input"
    said = what.replace("`", "")
    return f"{flag} is not valid: {said[:1].lower()}{said[1:]}"


def redis_failure(exc: BaseException, shown: str, sent_password: bool) -> str:
    """Why Redis could not be used, in one sentence naming the setting to check (never a
    password): a refused password, a missing one (`sent_password` False), or the server's
    unreachability."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(
        cause, (redis_errors.AuthenticationError, SentinelPasswordRefused)
    ):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, SentinelPasswordRefused):
        return (
            f"the Redis Sentinels of {shown} refused the password: check "
            "LLMQ_REDIS_SENTINEL_PASSWORD or LLMQ_REDIS_SENTINEL_PASSWORD_FILE"
        )
    if cause is None:
        return f"cannot reach Redis at {shown}: {exc} (check LLMQ_REDIS_URL)"
    if not sent_password:
        return (
            f"Redis at {shown} requires a password: set LLMQ_REDIS_PASSWORD or "
            "LLMQ_REDIS_PASSWORD_FILE (or put it in LLMQ_REDIS_URL)"
        )
    if "no password is set" in str(cause):
        return (
            f"Redis at {shown} has no password but one was sent: unset LLMQ_REDIS_PASSWORD "
            "(and LLMQ_REDIS_PASSWORD_FILE, and any password in LLMQ_REDIS_URL)"
        )
    return (
        f"Redis at {shown} refused the password: check LLMQ_REDIS_PASSWORD, "
        "LLMQ_REDIS_PASSWORD_FILE or the password in LLMQ_REDIS_URL"
    )
