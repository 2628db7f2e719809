"""Async jobs: `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`, `DELETE /v1/jobs/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from llmq.api.batch.job_serving import JobServing
from llmq.api.batch.record_routes import add_record_routes
from llmq.api.batch.wing import wing
from llmq.api.openapi_bodies import Bodies
from llmq.api.protocol import read_body
from llmq.api.routes.common import json_response, key_of, tenant_of

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


add_record_routes(router, serving, kind="job", plural="jobs", cancel=("DELETE", ""))
