"""A quota refusal as the client sees it: `quota.lua`'s decision in OpenAI's error shape."""

from __future__ import annotations

from llmq.api.tenancy.models import QuotaDecision
from llmq.schemas.admission import Refusal

_MESSAGES = {
    "rate_limit_exceeded": "Rate limit reached for {limit}. Retry after the indicated time.",
    "insufficient_quota": "You exceeded your {limit} quota.",
    "suspended": "This tenant is suspended.",
    "model_not_allowed": "This tenant may not use model `{model}`.",
    "unknown_tenant": "Unknown tenant.",
    "invalid_api_key": "Incorrect API key provided.",
}
_KEY_MESSAGES = {
    "model_not_allowed": "This API key may not use model `{model}`.",
}


def refusal_of(decision: QuotaDecision, model: str) -> Refusal:
    reason = decision.reason
    limit: str = decision.limit
    template = _MESSAGES.get(reason, reason)
    if limit == "key":
        template = _KEY_MESSAGES.get(reason, template)
    elif limit.startswith("key_"):
        limit = f"{limit[4:]} of this API key"
    message = template.format(limit=limit or "this", model=model)
    status = decision.http_status
    kind = {429: reason, 401: "invalid_request_error"}.get(status, "permission_error")
    return Refusal(
        status,
        message,
        reason,
        type=kind,
        param="model" if reason == "model_not_allowed" else None,
        headers=decision.headers(),
        retry_after=max(decision.retry_after, 0.2) if status == 429 else None,
    )
