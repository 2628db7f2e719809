"""The steady traffic of the chaos suite (bench/chaos.py) and what became of each request.

Chat lanes alternate streamed and non-streamed completions through the official openai SDK,
spread over the apis; a lane whose api is gone moves to the next one (as a load balancer
would). One lane submits async jobs (`POST /v1/jobs`) and polls each to its end. Every
request ends as `ok`, `error` (a clean OpenAI error: status + code, or an error event in a
stream), `cut` (the connection to a killed api dropped) or `hung` (no end within `hung`
seconds); a wrong answer is `wrong`. A batch is checked line by line: lost or doubled.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai


@dataclass(slots=True)
class Outcome:
    kind: str
    """`stream`, `chat` (not streamed) or `job` (async)."""
    started: float
    ended: float
    result: str
    """`ok`, `error`, `cut`, `hung` or `wrong`."""
    detail: str = ""
    """The error's status and code, for the table's notes."""


@dataclass
class Traffic:
    """Chat lanes and an async-job lane over `api_urls` until `stop()`."""

    api_urls: list[str]
    key: str
    model: str
    lanes: int = 10
    words: int = 24
    """Prompt length in words: the echo worker answers one token per word."""
    hung: float = 40.0
    job_every: float = 0.5
    outcomes: list[Outcome] = field(default_factory=list)
    _going: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._chat_lane(i)) for i in range(self.lanes)]
        if self.job_every > 0:
            self._tasks.append(asyncio.create_task(self._job_lane()))

    async def stop(self) -> None:
        self._going = False
        await asyncio.wait(self._tasks, timeout=self.hung + 15)
        for task in self._tasks:
            task.cancel()

    def _client(self, url: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key=self.key, max_retries=0, timeout=self.hung + 5
        )

    async def _chat_lane(self, index: int) -> None:
        clients = [self._client(url) for url in self.api_urls]
        which, n = index % len(clients), 0
        try:
            while self._going:
                n += 1
                text = " ".join(f"w{index}-{n}-{i}" for i in range(self.words))
                outcome = await self._chat(clients[which], text, stream=bool(n % 2))
                self.outcomes.append(outcome)
                if outcome.result == "cut":
                    which = (which + 1) % len(clients)
                    await asyncio.sleep(0.05)
                elif outcome.result != "ok":
                    await asyncio.sleep(0.05)
        finally:
            for client in clients:
                await client.close()

    async def _chat(self, client: openai.AsyncOpenAI, text: str, stream: bool) -> Outcome:
        started = time.monotonic()
        kind = "stream" if stream else "chat"
        messages: Any = [{"role": "user", "content": text}]
        try:
            async with asyncio.timeout(self.hung):
                if stream:
                    events = await client.chat.completions.create(
                        model=self.model, messages=messages, stream=True
                    )
                    parts = [c.choices[0].delta.content or "" async for c in events if c.choices]
                    got = "".join(parts)
                else:
                    reply = await client.chat.completions.create(
                        model=self.model, messages=messages
                    )
                    got = reply.choices[0].message.content or ""
        except TimeoutError:
            return Outcome(kind, started, time.monotonic(), "hung")
        except openai.APIStatusError as exc:
            return Outcome(
                kind, started, time.monotonic(), "error", f"{exc.status_code} {exc.code}"
            )
        except openai.APIConnectionError:
            return Outcome(kind, started, time.monotonic(), "cut")
        except openai.APIError as exc:  # an error event after the stream started
            return Outcome(kind, started, time.monotonic(), "error", f"stream {exc.code}")
        return Outcome(kind, started, time.monotonic(), "ok" if got == text else "wrong")

    async def _job_lane(self) -> None:
        running: set[asyncio.Task[None]] = set()
        n = 0
        # POST /v1/jobs retries its record through an election for up to 30 s: wait that long
        async with httpx.AsyncClient(timeout=35) as http:
            while self._going:
                n += 1
                task = asyncio.create_task(
                    self._job(http, self.api_urls[n % len(self.api_urls)], n)
                )
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(self.job_every)
            if running:
                await asyncio.wait(running, timeout=self.hung + 10)

    async def _job(self, http: httpx.AsyncClient, url: str, n: int) -> None:
        """Submit one async job and poll it (through any api) until it ends."""
        started = time.monotonic()
        text = f"async job {n}"
        headers = {"authorization": f"Bearer {self.key}"}
        body = {"model": self.model, "messages": [{"role": "user", "content": text}]}
        result, detail = "hung", ""
        urls = [url, *[u for u in self.api_urls if u != url]]
        job_id = None
        while time.monotonic() - started < self.hung:
            try:
                if job_id is None:
                    resp = await http.post(f"{urls[0]}/v1/jobs", json=body, headers=headers)
                    if resp.status_code != 202:
                        result, detail = "error", f"{resp.status_code} {_code(resp)}"
                        break
                    job_id = resp.json()["id"]
                else:
                    resp = await http.get(f"{urls[0]}/v1/jobs/{job_id}", headers=headers)
                    job = resp.json()
                    detail = f"last seen {job.get('status')}"
                    if job.get("status") == "completed":
                        content = job["result"]["choices"][0]["message"]["content"]
                        result = "ok" if content == text else "wrong"
                        break
                    if job.get("status") in ("failed", "cancelled", "expired"):
                        result, detail = "error", f"job {(job.get('error') or {}).get('code')}"
                        break
            except (httpx.TransportError, ValueError, KeyError):
                if job_id is None and time.monotonic() - started > 2:
                    result = "cut"  # its api died before the job was queued
                    break
                urls = urls[1:] + urls[:1]
            await asyncio.sleep(0.2)
        self.outcomes.append(Outcome("job", started, time.monotonic(), result, detail))


def _code(resp: httpx.Response) -> str:
    try:
        error = resp.json()["error"]
        return f"{error['code']} ({str(error['message'])[:40]})"
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(slots=True)
class BatchCheck:
    lines: int
    ok: int = 0
    errors: int = 0
    lost: int = 0
    doubled: int = 0
    status: str = ""
    batch_id: str = ""
    retries: list[str] = field(default_factory=list)
    """Errors of the batch API itself that a retry got past."""


async def run_batch(
    api_urls: list[str], key: str, model: str, lines: int, timeout: float
) -> BatchCheck:
    """Upload `lines` requests, create a batch, wait for its end (through any api), and
    check every custom_id is answered exactly once (output or error file)."""
    inputs = "".join(
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": f"b{i}"}]}})
        + "\n"
        for i in range(lines)
    )  # fmt: skip
    check = BatchCheck(lines)
    deadline = time.monotonic() + timeout
    urls = list(api_urls)
    batch = None
    while time.monotonic() < deadline:
        client = openai.AsyncOpenAI(base_url=f"{urls[0]}/v1", api_key=key, max_retries=0)
        try:
            if batch is None:
                file = await client.files.create(
                    file=("chaos.jsonl", io.BytesIO(inputs.encode())), purpose="batch"
                )
                batch = await client.batches.create(
                    input_file_id=file.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
            batch = await client.batches.retrieve(batch.id)
            check.batch_id = batch.id
            check.status = batch.status
            if batch.status in ("completed", "failed", "expired", "cancelled"):
                check.status = batch.status
                seen: collections.Counter[str] = collections.Counter()
                for file_id, ok in ((batch.output_file_id, True), (batch.error_file_id, False)):
                    if not file_id:
                        continue
                    content = (await client.files.content(file_id)).text
                    for line in filter(None, content.splitlines()):
                        row = json.loads(line)
                        seen[row["custom_id"]] += 1
                        status = (row.get("response") or {}).get("status_code") if ok else None
                        if status == 200:
                            check.ok += 1
                        else:
                            check.errors += 1
                check.lost = sum(1 for i in range(lines) if not seen[f"line-{i}"])
                check.doubled = sum(n - 1 for n in seen.values() if n > 1)
                return check
        except openai.APIConnectionError:
            urls = urls[1:] + urls[:1]
        except openai.InternalServerError as exc:  # e.g. 503 while Valkey fails over: again
            check.retries.append(f"{exc.status_code} {exc.code}")
        finally:
            await client.close()
        await asyncio.sleep(0.5)
    check.status = f"hung ({check.status})"
    check.lost = lines
    return check
