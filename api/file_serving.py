"""Serving `/v1/files`: upload, read, list and delete files, transport-free.

Files live in the object store (`FileStore`); an upload is checked as a batch input file
(JSONL, at most `batch_max_lines` requests) before it is stored. Every file belongs to a
tenant; another tenant asking for it gets a 404.
"""

from __future__ import annotations

from typing import Any

from llmq.api.errors import ApiError
from llmq.api.listing import ensure_accepting, list_body, not_found
from llmq.api.runtime import Runtime
from llmq.dispatcher.batch.async_jobs import list_page
from llmq.dispatcher.batch.files import FileStore
from llmq.dispatcher.batch.jsonl import NotJsonl, TooManyLines, parse_input
from llmq.dispatcher.batch.records import FileRecord, file_view

FILE_PURPOSES = frozenset({"batch"})


class FileServing:
    def __init__(self, runtime: Runtime, files: FileStore) -> None:
        self.rt = runtime
        self.files = files

    @property
    def max_bytes(self) -> int:
        return self.rt.settings.batch.files_max_bytes

    def check(self, purpose: str, data: bytes) -> None:
        """400/413 unless `data` is a batch input file llmq can run."""
        settings = self.rt.settings
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"purpose must be one of {', '.join(sorted(FILE_PURPOSES))}",
                "invalid_purpose",
                param="purpose",
            )
        if len(data) > settings.batch.files_max_bytes:
            raise ApiError(
                413,
                f"the file is larger than {settings.batch.files_max_bytes} bytes",
                "file_too_large",
                param="file",
            )
        try:
            parse_input(data, "", settings.batch.batch_max_lines)
        except NotJsonl as exc:
            raise ApiError(
                400, f"the file is not JSONL: {exc}", "invalid_file", param="file"
            ) from None
        except TooManyLines:
            raise ApiError(
                400,
                f"a batch file may hold at most {settings.batch.batch_max_lines} requests",
                "too_many_requests_in_file",
                param="file",
            ) from None

    async def upload(self, tenant: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        ensure_accepting(self.rt)
        self.check(purpose, data)
        record = await self.files.put(tenant, data, filename or "upload.jsonl", purpose)
        return file_view(record)

    async def record(self, tenant: str, file_id: str) -> FileRecord:
        record = await self.files.get(tenant, file_id)
        if record is None:
            raise not_found("file", file_id)
        return record

    async def get(self, tenant: str, file_id: str) -> dict[str, Any]:
        return file_view(await self.record(tenant, file_id))

    async def content(self, tenant: str, file_id: str) -> bytes:
        data = await self.files.content(tenant, file_id)
        if data is None:
            raise not_found("file", file_id)
        return data

    async def list(
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
        return list_body([file_view(by_id[i]) for i in page], has_more)

    async def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        if not await self.files.delete(tenant, file_id):
            raise not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}
