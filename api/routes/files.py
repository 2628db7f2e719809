"""`/v1/files`: upload (multipart/form-data, as the OpenAI SDK sends it), list, retrieve,
content, delete."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.errors import ApiError
from llmq.api.file_serving import FileServing
from llmq.api.protocol import read_body
from llmq.api.routes.common import json_response, tenant_of, wing

router = APIRouter(prefix="/v1")

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def serving(request: Request) -> FileServing:
    return wing(request).file_serving


def _params(header: str) -> dict[str, str]:
    out = {}
    for name, value in _PARAM.findall(header):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[name.lower()] = value
    return out


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename or None, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "expected a multipart/form-data body", "invalid_request")
    boundary = _params(content_type).get("boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary", "invalid_request")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value.strip()
        params = _params(disposition)
        if "name" in params:
            fields[params["name"]] = (params.get("filename"), content)
    return fields


@router.post("/files")
async def upload_file(request: Request) -> Response:
    svc = serving(request)
    tenant = await tenant_of(request)
    body = await read_body(request, svc.max_bytes + 65_536)
    fields = parse_multipart(body, request.headers.get("content-type", ""))
    if "file" not in fields:
        raise ApiError(400, "missing the `file` field", "invalid_request", param="file")
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
    if not purpose:
        raise ApiError(400, "missing the `purpose` field", "invalid_request", param="purpose")
    filename, data = fields["file"]
    return json_response(await svc.upload(tenant, filename or "", purpose, data))


@router.get("/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = 10_000,
    after: str | None = None,
    order: str = "desc",
) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).list(tenant, purpose, limit, after, order))


@router.get("/files/{file_id}")
async def get_file(request: Request, file_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).get(tenant, file_id))


@router.get("/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    tenant = await tenant_of(request)
    data = await serving(request).content(tenant, file_id)
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).delete(tenant, file_id))
