"""From request body to job: decode and validate, resolve aliases, check the model, apply
per-model defaults, estimate the tokens to reserve. The same for every way a request
arrives — interactive HTTP, an async job, a batch line — so they can never disagree.

Raises `Refusal` (400 bad body, 404 unknown model, 503 no live worker, 400 unsupported
endpoint), which the HTTP edge renders. No I/O, but for a durable job's model the registry's
on-demand catalog read (`WorkerRegistry.load_catalog`), as every other path of the api does.
"""

from __future__ import annotations

import re
from typing import Any, cast

import msgspec

from llmq.api.model_table import ModelTable
from llmq.dispatcher.registry import WorkerRegistry
from llmq.schemas.admission import AnyRequest, PreparedRequest, Refusal
from llmq.schemas.endpoints import pack, unpack
from llmq.schemas.envelope import REQUEST_DECODERS, JobKind
from llmq.schemas.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    patch_body,
)
from llmq.schemas.responses import ResponseRequest
from llmq.schemas.text import message_text

_encoder = msgspec.json.Encoder()
_fields = msgspec.json.Decoder(dict[str, Any])
MAX_BEST_OF = 20
"""OpenAI's ceiling for `best_of` on /v1/completions."""
_PATH = re.compile(r"at `\$\.?(.*)`")


class RequestPreparer:
    def __init__(
        self,
        models: ModelTable,
        registry: WorkerRegistry,
        default_max_tokens: int,
        *,
        max_n: int = 8,
        max_output_tokens: int = 1_000_000,
        waits: bool = True,
    ) -> None:
        self.models = models
        self.waits = waits
        """An interactive job for a known model with no live worker waits in its queue for
        one (`no_worker_grace` other than 0) instead of a 503 at once."""
        self.registry = registry
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.max_output_tokens = max_output_tokens
        """The largest max_tokens for a model whose table entry sets none."""

    def prepare(self, kind: JobKind, body: bytes, *, durable: bool = False) -> PreparedRequest:
        """`durable`: an async or batch job, which never streams and may wait in its queue
        for a worker (so a known model with no live worker is fine)."""
        return self.prepare_decoded(self.decode(kind, body), kind, body, durable=durable)

    async def prepare_durable(self, kind: JobKind, body: bytes) -> PreparedRequest:
        """An async job or a batch line (the batch machinery's `Preparer` port). The model's
        catalog entry is read from the bucket when a live worker serves it and its entry
        has not come through the models' watch yet (just after the worker's first
        heartbeat): its endpoints and kinds are checked against it, not against nothing."""
        if kind == "endpoint":
            return await self._durable_endpoint(body)
        req = self.decode(kind, body)
        await self.registry.load_catalog((self.models.resolve(req.model),))
        return self.prepare_decoded(req, kind, body, durable=True)

    async def _durable_endpoint(self, packed: bytes) -> PreparedRequest:
        """A batch line for one of OpenAI's other endpoints (`schemas.endpoints`): its model
        must declare the endpoint; one request, no tokens reserved."""
        try:
            call, body = unpack(packed)
            fields = _fields.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise Refusal(400, "the body is not a JSON object", "invalid_json") from None
        if not isinstance(fields.get("model"), str):
            raise Refusal(400, "`model` is required", "invalid_request", param="model")
        model = self.models.resolve(fields["model"])
        await self.registry.load_catalog((model,))
        info = self.registry.model_info(model)
        if info is None or call.path not in info.endpoints:
            raise Refusal(
                404,
                f"The model `{model}` does not serve {call.path}",
                "model_not_found",
                param="model",
            )
        packed = pack(call, patch_body(body, {"model": model}))
        return PreparedRequest(cast(AnyRequest, call), model, packed, "endpoint", False, 1, 1)

    def decode(self, kind: JobKind, body: bytes) -> AnyRequest:
        req: AnyRequest = _decode(body, REQUEST_DECODERS[kind])
        if isinstance(req, ChatCompletionRequest) and not req.messages:
            raise Refusal(
                400,
                "`messages` must contain at least one message",
                "invalid_request",
                param="messages",
            )
        return req

    def prepare_decoded(
        self,
        req: AnyRequest,
        kind: JobKind,
        body: bytes,
        *,
        durable: bool = False,
        live_now: bool = False,
    ) -> PreparedRequest:
        """`live_now`: a known model with no live worker is a 503 `no_worker` now (another
        model of the fallback chain is tried instead), else the job may wait in its queue
        for one (`durable`, or `no_worker_grace` other than 0)."""
        if isinstance(req, ResponseRequest):
            return self._durable_response(req, body)
        model = self.models.resolve(req.model)
        self.check_model(model, kind, need_live_worker=self.fails_fast(model, live_now, durable))
        limit = self.models.token_limit_for(model) or self.max_output_tokens
        self.check_bounds(req, limit)
        req, changed = self._adjusted(req, model, durable)
        if changed:
            body = patch_body(body, changed)  # fields llmq does not declare stay as they came
        stream = bool(getattr(req, "stream", False))
        if isinstance(req, EmbeddingRequest):
            reserve = 0
        else:
            per_choice = token_limit(req) or self.default_max_tokens
            reserve = choices(req) * min(per_choice, limit)
        return PreparedRequest(req, model, body, kind, stream, estimate_prompt_tokens(req), reserve)

    def _durable_response(self, req: ResponseRequest, body: bytes) -> PreparedRequest:
        """A Responses request as a batch line or async job: whole, not stored, and on its
        own (its history cannot be read from a batch: `previous_response_id` and
        `conversation` are refused)."""
        for param in ("previous_response_id", "conversation", "background"):
            if getattr(req, param) not in (None, msgspec.UNSET, False):
                raise Refusal(
                    400,
                    f"`{param}` is not supported in a batch",
                    "unsupported_parameter",
                    param=param,
                )
        if req.input in (msgspec.UNSET, None, "", []):
            raise Refusal(400, "`input` is required", "invalid_request", param="input")
        model = self.models.resolve(req.model)
        self.check_model(model, "chat", need_live_worker=False)
        limit = self.models.token_limit_for(model) or self.max_output_tokens
        _check_range(req.max_output_tokens, "max_output_tokens", 1, limit)
        asked = req.max_output_tokens if isinstance(req.max_output_tokens, int) else None
        body = patch_body(body, {"model": model, "stream": False, "store": False})
        estimate = len(body) // 3 + 1  # as the Responses API's own guess
        reserve = min(asked or self.default_max_tokens, limit)
        return PreparedRequest(
            cast(AnyRequest, req), model, body, "response", False, estimate, reserve
        )

    def check_bounds(self, req: AnyRequest, token_limit: int) -> None:
        """The numbers the reservation is made of, checked before it is: an output limit of
        1..`token_limit` tokens (the model's, or llmq's ceiling), 1..`max_n` choices. Checked
        here, a bad value is a 400 that costs no quota, never an error inside the quota
        script after the request was counted."""
        if isinstance(req, EmbeddingRequest):
            _check_embedding_input(req.input)
            return
        params = ["max_tokens"]
        if isinstance(req, ChatCompletionRequest):
            params.append("max_completion_tokens")
        for param in params:
            _check_range(getattr(req, param), param, 1, token_limit)
        _check_range(req.n, "n", 1, self.max_n)
        if isinstance(req, CompletionRequest):
            n = req.n if isinstance(req.n, int) else 1
            _check_range(req.best_of, "best_of", max(n, 1), MAX_BEST_OF)

    def fails_fast(self, model: str, live_now: bool = False, durable: bool = False) -> bool:
        """Whether a request for `model` needs a live worker now (else it may wait in the
        queue for one): `live_now` (another model of the chain is left), an interactive job
        with `no_worker_grace` 0, or one whose model's workers all have their circuit open (a
        failing backend is no deploy to wait for)."""
        if live_now:
            return True
        if durable:
            return False
        return not self.waits or _circuits_open(self.registry, model)

    def check_model(self, model: str, kind: JobKind, need_live_worker: bool) -> None:
        registry = self.registry
        live = bool(registry.workers_for(model))
        if not live and not registry.known(model):
            raise Refusal(
                404, f"The model `{model}` does not exist", "model_not_found", param="model"
            )
        if not live and need_live_worker:
            raise Refusal(503, f"no live worker serves model `{model}`", "no_worker", param="model")
        info = registry.model_info(model)
        if info is not None and kind not in info.kinds:
            raise Refusal(
                400,
                f"model `{model}` does not support {kind} requests",
                "unsupported_endpoint",
                param="model",
            )

    def _adjusted(
        self, req: AnyRequest, model: str, durable: bool
    ) -> tuple[AnyRequest, dict[str, object]]:
        changes: dict[str, object] = {}
        if req.model != model:
            changes["model"] = model
        if not isinstance(req, EmbeddingRequest):
            if durable and req.stream:
                changes["stream"] = False
            if durable and req.stream_options is not msgspec.UNSET:
                changes["stream_options"] = msgspec.UNSET
            defaults = self.models.defaults_for(model)
            if defaults is not None:
                if defaults.temperature is not None and not isinstance(
                    req.temperature, float | int
                ):
                    changes["temperature"] = defaults.temperature
                if defaults.max_tokens is not None and token_limit(req) is None:
                    changes["max_tokens"] = defaults.max_tokens
        if not changes:
            return req, changes
        return msgspec.structs.replace(req, **changes), changes


def _decode(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    """Decode a body, refusing with a 400 that names the offending field."""
    if not body:
        raise Refusal(400, "request body is empty; expected a JSON object", "invalid_json")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        param = match.group(1) if match and match.group(1) else None
        if param is None and "missing required field" in message:
            field = re.search(r"`(\w+)`", message)
            param = field.group(1) if field else None
        raise Refusal(400, message, "invalid_request", param=param) from None
    except msgspec.DecodeError as exc:
        raise Refusal(400, f"malformed JSON: {exc}", "invalid_json") from None
    except UnicodeDecodeError:
        raise Refusal(400, "the request body is not valid UTF-8", "invalid_json") from None
    except RecursionError:
        raise Refusal(400, "the request body is nested too deeply", "invalid_json") from None


def _check_range(value: object, param: str, low: int, high: int) -> None:
    """An integer parameter, when set, within [low, high]; OpenAI's codes and wording."""
    if not isinstance(value, int):
        return
    if value < low:
        raise Refusal(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            "integer_below_min_value",
            param=param,
        )
    if value > high:
        digits = int(value.bit_length() * 0.30103)
        shown = value if value < 10**30 else f"a number of ~{digits} digits"
        raise Refusal(
            400,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, "
            f"but got {shown} instead.",
            "integer_above_max_value",
            param=param,
        )


def _check_embedding_input(value: str | list[Any]) -> None:
    """OpenAI's four shapes: a text, texts, token ids, lists of token ids; nothing else
    reaches a worker."""
    if isinstance(value, str):
        return
    if value and (
        all(isinstance(x, str) for x in value)
        or all(_token_ids(x) for x in value)
        or _token_ids(value)
    ):
        return
    raise Refusal(
        400,
        "`input` must be a string, a non-empty array of strings, an array of token ids "
        "or an array of such arrays",
        "invalid_value",
        param="input",
    )


def _token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value)
    )


def choices(req: ChatCompletionRequest | CompletionRequest) -> int:
    """How many completions the request makes the backend generate: `n` (1 when absent);
    for /v1/completions `best_of` of them if larger, for every prompt of a list."""
    n = req.n if isinstance(req.n, int) else 1
    if isinstance(req, CompletionRequest):
        if isinstance(req.best_of, int):
            n = max(n, req.best_of)
        if isinstance(req.prompt, list):
            n *= max(len(req.prompt), 1)
    return n


def estimate_prompt_tokens(req: AnyRequest) -> int:
    """A deliberately high guess for the reservation: tokenizers give about one token per
    3-4 UTF-8 bytes of English and one per CJK character (3 bytes), never fewer than one a
    word, and chat formats add a few per message. The worker's real count replaces it when
    the job ends; guessing high is what keeps budgets from being overshot under concurrency."""
    if isinstance(req, ChatCompletionRequest):
        texts = [message_text(m) for m in req.messages]
        overhead = 4 * len(texts)
    elif isinstance(req, CompletionRequest):
        prompts = req.prompts()
        texts = [p for p in prompts if isinstance(p, str)]
        overhead = sum(len(p) for p in prompts if isinstance(p, list))  # token ids: exact
    else:
        raw = req.input
        texts = [raw] if isinstance(raw, str) else [str(x) for x in raw]
        overhead = 0
    return overhead + sum(max(len(t.encode()) // 3, len(t.split())) for t in texts) or 1


def token_limit(req: AnyRequest) -> int | None:
    if isinstance(req, ChatCompletionRequest):
        return req.token_limit()
    if isinstance(req, CompletionRequest) and isinstance(req.max_tokens, int):
        return req.max_tokens
    return None


def _circuits_open(registry: WorkerRegistry, model: str) -> bool:
    """Live, not draining workers serve `model`, but every one has its circuit open."""
    serving = [w for w in registry.live_workers() if model in w.models and not w.draining]
    return bool(serving) and all(w.circuit == "open" for w in serving)
