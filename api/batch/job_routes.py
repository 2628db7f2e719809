"""Async jobs: `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch.job_serving import JobServing
from llmq.api.batch.wing import wing
from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.routes.common import json_response, key_of, listing, tenant_of

router = APIRouter(prefix="/v1")
BODIES: Bodies = {
    ("/v1/jobs", "post"): {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/ChatCompletionRequest"},
                        {
                            "type": "object",
                            "properties": {
                                "endpoint": {
                                    "type": "string",
                                    "enum": [
                                        "/v1/chat/completions",
                                        "/v1/completions",
                                        "/v1/embeddings",
                                    ],
                                },
                                "webhook_url": {"type": "string"},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    ]
                }
            }
        },
    }
}
"""A chat request (or, with `endpoint`, a completion or embedding one) plus the job's own
fields."""


def serving(request: Request) -> JobServing:
    return wing(request).job_serving


@router.post("/jobs")
async def create_job(request: Request) -> Response:
    tenant = await tenant_of(request)
    body = await read_body(request, request.app.state.settings.api.max_body_bytes)
    view = await serving(request).create(
        tenant, body, request.headers.get("traceparent"), key_id=key_of(request)
    )
    return json_response(view, status=202, headers={"x-request-id": view["id"]})


@router.get("/jobs")
async def list_jobs(request: Request, limit: int = 20, after: str | None = None) -> Response:
    async with listing(request) as tenant:
        return json_response(await serving(request).list(tenant, limit, after))


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).get(tenant, job_id))


@router.delete("/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str) -> Response:
    tenant = await tenant_of(request)
    return json_response(await serving(request).cancel(tenant, job_id))
