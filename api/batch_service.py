"""Async jobs, files and batches for the HTTP api: wiring and request logic, no transport.

`BatchService` opens the streams and buckets, runs this replica's share of the shared work
(results collector, batch runner, webhook sender, async-job sweeper) and answers the
routes of `api.routes.{jobs,files,batches}` with plain values or `ApiError`s. Every object
belongs to a tenant; another tenant asking for it gets a 404. The design is in docs/batch.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import msgspec
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from llmq.api.admission import Admission
from llmq.api.errors import ApiError
from llmq.api.preparation import RequestPreparer
from llmq.api.runtime import Runtime
from llmq.api.tenancy import Quota, QuotaBackendDown
from llmq.dispatcher import kv as kvs
from llmq.dispatcher import streams
from llmq.dispatcher.batch.async_jobs import AsyncJobs, list_page
from llmq.dispatcher.batch.collector import ResultCollector
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines, parse_input
from llmq.dispatcher.batch.ports import Accounting, NoAccounting, Prepared, Refused
from llmq.dispatcher.batch.records import (
    BATCH_ID_PREFIX,
    JOB_ID_PREFIX,
    KIND_OF_ENDPOINT,
    BatchRecord,
    FileRecord,
    batch_decoder,
    batch_view,
    encoder,
    file_view,
    job_view,
    strip_prefix,
    time_hex,
)
from llmq.dispatcher.batch.runner import BatchRunner, batch_key
from llmq.dispatcher.batch.webhooks import Webhooks
from llmq.dispatcher.dispatch import DispatchError
from llmq.dispatcher.tasks import stop_task
from llmq.schemas import names
from llmq.schemas.settings import Settings

log = logging.getLogger(__name__)

_WINDOW = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
FILE_PURPOSES = frozenset({"batch"})


# --- ports: request preparation and quota --------------------------------------------------


class ApiPreparer:
    """A body becomes a job the way the interactive path does it (`RequestPreparer`), except
    that a known model with no live worker is fine — the job waits in the durable queue — and
    async and batch jobs never stream."""

    def __init__(self, preparer: RequestPreparer) -> None:
        self.preparer = preparer

    def prepare(self, kind: str, body: bytes, tenant: str) -> Prepared:
        try:
            p = self.preparer.prepare(kind, body, durable=True)
        except ApiError as exc:
            raise Refused(
                exc.status, exc.code or "invalid_request", exc.message, exc.param
            ) from None
        return Prepared(p.model, p.body, p.kind, p.prompt_estimate, p.max_tokens)


class QuotaAccounting:
    """Batch lines and async jobs count against the tenant's quotas like any request: a line
    is reserved when it is queued and released with its real usage when its result is
    stored (usage per day and the ledger included). A line refused by a rate limit or budget
    waits and is asked again; one the tenant may never run gets an error."""

    def __init__(self, quota: Quota, fail_open: bool) -> None:
        self.quota = quota
        self.fail_open = fail_open

    async def reserve(self, tenant: str, prepared: Prepared, job_id: str) -> float | None:
        if not tenant:
            return None
        try:
            decision = await self.quota.reserve(
                tenant, prepared.model, prepared.prompt_tokens, prepared.max_tokens, job_id
            )
        except QuotaBackendDown:
            return None if self.fail_open else 1.0
        if decision.allowed:
            return None
        if decision.http_status == 429:
            return max(decision.retry_after, 0.2)
        raise Refused(
            403, decision.reason, f"the tenant may not run this request ({decision.reason})"
        )

    async def release(
        self,
        tenant: str,
        model: str,
        job_id: str,
        prompt_tokens: int,
        completion_tokens: int,
        failed: bool,
    ) -> None:
        if tenant:
            await self.quota.release(
                tenant, model, job_id, prompt_tokens, completion_tokens, failed=failed
            )


# --- the service ---------------------------------------------------------------------------


def _list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def parse_window(text: str, maximum: float) -> int:
    """`24h`, `90m`, `3600s`, `1d` → seconds; 400 if malformed or above `maximum`."""
    match = _WINDOW.match(text or "")
    if not match:
        raise ApiError(
            400,
            "completion_window must look like `24h` (a number and s, m, h or d)",
            "invalid_completion_window",
            param="completion_window",
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= maximum:
        raise ApiError(
            400,
            f"completion_window must be between 1s and {int(maximum)}s",
            "invalid_completion_window",
            param="completion_window",
        )
    return seconds


class _CreateBatch(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class BatchService:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        admission: Admission,
        preparer: RequestPreparer,
    ) -> None:
        self.settings = settings
        self.rt = runtime
        self.admission = admission
        self.preparer = ApiPreparer(preparer)
        self.accounting: Accounting = (
            NoAccounting()
            if settings.api.auth_mode == "none"
            else QuotaAccounting(admission.quota, settings.tenancy.quota_fail_open)
        )
        self.files: FileStore
        self.jobs: AsyncJobs
        self.runner: BatchRunner
        self.collector: ResultCollector
        self.webhooks: Webhooks
        self._batches_kv: Any = None
        self._starter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s, js, nc = self.settings, self.rt.js, self.rt.nc
        buckets, store = await self._provision()
        self.rt.provisioner.add("batch streams", self._provision)
        results = buckets[names.RESULTS_BUCKET]
        self._batches_kv = buckets[names.BATCHES_BUCKET]
        self.files = FileStore(store, buckets[names.FILE_META_BUCKET])
        self.jobs = AsyncJobs(
            nc,
            js,
            buckets[names.ASYNC_JOBS_BUCKET],
            results,
            self.accounting,
            stall=s.batch.batch_stall,
        )
        self.webhooks = Webhooks(
            js,
            self.jobs.render,
            self.jobs.record_webhook,
            secret=s.batch.webhook_secret,
            attempts=s.batch.webhook_attempts,
            timeout=s.batch.webhook_timeout,
        )
        self.jobs.webhooks = self.webhooks
        self.collector = ResultCollector(
            js, results, self.accounting, self.jobs.on_accepted, self.jobs.settle
        )
        self.runner = BatchRunner(
            nc,
            js,
            self._batches_kv,
            results,
            self.files,
            self.preparer,
            self.accounting,
            owner=f"{s.api.instance_id}-{time_hex()[12:20]}",
            lease=s.batch.batch_lease,
            stall=s.batch.batch_stall,
            max_inflight=s.batch.batch_max_inflight,
            max_lines=s.batch.batch_max_lines,
        )
        self.collector.start()
        self.webhooks.start()
        self._starter = asyncio.create_task(self._start_when_synced())

    async def _provision(self) -> tuple[dict[str, KeyValue], ObjectStore]:
        """LLMQ_OUTCOMES, LLMQ_WEBHOOKS, their consumers, the buckets and the file store."""
        js, retention = self.rt.js, self.settings.batch.job_retention
        await streams.ensure_batch_streams(js, retention)
        return await streams.batch_buckets(js, retention), await streams.files_store(js)

    async def _start_when_synced(self) -> None:
        """Validation needs the model catalog: wait for the registry's first sync."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.rt.registry.synced.wait()
        await asyncio.sleep(0.2)
        self.jobs.start()
        self.runner.start()

    async def stop(self) -> None:
        if self._starter is not None:
            await stop_task(self._starter)
        for part in (self.runner, self.jobs, self.webhooks, self.collector):
            with contextlib.suppress(Exception):
                await part.stop()

    def _accepting(self) -> None:
        if not self.rt.accepting:
            raise ApiError(503, "the api is shutting down", "shutting_down")

    def _prepare(self, kind: str, body: bytes, tenant: str) -> Prepared:
        try:
            return self.preparer.prepare(kind, body, tenant)
        except Refused as exc:
            raise ApiError(exc.status, exc.message, exc.code, param=exc.param) from None

    # --- jobs ----------------------------------------------------------------------------

    async def create_job(
        self, tenant: str, body: bytes, traceparent: str | None = None
    ) -> dict[str, Any]:
        self._accepting()
        try:
            fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
        except msgspec.DecodeError:
            raise ApiError(400, "the body must be a JSON object", "invalid_json") from None
        webhook_url = _optional(fields.pop("webhook_url", None), str, "webhook_url")
        metadata = _optional(fields.pop("metadata", None), dict[str, str], "metadata")
        endpoint = (
            _optional(fields.pop("endpoint", None), str, "endpoint") or "/v1/chat/completions"
        )
        if webhook_url and not re.match(r"^https?://[^\s/]+", webhook_url):
            raise ApiError(
                400,
                "webhook_url must be an http(s) URL",
                "invalid_webhook_url",
                param="webhook_url",
            )
        if metadata and (
            len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())
        ):
            raise ApiError(
                400,
                "metadata: at most 16 keys of 64 and values of 512 characters",
                "invalid_metadata",
                param="metadata",
            )
        kind = KIND_OF_ENDPOINT.get(endpoint)
        if kind is None:
            raise ApiError(
                400, f"unsupported endpoint `{endpoint}`", "invalid_endpoint", param="endpoint"
            )
        prepared = self._prepare(kind, msgspec.json.encode(fields), tenant)
        job_id = time_hex()
        ticket = await self.admission.admit(
            tenant, prepared.model, prepared.prompt_tokens, prepared.max_tokens, job_id
        )
        try:
            record = await self.jobs.submit(
                job_id,
                tenant,
                prepared,
                deadline=self.settings.batch.job_deadline,
                metadata=metadata,
                webhook_url=webhook_url,
                traceparent=traceparent,
            )
        except DispatchError as exc:
            ticket.finish(0, 0, failed=True)
            raise ApiError(exc.status, exc.message, exc.code) from None
        except Exception as exc:
            raise ApiError(
                503, f"the job store is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from None
        return job_view(record, None)

    async def get_job(self, tenant: str, public_id: str) -> dict[str, Any]:
        job_id = strip_prefix(public_id, JOB_ID_PREFIX)
        found = await self.jobs.get(tenant, job_id) if job_id else None
        if found is None:
            raise _not_found("job", public_id)
        return job_view(*found)

    async def list_jobs(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        ids = await self.jobs.list(tenant)
        after_hex = strip_prefix(after, JOB_ID_PREFIX) if after else None
        page, has_more = list_page(ids, _limit(limit), after_hex)
        found = await asyncio.gather(*(self.jobs.get(tenant, i) for i in page))
        return _list([job_view(*f) for f in found if f is not None], has_more)

    async def cancel_job(self, tenant: str, public_id: str) -> dict[str, Any]:
        job_id = strip_prefix(public_id, JOB_ID_PREFIX)
        record = await self.jobs.cancel(tenant, job_id) if job_id else None
        if record is None:
            raise _not_found("job", public_id)
        found = await self.jobs.get(tenant, record.id)
        return job_view(*found) if found else job_view(record, None)

    # --- files ---------------------------------------------------------------------------

    def check_file(self, purpose: str, data: bytes) -> None:
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"purpose must be one of {', '.join(sorted(FILE_PURPOSES))}",
                "invalid_purpose",
                param="purpose",
            )
        if len(data) > self.settings.batch.files_max_bytes:
            raise ApiError(
                413,
                f"the file is larger than {self.settings.batch.files_max_bytes} bytes",
                "file_too_large",
                param="file",
            )
        try:
            parse_input(data, "", self.settings.batch.batch_max_lines)
        except NotJsonl as exc:
            raise ApiError(
                400, f"the file is not JSONL: {exc}", "invalid_file", param="file"
            ) from None
        except TooManyLines:
            raise ApiError(
                400,
                f"a batch file may hold at most {self.settings.batch.batch_max_lines} requests",
                "too_many_requests_in_file",
                param="file",
            ) from None

    async def upload(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        self._accepting()
        self.check_file(purpose, data)
        record = await self.files.put(tenant, data, filename or "upload.jsonl", purpose)
        return file_view(record)

    async def _file(self, tenant: str, file_id: str) -> FileRecord:
        record = await self.files.get(tenant, file_id)
        if record is None:
            raise _not_found("file", file_id)
        return record

    async def get_file(self, tenant: str, file_id: str) -> dict[str, Any]:
        return file_view(await self._file(tenant, file_id))

    async def file_content(self, tenant: str, file_id: str) -> bytes:
        data = await self.files.content(tenant, file_id)
        if data is None:
            raise _not_found("file", file_id)
        return data

    async def list_files(
        self, tenant: str, purpose: str | None, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        records = await self.files.list(tenant)
        if purpose:
            records = [r for r in records if r.purpose == purpose]
        if order == "asc":
            records.reverse()
        ids = [r.id for r in records]
        page, has_more = list_page(ids, max(1, min(limit, 10_000)), after)
        by_id = {r.id: r for r in records}
        return _list([file_view(by_id[i]) for i in page], has_more)

    async def delete_file(self, tenant: str, file_id: str) -> dict[str, Any]:
        if not await self.files.delete(tenant, file_id):
            raise _not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # --- batches -------------------------------------------------------------------------

    async def create_batch(self, tenant: str, body: bytes) -> dict[str, Any]:
        self._accepting()
        try:
            params = msgspec.json.decode(body, type=_CreateBatch)
        except msgspec.ValidationError as exc:
            raise ApiError(400, str(exc), "invalid_request") from None
        except msgspec.DecodeError:
            raise ApiError(400, "the body must be a JSON object", "invalid_json") from None
        if params.endpoint not in KIND_OF_ENDPOINT:
            raise ApiError(
                400,
                f"endpoint must be one of {', '.join(sorted(KIND_OF_ENDPOINT))}",
                "invalid_endpoint",
                param="endpoint",
            )
        window = parse_window(params.completion_window, self.settings.batch.batch_max_window)
        file = await self.files.get(tenant, params.input_file_id)
        if file is None:
            raise _not_found("file", params.input_file_id, "input_file_id")
        if file.purpose != "batch":
            raise ApiError(
                400,
                "the input file's purpose must be `batch`",
                "invalid_file",
                param="input_file_id",
            )
        data = await self.files.content(tenant, file.id)
        if data is None:
            raise _not_found("file", params.input_file_id, "input_file_id")
        self.check_file("batch", data)
        now = int(time.time())
        record = BatchRecord(
            id=time_hex(),
            tenant=tenant,
            endpoint=params.endpoint,
            input_file_id=file.id,
            completion_window=params.completion_window,
            created_at=now,
            expires_at=now + window,
            metadata=params.metadata or None,
        )
        await kvs.create_once(
            self._batches_kv, batch_key(tenant, record.id), encoder.encode(record)
        )
        self.runner.kick()
        return batch_view(record)

    async def _batch(self, tenant: str, public_id: str) -> tuple[str, BatchRecord]:
        batch_hex = strip_prefix(public_id, BATCH_ID_PREFIX)
        if batch_hex is not None:
            key = batch_key(tenant, batch_hex)
            found = await kvs.read(self._batches_kv, key, batch_decoder)
            if found is not None:
                return key, found[0]
        raise _not_found("batch", public_id)

    async def get_batch(self, tenant: str, public_id: str) -> dict[str, Any]:
        return batch_view((await self._batch(tenant, public_id))[1])

    async def list_batches(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        keys = await kvs.scan(self._batches_kv, f"{names.tenant_token(tenant)}.*", meta_only=True)
        ids = sorted((k.split(".", 1)[1] for k in keys), reverse=True)
        after_hex = strip_prefix(after, BATCH_ID_PREFIX) if after else None
        page, has_more = list_page(ids, _limit(limit), after_hex)
        found = await asyncio.gather(
            *(kvs.read(self._batches_kv, batch_key(tenant, i), batch_decoder) for i in page)
        )
        return _list([batch_view(f[0]) for f in found if f is not None], has_more)

    async def cancel_batch(self, tenant: str, public_id: str) -> dict[str, Any]:
        key, _ = await self._batch(tenant, public_id)
        now = int(time.time())

        def cancel(record: BatchRecord) -> BatchRecord | None:
            if record.status not in ("validating", "in_progress"):
                return None
            record.status, record.cancelling_at = "cancelling", now
            return record

        out = await kvs.mutate(self._batches_kv, key, batch_decoder, cancel)
        if out is None:
            raise _not_found("batch", public_id)
        self.runner.kick()
        return batch_view(out[0])


def _optional(raw: msgspec.Raw | None, kind: Any, param: str) -> Any:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=kind | None)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise ApiError(400, f"invalid `{param}`", "invalid_request", param=param) from None


def _limit(limit: int) -> int:
    return max(1, min(limit, 100))


def _not_found(kind: str, public_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: '{public_id}'", f"{kind}_not_found", param=param)
