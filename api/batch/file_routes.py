"""`/v1/files`: upload (multipart/form-data, as the OpenAI SDK sends it), list, retrieve,
content, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch.file_serving import FileServing
from llmq.api.batch.wing import wing
from llmq.api.errors import ApiError
from llmq.api.openapi_bodies import Bodies, multipart
from llmq.api.routes.common import count, json_response, listing, tenant_of

router = APIRouter(prefix="/v1")
BODIES: Bodies = {
    ("/v1/files", "post"): multipart(
        {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"type": "string", "enum": ["batch"]},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {"type": "integer"},
        },
        ["file", "purpose"],
    )
}


def serving(request: Request) -> FileServing:
    return wing(request).file_serving


@router.post("/files")
async def upload_file(request: Request) -> Response:
    """Read as it arrives: the body is never held whole (see `FileServing.upload`). The
    upload counts against the RPM once it is accepted, just before it is stored: a refused
    one (bad form, not JSONL, too large) uses no quota, as a refused chat body uses none."""
    svc = serving(request)
    tenant = await tenant_of(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > svc.max_bytes + 65_536:
        raise ApiError(
            413, f"the file is larger than {svc.max_bytes} bytes", "file_too_large", param="file"
        )
    content_type = request.headers.get("content-type", "")
    stored = await svc.upload(
        tenant, content_type, request.stream(), accepted=lambda: count(request, tenant)
    )
    return json_response(stored)


@router.get("/files")
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = 10_000,
    after: str | None = None,
    order: str = "desc",
) -> Response:
    async with listing(request) as tenant:
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
