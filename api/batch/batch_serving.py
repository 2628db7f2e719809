"""Serving `/v1/batches` (the OpenAI Batch API): create, read, list and cancel batches,
transport-free.

A batch is a record in the batch store; the runners of the api replicas (`dispatcher.batch`)
take it from there. Every batch belongs to a tenant; another tenant asking for it gets a
404.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec

from llmq.api.auth import EVERYONE, Caller
from llmq.api.batch.file_serving import FileServing
from llmq.api.batch.store_room import BATCH_STORES, StoreRoom
from llmq.api.errors import ApiError
from llmq.api.listing import ensure_accepting, list_body, not_found, page_limit
from llmq.api.runtime import Runtime
from llmq.api.tenant_scope import TenantScopes
from llmq.dispatcher.batch.async_jobs import list_page
from llmq.dispatcher.batch.jsonl import parse_input
from llmq.dispatcher.batch.records import (
    BATCH_ENDPOINTS,
    BATCH_ID_PREFIX,
    BatchRecord,
    batch_view,
    strip_prefix,
    time_hex,
)
from llmq.dispatcher.batch.store import BatchStore
from llmq.dispatcher.dispatch import DispatchError

_MODEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_WINDOW = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


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


class CreateBatch(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class BatchServing:
    def __init__(
        self,
        runtime: Runtime,
        store: BatchStore,
        files: FileServing,
        kick: Callable[[], None],
        scopes: TenantScopes,
        *,
        room: StoreRoom,
        resolve: Callable[[str], str] = str,
    ) -> None:
        """`kick`: tell this replica's runner to look at the batches now; batches are
        stored under the tenant's scope (`api.tenant_scope`); `resolve`: a model name or
        alias to the model it names (the model table's)."""
        self.resolve = resolve
        self.rt = runtime
        self.scopes = scopes
        self.store = store
        self.files = files
        self.kick = kick
        self.room = room

    async def create(self, tenant: str, body: bytes, caller: Caller = EVERYONE) -> dict[str, Any]:
        """`caller`: the models the tenant and its key may use (every line's model is
        checked now) and the key whose limits apply to each line as it is dispatched."""
        ensure_accepting(self.rt)
        try:
            params = msgspec.json.decode(body, type=CreateBatch)
        except msgspec.ValidationError as exc:
            raise ApiError(400, str(exc), "invalid_request") from None
        except msgspec.DecodeError:
            raise ApiError(400, "the body must be a JSON object", "invalid_json") from None
        if params.endpoint not in BATCH_ENDPOINTS:
            raise ApiError(
                400,
                f"endpoint must be one of {', '.join(sorted(BATCH_ENDPOINTS))}",
                "invalid_endpoint",
                param="endpoint",
            )
        window = parse_window(params.completion_window, self.rt.settings.batch.batch_max_window)
        tenant = await self.scopes.of(tenant)
        file = await self.files.files.get(tenant, params.input_file_id)
        if file is None:
            raise not_found("file", params.input_file_id, "input_file_id")
        if file.purpose != "batch":
            raise ApiError(
                400,
                "the input file's purpose must be `batch`",
                "invalid_file",
                param="input_file_id",
            )
        data = await self.files.files.content(tenant, file.id)
        if data is None:
            raise not_found("file", params.input_file_id, "input_file_id")
        self.files.check("batch", data)
        self._check_models(caller, params.endpoint, data)
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
            key_id=caller.key_id,
        )
        try:
            await self.room.check(*BATCH_STORES)
        except DispatchError as exc:
            raise ApiError(exc.status, exc.message, exc.code) from None
        await self.store.create(record)
        self.kick()
        return batch_view(record)

    def _check_models(self, caller: Caller, endpoint: str, data: bytes) -> None:
        """403 when a line asks for a model the tenant or its key may not use: refused at
        submission, not line by line hours later."""
        if not caller.models:
            return
        max_lines = self.rt.settings.batch.batch_max_lines
        for line in parse_input(data, endpoint, max_lines):
            if line.body is None:
                continue  # the line's own error is reported when the batch runs
            try:
                model = msgspec.json.decode(_MODEL.decode(line.body).get("model", b'""'))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(model, str) and not caller.may_use(self.resolve(model)):
                raise ApiError(
                    403,
                    f"line {line.number}: this API key or tenant may not use model `{model}`",
                    "model_not_allowed",
                    param="input_file_id",
                    type="permission_error",
                )

    @staticmethod
    def _batch_hex(public_id: str) -> str:
        batch_hex = strip_prefix(public_id, BATCH_ID_PREFIX)
        if batch_hex is None:
            raise not_found("batch", public_id)
        return batch_hex

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]:
        scope = await self.scopes.of(tenant)
        record = await self.store.get(scope, self._batch_hex(public_id))
        if record is None:
            raise not_found("batch", public_id)
        return batch_view(record)

    async def list(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        scope = await self.scopes.of(tenant)
        ids = await self.store.ids(scope)
        after_hex = strip_prefix(after, BATCH_ID_PREFIX) if after else None
        page, has_more = list_page(ids, page_limit(limit), after_hex)
        found = await asyncio.gather(*(self.store.get(scope, i) for i in page))
        return list_body([batch_view(f) for f in found if f is not None], has_more)

    async def cancel(self, tenant: str, public_id: str) -> dict[str, Any]:
        scope = await self.scopes.of(tenant)
        record = await self.store.cancel(scope, self._batch_hex(public_id))
        if record is None:
            raise not_found("batch", public_id)
        self.kick()
        return batch_view(record)
