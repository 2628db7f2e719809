"""`input_file` parts that name one of the tenant's files (`file_id`), inlined for the job.

A chat upstream (or an upstream's own `/v1/responses`) does not know llmq's file ids, so the
job body carries the file itself, as the `file_data` data URL both APIs take. Only the job
body changes: stored items keep the `file_id`. Parts by `file_url` or `file_data` are left
as they came.
"""

from __future__ import annotations

import base64
import mimetypes
from typing import Any

from llmq.api.errors import ApiError
from llmq.api.listing import not_found
from llmq.dispatcher.batch.files import FileStore
from llmq.schemas.responses import Item


async def inline_files(files: FileStore, scope: str, items: list[Item], max_bytes: int) -> None:
    """Replace, in `items` (the job's own copies), every `input_file` part by `file_id`
    with its content; 404 for a file this tenant does not have, 413 past `max_bytes`."""
    for i, item in enumerate(items):
        content = item.get("content")
        if not isinstance(content, list) or not any(_by_id(p) for p in content):
            continue
        parts = []
        for j, part in enumerate(content):
            parts.append(
                await _inlined(files, scope, part, max_bytes, f"input[{i}].content[{j}]")
                if _by_id(part)
                else part
            )
        items[i] = {**item, "content": parts}


def _by_id(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "input_file" and "file_id" in part


async def _inlined(
    files: FileStore, scope: str, part: dict[str, Any], max_bytes: int, param: str
) -> dict[str, Any]:
    file_id = part["file_id"]
    record = await files.get(scope, file_id) if isinstance(file_id, str) else None
    if record is None:
        raise not_found("file", str(file_id), param=param)
    if record.bytes > max_bytes:
        raise ApiError(
            413, f"file {file_id} is larger than {max_bytes} bytes", "file_too_large", param=param
        )
    data = await files.content(scope, file_id)
    if data is None:
        raise not_found("file", file_id, param=param)
    kind = mimetypes.guess_type(record.filename)[0] or "application/octet-stream"
    encoded = base64.b64encode(data).decode()
    rest = {k: v for k, v in part.items() if k != "file_id"}
    return {
        **rest,
        "filename": part.get("filename") or record.filename,
        "file_data": f"data:{kind};base64,{encoded}",
    }
