"""Serving `/v1/jobs`: submit, read, list and cancel async jobs, transport-free.

A job is prepared and its quota reserved the way an interactive request's is (the same
`RequestPreparer` and `Reservations`); once queued, whoever ends it — the results collector,
a cancel, the expiry sweeper — releases the reservation with its real usage. Every job
belongs to a tenant; another tenant asking for it gets a 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from llmq.api.batch.egress import EgressPolicy, EgressRefused
from llmq.api.batch.store_room import ASYNC_JOB_STORES, StoreRoom
from llmq.api.errors import ApiError
from llmq.api.listing import ensure_accepting, list_body, not_found, page_limit
from llmq.api.preparation import RequestPreparer
from llmq.api.reservations import Reservations
from llmq.api.runtime import Runtime
from llmq.api.tenant_scope import TenantScopes
from llmq.dispatcher.batch.async_jobs import AsyncJobs, list_page
from llmq.dispatcher.batch.records import (
    JOB_ID_PREFIX,
    KIND_OF_ENDPOINT,
    job_view,
    strip_prefix,
    time_hex,
)
from llmq.dispatcher.dispatch import DispatchError
from llmq.schemas.admission import FAILED, Refusal


class JobServing:
    def __init__(
        self,
        runtime: Runtime,
        jobs: AsyncJobs,
        preparer: RequestPreparer,
        reservations: Reservations,
        scopes: TenantScopes,
        *,
        room: StoreRoom,
    ) -> None:
        """`scopes`: jobs are stored under the tenant's scope, quotas held by its name;
        `room`: whether the stores a job writes have room for it."""
        self.rt = runtime
        self.scopes = scopes
        self.jobs = jobs
        self.preparer = preparer
        self.reservations = reservations
        self.egress = EgressPolicy(runtime.settings.batch.webhook_allow)
        self.room = room

    async def create(
        self, tenant: str, body: bytes, traceparent: str | None = None, *, key_id: str = ""
    ) -> dict[str, Any]:
        """Queue a job; raises `Refusal` (bad body, unknown model, quota) or `ApiError`.
        `key_id`: the API key it came with, whose own models and limits apply too."""
        ensure_accepting(self.rt)
        try:
            fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
        except msgspec.DecodeError:
            raise ApiError(400, "the body must be a JSON object", "invalid_json") from None
        webhook_url = _optional(fields.pop("webhook_url", None), str, "webhook_url")
        metadata = _optional(fields.pop("metadata", None), dict[str, str], "metadata")
        endpoint = (
            _optional(fields.pop("endpoint", None), str, "endpoint") or "/v1/chat/completions"
        )
        if webhook_url:
            await self._check_webhook(webhook_url)
        _check_metadata(metadata)
        kind = KIND_OF_ENDPOINT.get(endpoint)
        if kind is None:
            raise ApiError(
                400, f"unsupported endpoint `{endpoint}`", "invalid_endpoint", param="endpoint"
            )
        prepared = await self.preparer.prepare_durable(kind, msgspec.json.encode(fields))
        scope = await self.scopes.of(tenant)
        job_id = time_hex()
        reservation = await self.reservations.reserve(
            tenant,
            prepared.model,
            prepared.prompt_estimate,
            prepared.max_tokens,
            job_id,
            key_id=key_id,
        )
        if isinstance(reservation, Refusal):
            raise reservation
        try:
            await self.room.check(*ASYNC_JOB_STORES)  # 507 before it is queued
            record = await self.jobs.submit(
                job_id,
                scope,
                prepared,
                deadline=self.rt.settings.batch.job_deadline,
                metadata=metadata,
                webhook_url=webhook_url,
                traceparent=traceparent,
            )
        except DispatchError as exc:  # never queued: nobody else will release it
            self.reservations.release_later(reservation, FAILED)
            raise ApiError(exc.status, exc.message, exc.code) from None
        except Exception as exc:  # queued: the job's result releases it
            raise ApiError(
                503, f"the job store is unavailable: {type(exc).__name__}", "queue_unavailable"
            ) from None
        return job_view(record, None)

    async def _check_webhook(self, url: str) -> None:
        """400 unless the egress policy lets llmq call `url` (it checks again at delivery)."""
        try:
            await self.egress.check(url)
        except EgressRefused as exc:
            raise ApiError(400, str(exc), "invalid_webhook_url", param="webhook_url") from None

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]:
        job_id = strip_prefix(public_id, JOB_ID_PREFIX)
        found = await self.jobs.get(await self.scopes.of(tenant), job_id) if job_id else None
        if found is None:
            raise not_found("job", public_id)
        return job_view(*found)

    async def list(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        scope = await self.scopes.of(tenant)
        ids = await self.jobs.list(scope)
        after_hex = strip_prefix(after, JOB_ID_PREFIX) if after else None
        page, has_more = list_page(ids, page_limit(limit), after_hex)
        found = await asyncio.gather(*(self.jobs.get(scope, i) for i in page))
        return list_body([job_view(*f) for f in found if f is not None], has_more)

    async def cancel(self, tenant: str, public_id: str) -> dict[str, Any]:
        job_id = strip_prefix(public_id, JOB_ID_PREFIX)
        scope = await self.scopes.of(tenant)
        record = await self.jobs.cancel(scope, job_id) if job_id else None
        if record is None:
            raise not_found("job", public_id)
        found = await self.jobs.get(scope, record.id)
        return job_view(*found) if found else job_view(record, None)


def _optional(raw: msgspec.Raw | None, kind: Any, param: str) -> Any:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=kind | None)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise ApiError(400, f"invalid `{param}`", "invalid_request", param=param) from None


def _check_metadata(metadata: dict[str, str] | None) -> None:
    """400 unless `metadata` is OpenAI's shape: at most 16 keys of 64, values of 512."""
    if metadata and (
        len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())
    ):
        raise ApiError(
            400,
            "metadata: at most 16 keys of 64 and values of 512 characters",
            "invalid_metadata",
            param="metadata",
        )
