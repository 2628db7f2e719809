"""Serving `/v1/files`: upload, read, list and delete files, transport-free.

An upload is read part by part as it arrives (`api.multipart`): the file goes to a
temporary file (memory up to `SPOOL_BYTES`, then disk) while each line is checked as a
batch input (`JsonlCheck`), then to the object store in chunks; nothing holds the whole
file. A tenant's files count against its `storage_bytes` limit, and a file may expire
(`expires_after`, as OpenAI's Files API has it). Files are stored under the tenant's scope
(`api.tenant_scope`); another tenant asking for one gets a 404.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from llmq.api.batch.file_bytes import FileBytes
from llmq.api.batch.jsonl_check import JsonlCheck
from llmq.api.batch.multipart import read_multipart
from llmq.api.batch.store_room import FILE_STORES, StoreRoom
from llmq.api.errors import ApiError
from llmq.api.listing import ensure_accepting, list_body, not_found
from llmq.api.runtime import Runtime
from llmq.api.tenancy import QuotaBackendDown
from llmq.api.tenancy.stored_bytes import StoredBytes
from llmq.api.tenant_scope import TenantScopes
from llmq.dispatcher.batch.async_jobs import list_page
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines
from llmq.dispatcher.batch.records import FileRecord, file_view
from llmq.dispatcher.dispatch import DispatchError
from llmq.schemas import names

FILE_PURPOSES = frozenset({"batch", "user_data", "assistants", "vision", "evals"})
"""Purposes a file may be stored for; only `batch` files are checked as JSONL (the others are
stored as they came: documents for `input_file`, images …)."""
SPOOL_BYTES = 1 << 20
"""Bytes of an upload kept in memory before it spills to a temporary file."""
MAX_FIELD_BYTES = 65_536
"""Largest form field other than the file."""
MAX_EXPIRY = 2_592_000
"""30 days: the longest `expires_after.seconds` OpenAI accepts."""


def _refusal(exc: NotJsonl | TooManyLines, max_lines: int) -> ApiError:
    if isinstance(exc, TooManyLines):
        return ApiError(
            400,
            f"a batch file may hold at most {max_lines} requests",
            "too_many_requests_in_file",
            param="file",
        )
    return ApiError(400, f"the file is not JSONL: {exc}", "invalid_file", param="file")


class _Field:
    def __init__(self, name: str) -> None:
        self.name, self.data = name, bytearray()

    def write(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_FIELD_BYTES:
            raise ApiError(400, f"the `{self.name}` field is too long", "invalid_request")

    def close(self) -> None:
        pass

    def text(self) -> str:
        return self.data.decode("utf-8", "replace").strip()


class _Upload:
    """The file part: spooled, counted against the size limits, checked line by line."""

    def __init__(self, filename: str, max_bytes: int, quota_room: int | None, lines: int):
        self.filename = filename
        self.max_bytes, self.quota_room, self.max_lines = max_bytes, quota_room, lines
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.size = 0
        self.check = JsonlCheck(lines)
        self.problem: NotJsonl | TooManyLines | None = None
        """Why the file is not a batch input (known once the purpose is read)."""

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise ApiError(
                413,
                f"the file is larger than {self.max_bytes} bytes",
                "file_too_large",
                param="file",
            )
        if self.quota_room is not None and self.size > self.quota_room:
            raise ApiError(
                413,
                "the file does not fit in the tenant's storage quota "
                f"({max(0, self.quota_room)} bytes left); delete files or ask for more",
                "storage_quota_exceeded",
                param="file",
            )
        if self.problem is None:
            try:
                self.check.feed(data)
            except (NotJsonl, TooManyLines) as exc:
                self.problem = exc
        self.file.write(data)

    def close(self) -> None:
        if self.problem is None:
            try:
                self.check.finish()
            except (NotJsonl, TooManyLines) as exc:
                self.problem = exc

    def ensure_jsonl(self) -> None:
        """400 unless the file is a JSONL file llmq can run (purpose `batch`)."""
        if self.problem is not None:
            raise _refusal(self.problem, self.max_lines)


class _Form:
    def __init__(self, max_bytes: int, quota_room: int | None, max_lines: int) -> None:
        self.limits = (max_bytes, quota_room, max_lines)
        self.fields: dict[str, _Field] = {}
        self.upload: _Upload | None = None

    def open(self, name: str, filename: str | None) -> _Field | _Upload:
        if name == "file":
            if self.upload is not None:
                raise ApiError(400, "only one `file` per upload", "invalid_request", param="file")
            self.upload = _Upload(filename or "upload.jsonl", *self.limits)
            return self.upload
        if len(self.fields) >= 16:
            raise ApiError(400, "too many form fields", "invalid_request")
        self.fields[name] = _Field(name)
        return self.fields[name]

    def text(self, name: str) -> str | None:
        found = self.fields.get(name)
        return found.text() if found else None


def _expires_after(form: _Form, min_seconds: float) -> int | None:
    """N of `expires_after[anchor]=created_at` and `expires_after[seconds]=N`, or None."""
    anchor, seconds = form.text("expires_after[anchor]"), form.text("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise ApiError(
            400,
            "expires_after.anchor must be `created_at`",
            "invalid_request",
            param="expires_after.anchor",
        )
    if not (seconds or "").isdigit() or not min_seconds <= int(seconds or 0) <= MAX_EXPIRY:
        raise ApiError(
            400,
            f"expires_after.seconds must be an integer between {int(min_seconds)} and {MAX_EXPIRY}",
            "invalid_request",
            param="expires_after.seconds",
        )
    return int(seconds or 0)


async def limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's chunks; 413 once more than `limit` bytes came."""
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes", "too_large")
        yield chunk


class FileServing:
    def __init__(
        self,
        runtime: Runtime,
        files: FileStore,
        scopes: TenantScopes,
        *,
        room: StoreRoom,
        sizes: FileBytes,
    ) -> None:
        """`sizes`: the bytes each tenant scope's files take (its storage quota)."""
        self.rt = runtime
        self.files = files
        self.sizes = sizes
        self.scopes = scopes
        self.room = room
        self.stored: StoredBytes | None = None
        """Stored responses and conversations, which share the storage quota (set by the
        Responses API when it opens)."""

    async def room_left(self, scope: str) -> int | None:
        """Bytes the tenant scope's `storage_bytes` leaves after its files; None: no limit."""
        quota = await self.scopes.storage_quota(names.tenant_of_scope(scope))
        if not quota:
            return None
        try:
            return quota - await self.sizes.total(scope)
        except QuotaBackendDown:
            raise ApiError(503, "the quota store is unavailable", "quota_store_down") from None

    async def _stored_total(self, scope: str) -> int:
        assert self.stored is not None
        try:
            return await self.stored.total(scope)
        except QuotaBackendDown:
            raise ApiError(503, "the quota store is unavailable", "quota_store_down") from None

    @property
    def max_bytes(self) -> int:
        return self.rt.settings.batch.files_max_bytes

    def check(self, purpose: str, data: bytes) -> None:
        """400/413 unless `data` is a batch input file llmq can run."""
        self._check_purpose(purpose)
        max_lines = self.rt.settings.batch.batch_max_lines
        if len(data) > self.max_bytes:
            raise ApiError(
                413,
                f"the file is larger than {self.max_bytes} bytes",
                "file_too_large",
                param="file",
            )
        check = JsonlCheck(max_lines)
        try:
            check.feed(data)
            check.finish()
        except (NotJsonl, TooManyLines) as exc:
            raise _refusal(exc, max_lines) from None

    @staticmethod
    def _check_purpose(purpose: str) -> None:
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"purpose must be one of {', '.join(sorted(FILE_PURPOSES))}",
                "invalid_purpose",
                param="purpose",
            )

    async def upload(
        self,
        tenant: str,
        content_type: str,
        chunks: AsyncIterator[bytes],
        accepted: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Read a multipart upload from `chunks` and store its file; `accepted` is awaited
        once every check passed, before the file is stored (it may still refuse it)."""
        ensure_accepting(self.rt)
        try:
            await self.room.check(*FILE_STORES)
        except DispatchError as exc:
            raise ApiError(exc.status, exc.message, exc.code) from None
        batch = self.rt.settings.batch
        scope = await self.scopes.of(tenant)
        room = await self.room_left(scope)
        if room is not None and self.stored is not None:
            room -= await self._stored_total(scope)
        form = _Form(self.max_bytes, room, batch.batch_max_lines)
        try:
            await read_multipart(limited(chunks, self.max_bytes + 65_536), content_type, form.open)
            if form.upload is None:
                raise ApiError(400, "missing the `file` field", "invalid_request", param="file")
            purpose = form.text("purpose")
            if not purpose:
                raise ApiError(
                    400, "missing the `purpose` field", "invalid_request", param="purpose"
                )
            self._check_purpose(purpose)
            if purpose == "batch":
                form.upload.ensure_jsonl()
            expires_after = _expires_after(form, batch.files_min_expiry)
            if accepted is not None:
                await accepted()
            form.upload.file.seek(0)
            record = await self.files.put(
                scope,
                form.upload.file,
                form.upload.filename,
                purpose,
                expires_after=expires_after,
            )
        finally:
            if form.upload is not None:
                form.upload.file.close()
        return file_view(record)

    async def record(self, tenant: str, file_id: str) -> FileRecord:
        record = await self.files.get(await self.scopes.of(tenant), file_id)
        if record is None:
            raise not_found("file", file_id)
        return record

    async def get(self, tenant: str, file_id: str) -> dict[str, Any]:
        return file_view(await self.record(tenant, file_id))

    async def content(self, tenant: str, file_id: str) -> bytes:
        data = await self.files.content(await self.scopes.of(tenant), file_id)
        if data is None:
            raise not_found("file", file_id)
        return data

    async def list(
        self, tenant: str, purpose: str | None, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        records = await self.files.list(await self.scopes.of(tenant))
        if purpose:
            records = [r for r in records if r.purpose == purpose]
        if order == "asc":
            records.reverse()
        ids = [r.id for r in records]
        page, has_more = list_page(ids, max(1, min(limit, 10_000)), after)
        by_id = {r.id: r for r in records}
        body = list_body([file_view(by_id[i]) for i in page], has_more)
        return {k: v for k, v in body.items() if v is not None}  # no ids in an empty page

    async def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        if not await self.files.delete(await self.scopes.of(tenant), file_id):
            raise not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}
