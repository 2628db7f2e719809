"""What the job, file and batch serving modules share: OpenAI list pages, 404s, and the
refusal of new work while the api shuts down."""

from __future__ import annotations

from typing import Any

from llmq.api.errors import ApiError
from llmq.api.runtime import Runtime


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object around one page of views."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def page_limit(limit: int) -> int:
    return max(1, min(limit, 100))


def not_found(kind: str, public_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: '{public_id}'", f"{kind}_not_found", param=param)


def ensure_accepting(runtime: Runtime) -> None:
    """503 for new work once the api has begun to shut down."""
    if not runtime.accepting:
        raise ApiError(503, "the api is shutting down", "shutting_down")
