"""What `llmq dev` prints once the stack serves: the URLs, the key, the admin token, and
commands that work exactly as printed from the directory it was started in (the venv's
`llmq` and `python` by their path unless they are the ones on PATH)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

NATS_CLI = "https://github.com/nats-io/natscli/releases"
"""Where the `nats` command comes from (a Go binary; no Python or Debian package ships it)."""


def command_path(name: str) -> str:
    """How to type the `name` script of this interpreter's environment: `name` when PATH
    finds that very file, else its path (relative to the working directory when below it)."""
    here = Path(sys.executable).parent / name
    if not here.exists():
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == here.resolve():
        return name
    try:
        return str(here.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(here.absolute())


def activate_hint() -> str:
    """`source .venv/bin/activate` when this interpreter is a venv's not yet on PATH."""
    bindir = Path(sys.executable).parent
    activate = bindir / "activate"
    if not activate.exists() or command_path("llmq") == "llmq":
        return ""
    shown = command_path("activate")
    return f"  (or `source {shown}` once, then `llmq ...` and `python ...`)\n"


@dataclass(frozen=True)
class Banner:
    base: str
    """`http://127.0.0.1:8000`."""
    key: str | None
    """The dev tenant's key; None with auth off."""
    admin_token: str
    admin_token_generated: bool
    console: bool
    nats_url: str
    redis_url: str
    nats_token_file: Path
    redis_password_file: Path

    def text(self) -> str:
        return "\n".join(
            [self._head(), self._calls(), self._operator(), "Press Ctrl-C to stop everything.\n"]
        )

    def _head(self) -> str:
        lines = [
            f"llmq is running: {self.base}/v1   (health: {self.base}/health, ready: "
            f"{self.base}/ready)",
            "",
        ]
        if self.key:
            lines.append(f"  API key (tenant dev)  {self.key}")
        if self.admin_token_generated:
            lines.append(f"  admin token           {self.admin_token}   (for /admin and /ui)")
        elif self.admin_token:
            lines.append("  admin token           yours, from LLMQ_ADMIN_TOKEN(_FILE)")
        if self.console and self.admin_token:
            lines.append(f"  console               {self.base}/ui   (log in with the admin token)")
        return "\n".join(lines) + "\n"

    def _calls(self) -> str:
        auth = f' \\\n    -H "Authorization: Bearer {self.key}"' if self.key else ""
        api_key = self.key or "unused"
        python = command_path("python")
        return f"""Call it (from this directory):

  curl -s {self.base}/v1/chat/completions{auth} \\
    -H 'Content-Type: application/json' \\
    -d '{{"model": "echo", "messages": [{{"role": "user", "content": "hello llmq"}}]}}'

  {python} -c "from openai import OpenAI; c = OpenAI(base_url='{self.base}/v1', \\
api_key='{api_key}'); m = [{{'role': 'user', 'content': 'hi there'}}]; \\
print(c.chat.completions.create(model='echo', messages=m).choices[0].message.content)"
"""

    def _operator(self) -> str:
        llmq = command_path("llmq")
        token, password = self.nats_token_file, self.redis_password_file
        host = self.nats_url.removeprefix("nats://")
        return f"""Look inside (NATS and Redis here take credentials, in files only you can read):
  NATS token {token}, Redis password {password}

  LLMQ_NATS_URL={self.nats_url} LLMQ_NATS_TOKEN_FILE={token} {llmq} status
  LLMQ_REDIS_URL={self.redis_url} LLMQ_REDIS_PASSWORD_FILE={password} {llmq} tenants list
{activate_hint()}
  With the `nats` CLI ({NATS_CLI}):
  NATS_URL="nats://$(cat {token})@{host}" nats stream ls
"""
