"""The batch runner: every api replica runs one; each batch is run by exactly one of them.

A batch record (LLMQ_BATCHES, key `<tenant token>.<batch id>`) carries a lease: `owner` and
`lease_until`. A replica takes a batch whose lease ran out with a compare-and-set, renews it
with every write (at least every lease/3) and loses it the moment a write finds another
owner. So a killed replica's batches move to another one after one lease, and two replicas
never both think they own a batch for longer than it takes one write to fail.

What the owner does, by status (each step is safe to repeat after a crash):

- `validating`: read the input file, check every line, store an `Unrun` result for each
  invalid one (create-only), count the lines → `in_progress` (or `failed` if none is valid);
- `in_progress`: queue the valid lines in file order on LLMQ_BATCH (`Nats-Msg-Id` = the
  line's job id, so a line queued again after a crash is dropped as a duplicate), at most
  `max_inflight` without a result; reserve each line's quota first and wait while the tenant
  is rate limited (a line is never dropped); follow the results (`collector` stores them) and
  write progress (`dispatched`, `request_counts`); at `expires_at` → expired; once every line
  has a result → `finalizing`;
- `cancelling` / expired: stop the lines still queued or running, give each line without a
  result an `Unrun` one (`batch_cancelled` / `batch_expired`; first result wins);
- `finalizing` and the ends: write the output and error files (deterministic ids, so writing
  them again replaces them) and the final status with one last compare-and-set.

Every line has exactly one result (create-only keys) and the files are built from those
results, one line each, so every request appears exactly once in the output or error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from llmq.dispatcher import kv as kvs
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.jsonl import (
    InputLine,
    NotJsonl,
    TooManyLines,
    output_line,
    parse_input,
    tally,
)
from llmq.dispatcher.batch.ports import Accounting, Prepared, Preparer, Refused
from llmq.dispatcher.batch.reconcile import quiet
from llmq.dispatcher.batch.records import (
    FILE_ID_PREFIX,
    FINAL_BATCH,
    KIND_OF_ENDPOINT,
    BatchError,
    BatchRecord,
    BatchStatus,
    Result,
    Unrun,
    batch_decoder,
    encoder,
    line_job_id,
    result_decoder,
    unrun,
)
from llmq.dispatcher.jobs import JobSpec
from llmq.dispatcher.tasks import retry, run_to_end, stop_task
from llmq.schemas import names
from llmq.schemas.frames import Done

log = logging.getLogger(__name__)

CHUNK = 32
"""Lines reserved and published together."""
MAX_REQUEUES = 3
"""Times a lost line is queued again before it fails with `job_lost`."""


class LeaseLost(Exception):
    pass


class InputGone(Exception):
    """The batch's input file cannot be read any more."""


def output_file_id(batch_hex: str) -> str:
    return f"{FILE_ID_PREFIX}{batch_hex}-output"


def error_file_id(batch_hex: str) -> str:
    return f"{FILE_ID_PREFIX}{batch_hex}-errors"


def batch_key(tenant: str, batch_hex: str) -> str:
    return f"{names.tenant_token(tenant)}.{batch_hex}"


class BatchRunner:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        batches: KeyValue,
        results: KeyValue,
        files: FileStore,
        preparer: Preparer,
        accounting: Accounting,
        *,
        owner: str,
        lease: float,
        stall: float,
        max_inflight: int,
        max_lines: int,
        max_active: int = 64,
        publish_timeout: float = 2.0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.batches = batches
        self.results = results
        self.files = files
        self.preparer = preparer
        self.accounting = accounting
        self.owner = owner
        self.lease = lease
        self.stall = stall
        self.max_inflight = max_inflight
        self.max_lines = max_lines
        self.max_active = max_active
        self.publish_timeout = publish_timeout
        self.view: dict[str, BatchRecord] = {}
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.finalized = 0
        """Batches this replica brought to a final status (for tests)."""
        self._kick = asyncio.Event()
        self._follower = kvs.Follower(batches, "*.*", self._on_record, resync=30.0, name="batches")
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._follower.start()
        self._task = asyncio.create_task(self._supervise(), name="batch-supervisor")

    async def stop(self) -> None:
        """Stop running batches and hand their leases back, so another replica resumes them
        at once instead of after a lease."""
        await self._follower.stop()
        if self._task is not None:
            await stop_task(self._task)
        keys = list(self.runs)
        for task in list(self.runs.values()):
            task.cancel()
        for task in list(self.runs.values()):
            await stop_task(task)
        for key in keys:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await kvs.mutate(self.batches, key, batch_decoder, self._hand_back)
        self.runs.clear()

    def _hand_back(self, record: BatchRecord) -> BatchRecord | None:
        if record.owner != self.owner:
            return None
        record.owner, record.lease_until = "", 0.0
        return record

    def kick(self) -> None:
        self._kick.set()

    def _on_record(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.view.pop(key, None)
            return
        try:
            record = batch_decoder.decode(value)
        except msgspec.DecodeError:
            return
        if record.status in FINAL_BATCH:
            self.view.pop(key, None)
        else:
            self.view[key] = record
            self._kick.set()

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._kick.wait()
            self._kick.clear()
            now = time.time()
            for key, record in list(self.view.items()):
                if key in self.runs or len(self.runs) >= self.max_active:
                    continue
                if record.owner and record.owner != self.owner and record.lease_until > now:
                    continue
                try:
                    await self._take(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not take batch %s: %s", key, exc)

    async def _take(self, key: str) -> None:
        now = time.time()

        def take(record: BatchRecord) -> BatchRecord | None:
            if record.status in FINAL_BATCH:
                return None
            if record.owner and record.owner != self.owner and record.lease_until > now:
                return None
            record.owner, record.lease_until = self.owner, now + self.lease
            return record

        out = await kvs.mutate(self.batches, key, batch_decoder, take)
        if out is None or not out[2]:
            return
        record, revision, _ = out
        log.info("running batch %s (%s)", key, record.status)
        run = _BatchRun(self, key, record, revision)
        task = asyncio.create_task(run.run(), name=f"batch-{record.id}")
        run.task = task
        self.runs[key] = task

        def done(_task: asyncio.Task[None]) -> None:
            if self.runs.get(key) is task:
                del self.runs[key]
            self._kick.set()

        task.add_done_callback(done)


class _BatchRun:
    """One batch, while this replica holds its lease."""

    def __init__(self, runner: BatchRunner, key: str, record: BatchRecord, revision: int) -> None:
        self.r = runner
        self.key = key
        self.rec = record
        self.rev = revision
        self.hex = record.id
        self.tenant = record.tenant
        self.task: asyncio.Task[None] | None = None
        self.lines: list[InputLine] | None = None
        self.prepared: dict[int, Prepared] = {}
        self.valid: list[int] = []
        self.done: dict[int, bool] = {}
        self.changed = asyncio.Event()
        self.last_result = time.monotonic()
        self.last_stall_check = time.monotonic()
        self.requeued: dict[int, int] = {}
        self.seqs: dict[int, int] = {}
        """Line -> its message's sequence in LLMQ_BATCH, for lines this run queued."""
        self.retry_at = 0.0
        self._lock = asyncio.Lock()
        self._follower: kvs.Follower | None = None

    # --- the record ----------------------------------------------------------------------

    async def write(
        self, change: Callable[[BatchRecord], BatchRecord], *, final: bool = False
    ) -> BatchRecord:
        """Compare-and-set the record as its owner (renewing the lease). On a conflict the
        fresh record is taken (a cancel may have landed) and `change` applied to it again;
        LeaseLost when another replica owns it or it is final."""
        async with self._lock:
            for _ in range(50):
                new = change(msgspec.json.decode(encoder.encode(self.rec), type=BatchRecord))
                if final:
                    new.owner, new.lease_until = "", 0.0
                else:
                    new.owner, new.lease_until = self.r.owner, time.time() + self.r.lease
                try:
                    self.rev = await self.r.batches.update(
                        self.key, encoder.encode(new), last=self.rev
                    )
                    self.rec = new
                    return new
                except KeyWrongLastSequenceError:
                    found = await kvs.read(self.r.batches, self.key, batch_decoder)
                    if found is None:
                        raise LeaseLost(self.key) from None
                    self.rec, self.rev = found
                    if self.rec.owner != self.r.owner or self.rec.status in FINAL_BATCH:
                        raise LeaseLost(self.key) from None
            raise kvs.Conflict(self.key)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.r.lease / 3)
            try:
                await self.write(lambda r: r)
            except LeaseLost:
                log.warning("lost the lease of batch %s", self.key)
                if self.task is not None:
                    self.task.cancel()
                return
            except Exception as exc:
                log.info("renewing the lease of batch %s failed: %s", self.key, exc)

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> None:
        renew = asyncio.create_task(self._renew())
        try:
            while self.rec.status not in FINAL_BATCH:
                try:
                    await self._step()
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    log.warning("batch %s: %s: %s; retrying", self.key, type(exc).__name__, exc)
                    await asyncio.sleep(1.0)
        except LeaseLost:
            log.info("batch %s is no longer ours", self.key)
        finally:
            await run_to_end(self._close(renew))

    async def _close(self, renew: asyncio.Task[None]) -> None:
        await stop_task(renew)
        if self._follower is not None:
            await self._follower.stop()

    async def _step(self) -> None:
        status = self.rec.status
        if status == "validating":
            await self._validate()
        elif status == "in_progress":
            await self._progress()
        elif status == "cancelling":
            await self._wind_down("cancelled", "batch_cancelled", "the batch was cancelled")
        elif status == "finalizing":
            await self._finalize("completed")

    async def _load(self) -> list[InputLine]:
        if self.lines is not None:
            return self.lines
        data = await self.r.files.content(self.tenant, self.rec.input_file_id)
        if data is None:
            raise InputGone(f"the input file {self.rec.input_file_id} was deleted")
        try:
            lines = parse_input(data, self.rec.endpoint, self.r.max_lines)
        except (NotJsonl, TooManyLines) as exc:
            raise InputGone(str(exc)) from None
        kind = KIND_OF_ENDPOINT[self.rec.endpoint]
        max_body = int(self.r.nc.max_payload) - 1024
        for line in lines:
            if line.error is not None or line.body is None:
                continue
            try:
                prepared = self.r.preparer.prepare(kind, line.body, self.tenant)
            except Refused as exc:
                line.error = Unrun(
                    code=exc.code,
                    message=f"line {line.number}: {exc.message}",
                    line=line.number,
                    param=exc.param,
                )
                continue
            if len(prepared.body) > max_body:
                line.error = Unrun(
                    code="request_too_large",
                    message=f"line {line.number}: the request is larger than {max_body} bytes",
                    line=line.number,
                )
                continue
            self.prepared[line.number] = prepared
            self.valid.append(line.number)
        self.lines = lines
        return lines

    def _result_key(self, line: int) -> str:
        return names.line_results_key(self.hex, line)

    async def _store_unrun(self, lines: dict[int, bytes], release: bool = False) -> None:
        """Give lines a result of llmq's own, unless they have one (create-only)."""

        async def one(number: int, value: bytes) -> None:
            created = await kvs.create_once(self.r.results, self._result_key(number), value)
            if created and release and number in self.prepared:
                await self._release(number)

        items = list(lines.items())
        for start in range(0, len(items), 64):
            await asyncio.gather(*(one(n, v) for n, v in items[start : start + 64]))

    async def _release(self, number: int) -> None:
        """Give back the reservation of a line that ends without running (only once its
        `Unrun` result is stored: a line that has a real result was released with it)."""
        model, job_id = self.prepared[number].model, line_job_id(self.hex, number)
        deadline = time.monotonic() + 5.0
        try:
            await retry(
                lambda: self.r.accounting.release(self.tenant, model, job_id, 0, 0, failed=True),
                f"release {job_id}",
                until=lambda: time.monotonic() > deadline,
            )
        except TimeoutError:
            log.warning("could not release %s; its lease will reclaim the slot", job_id)

    # --- validating ----------------------------------------------------------------------

    async def _validate(self) -> None:
        if time.time() >= self.rec.expires_at:
            await self._wind_down("expired", "batch_expired", "the batch's completion window ended")
            return
        try:
            lines = await self._load()
        except InputGone as exc:
            await self._fail([BatchError(code="invalid_file", message=str(exc))])
            return
        invalid = {line.number: encoder.encode(line.error) for line in lines if line.error}
        await self._store_unrun(invalid)
        if not self.valid:
            errors = [
                BatchError(code=e.code, message=e.message, line=e.line, param=e.param)
                for line in lines[:100]
                if (e := line.error) is not None
            ]
            await self._finalize("failed", errors)
            return
        model = self.prepared[self.valid[0]].model
        now = int(time.time())

        def start(record: BatchRecord) -> BatchRecord:
            if record.status == "validating":
                record.status, record.in_progress_at = "in_progress", now
                record.request_counts.total = len(lines)
                record.model = model
            return record

        await self.write(start)

    async def _fail(self, errors: list[BatchError]) -> None:
        now = int(time.time())

        def fail(record: BatchRecord) -> BatchRecord:
            record.status, record.failed_at, record.errors = "failed", now, errors
            return record

        await self.write(fail, final=True)
        self.r.finalized += 1

    # --- in progress ---------------------------------------------------------------------

    def _on_result(self, key: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            number = int(key.rsplit(".", 1)[1])
            result = result_decoder.decode(value)
        except (ValueError, msgspec.DecodeError):
            return
        if number not in self.done:
            self.done[number] = isinstance(result, Done)
            self.last_result = time.monotonic()
            self.changed.set()

    async def _follow_results(self) -> None:
        if self._follower is None:
            self._follower = kvs.Follower(
                self.r.results,
                f"line.{self.hex}.*",
                self._on_result,
                resync=max(5.0, min(self.r.stall, 30.0)),
                name=f"batch-results-{self.hex}",
            )
            self._follower.start()
        async with asyncio.timeout(30):
            await self._follower.synced.wait()

    async def _progress(self) -> None:
        try:
            lines = await self._load()
        except InputGone as exc:
            await self._fail([BatchError(code="invalid_file", message=str(exc))])
            return
        await self._follow_results()
        # Lines that became invalid since validation (a model went away) and have no result.
        await self._store_unrun(
            {
                n.number: encoder.encode(n.error)
                for n in lines
                if n.error and n.number not in self.done
            }
        )
        position = self.rec.dispatched
        last_flush = 0.0
        while self.rec.status == "in_progress":
            if time.time() >= self.rec.expires_at:
                await self._wind_down(
                    "expired", "batch_expired", "the batch's completion window ended"
                )
                return
            if time.time() >= self.retry_at:
                position = await self._dispatch(position)
            if len(self.done) >= len(lines):
                now = int(time.time())

                def finalizing(record: BatchRecord, now: int = now) -> BatchRecord:
                    if record.status == "in_progress":
                        record.status, record.finalizing_at = "finalizing", now
                        record.dispatched = len(self.valid)
                        self._count(record)
                    return record

                await self.write(finalizing)
                return
            await self._stall_check(position)
            if time.monotonic() - last_flush >= 0.5:
                last_flush = time.monotonic()
                await self.write(functools.partial(self._count, position=position))
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.changed.wait()

    def _count(self, record: BatchRecord, position: int | None = None) -> BatchRecord:
        if position is not None:
            record.dispatched = max(record.dispatched, position)
        completed = sum(1 for ok in self.done.values() if ok)
        record.request_counts.completed = completed
        record.request_counts.failed = len(self.done) - completed
        return record

    def _inflight(self, position: int) -> int:
        return sum(1 for n in self.valid[:position] if n not in self.done)

    async def _dispatch(self, position: int) -> int:
        """Queue lines from `position` on while fewer than max_inflight are unanswered;
        returns the new position (every valid line before it is queued or answered)."""
        inflight = self._inflight(position)
        while position < len(self.valid) and inflight < self.r.max_inflight:
            room = min(CHUNK, self.r.max_inflight - inflight, len(self.valid) - position)
            chunk = self.valid[position : position + room]
            queued = await self._dispatch_chunk(chunk)
            position += queued
            inflight += queued
            if queued < len(chunk):
                break
        return position

    async def _dispatch_chunk(self, chunk: list[int]) -> int:
        """Reserve and publish a run of lines; returns how many from its start are queued."""
        ready: list[int] = []
        stop = len(chunk)
        for i, number in enumerate(chunk):
            if number in self.done:
                ready.append(-1)
                continue
            prepared = self.prepared[number]
            job_id = line_job_id(self.hex, number)
            try:
                wait = await self.r.accounting.reserve(self.tenant, prepared, job_id)
            except Refused as exc:
                await self._store_unrun(
                    {number: unrun(exc.code, f"line {number}: {exc.message}", number, exc.param)}
                )
                ready.append(-1)
                continue
            if wait is not None:
                self.retry_at = time.time() + max(0.2, min(wait, 5.0))
                stop = i
                break
            ready.append(number)
        published = await asyncio.gather(
            *(self._publish(n) for n in ready[:stop] if n >= 0), return_exceptions=True
        )
        failures = iter(published)
        for i, number in enumerate(ready[:stop]):
            if number < 0:
                continue
            outcome = next(failures)
            if isinstance(outcome, BaseException):
                log.warning("batch %s: queueing line %d failed: %s", self.key, number, outcome)
                # Release what this and the later lines of the chunk reserved; they are queued
                # again from here (a duplicate publish is dropped by Nats-Msg-Id).
                for later in ready[i:stop]:
                    if later >= 0:
                        with contextlib.suppress(Exception):
                            await self.r.accounting.release(
                                self.tenant,
                                self.prepared[later].model,
                                line_job_id(self.hex, later),
                                0,
                                0,
                                failed=True,
                            )
                self.retry_at = time.time() + 1.0
                return i
        return stop

    async def _publish(self, number: int, msg_id: str | None = None) -> None:
        prepared = self.prepared[number]
        job_id = line_job_id(self.hex, number)
        spec = JobSpec(
            job_id=job_id,
            model=prepared.model,
            body=prepared.body,
            tenant=self.tenant,
            deadline_ms=self.rec.expires_at * 1000,
            kind=prepared.kind,
            batch=True,
        )
        headers = spec.headers(names.outcome_subject(self.tenant, prepared.model, job_id))
        if msg_id is not None:
            headers[names.H_MSG_ID] = msg_id
        ack = await self.r.js.publish(
            spec.subject, spec.body, timeout=self.r.publish_timeout, headers=headers
        )
        self.seqs[number] = ack.seq

    async def _stall_check(self, position: int) -> None:
        """Queue again the lines whose result JetStream has lost (see `reconcile`)."""
        now = time.monotonic()
        if now - self.last_result < self.r.stall or now - self.last_stall_check < self.r.stall:
            return
        self.last_stall_check = now
        missing = [n for n in self.valid[:position] if n not in self.done]
        if not missing:
            return
        if not await quiet(self.r.js, {self.prepared[n].model for n in missing}):
            return
        for number in missing:
            if await kvs.read_raw(self.r.results, self._result_key(number)) is not None:
                continue
            attempts = self.requeued.get(number, 0) + 1
            self.requeued[number] = attempts
            if attempts > MAX_REQUEUES:
                await self._store_unrun(
                    {number: unrun("job_lost", f"line {number}: the request was lost", number)},
                    release=True,
                )
                continue
            log.warning(
                "batch %s: line %d has no result anywhere; queueing it again", self.key, number
            )
            job_id = line_job_id(self.hex, number)
            await self._publish(number, msg_id=f"{job_id}.{int(time.time() * 1000)}")
        self.last_result = time.monotonic()

    # --- the end -------------------------------------------------------------------------

    async def _wind_down(self, final: BatchStatus, code: str, message: str) -> None:
        """Cancel or expire: every line without a result gets an `Unrun` one."""
        try:
            lines = await self._load()
        except InputGone as exc:
            await self._fail([BatchError(code="invalid_file", message=str(exc))])
            return
        if self._follower is not None:
            await self._follow_results()
        missing = [line.number for line in lines if line.number not in self.done]
        # Running lines stop at once; queued ones leave the queue (those this replica queued,
        # by sequence; the others are dropped unseen by the workers that got the cancel).
        for number in missing:
            if number in self.prepared:
                with contextlib.suppress(Exception):
                    await self.r.nc.publish(names.cancel_subject(line_job_id(self.hex, number)))
        queued = [self.seqs[n] for n in missing if n in self.seqs]
        for start in range(0, len(queued), 64):
            await asyncio.gather(
                *(self._unqueue(seq) for seq in queued[start : start + 64]),
                return_exceptions=True,
            )
        await self._store_unrun(
            {n: unrun(code, f"line {n}: {message}", n) for n in missing}, release=True
        )
        await self._finalize(final)

    async def _unqueue(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):
            await self.r.js.delete_msg(names.BATCH_STREAM, seq)

    async def _finalize(self, final: BatchStatus, errors: list[BatchError] | None = None) -> None:
        lines = await self._load()
        values = await kvs.scan(self.r.results, f"line.{self.hex}.*")
        results: dict[int, Result] = {}
        for key, value in values.items():
            results[int(key.rsplit(".", 1)[1])] = result_decoder.decode(value)
        missing = {
            line.number: unrun("job_lost", f"line {line.number}: the request was lost", line.number)
            for line in lines
            if line.number not in results
        }
        if missing:  # cannot happen for `completed`; belt and braces for the others
            await self._store_unrun(missing, release=True)
            return  # read them back on the next step
        output: list[bytes] = []
        failed: list[bytes] = []
        for line in lines:
            data, ok = output_line(
                line_job_id(self.hex, line.number), line.custom_id, results[line.number]
            )
            (output if ok else failed).append(data)
        totals = tally(results, len(lines))
        out_id = output_file_id(self.hex) if output else None
        err_id = error_file_id(self.hex) if failed else None
        if output:
            await self.r.files.put(
                self.tenant,
                b"".join(output),
                f"batch_{self.hex}_output.jsonl",
                "batch_output",
                out_id,
            )
        if failed:
            await self.r.files.put(
                self.tenant,
                b"".join(failed),
                f"batch_{self.hex}_error.jsonl",
                "batch_output",
                err_id,
            )
        now = int(time.time())

        def end(record: BatchRecord) -> BatchRecord:
            record.status = final
            setattr(record, f"{final}_at", now)
            record.output_file_id, record.error_file_id = out_id, err_id
            record.request_counts, record.usage = totals.counts, totals.usage
            record.dispatched = len(self.valid)
            if errors:
                record.errors = errors
            return record

        await self.write(end, final=True)
        self.r.finalized += 1
        log.info(
            "batch %s %s: %d ok, %d failed",
            self.key, final, totals.counts.completed, totals.counts.failed,
        )  # fmt: skip
