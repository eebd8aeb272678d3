"""The OpenAI-compatible HTTP API (FastAPI): completions, chat, embeddings, models, health, metrics.

It drives an `AsyncEngine` and nothing else of the engine. Errors use OpenAI's body shape,
`{"error": {"message", "type", "param", "code"}}`, so the official client raises its usual exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jijian.guard.allowlists import AccessDenied
from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal
from jijian.guard.stream import STOPPED
from jijian.model.tokenizer import Tokenizer
from jijian.serve.async_engine import AsyncEngine, QueueFullError
from jijian.serve.dashboard.sessions import SESSION_COOKIE, SessionStore
from jijian.serve.dashboard.sources import DashboardSources
from jijian.serve.engine import RequestOutput
from jijian.serve.metrics import ServerMetrics
from jijian.serve.rag import Passage, Retriever, augment_messages, citations, last_user_message
from jijian.serve.request import InvalidRequestError, SamplingParams
from jijian.serve.usage import UsageMeter


class Embedder(Protocol):
    """The knowledge base's embedding model, as `/v1/embeddings` needs it."""

    name: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text."""
        ...


@dataclass
class ApiSettings:
    """What the HTTP layer needs besides the engine."""

    model_name: str
    api_keys: dict[str, Principal] = field(default_factory=dict)  # empty: no authentication
    rate_limit_per_minute: int | None = None
    request_timeout_s: float = 600.0
    price_per_hour: float | None = None
    adapters: list[str] = field(default_factory=list)  # LoRA adapters, chosen by "model": "name" or "base:name"

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None: the base model); KeyError when it names nothing served."""
        if model is None or model == self.model_name:
            return None
        name = model.removeprefix(f"{self.model_name}:")
        if name in self.adapters:
            return name
        raise KeyError(model)


class ApiError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        """The JSON response carrying this error."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class RateLimiter:
    """A token bucket per API key: `per_minute` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Take one token from `key`'s bucket if there is one."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            return True


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False  # extension (as in vLLM): generate exactly max_tokens, for benchmarks
    user: str | None = None


class CompletionBody(_Body):
    """POST /v1/completions."""

    prompt: str | list[int]


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class RagOptions(BaseModel):
    """The `rag` extension of chat completions."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1)
    top_k: int = Field(default=4, ge=1, le=50)


class ChatBody(_Body):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    rag: RagOptions | None = None


class EmbeddingBody(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]


def create_app(
    engine: AsyncEngine,
    tokenizer: Tokenizer,
    settings: ApiSettings,
    *,
    retriever: Retriever | None = None,
    embedder: Embedder | None = None,
    policy: GuardPolicy | None = None,
    dashboard: DashboardSources | None = None,
) -> FastAPI:
    """The FastAPI application serving `engine` under `settings.model_name`.

    With a guard `policy`, every prompt is checked for injection (and audited, PII redacted in the log)
    before it reaches the engine, and every answer is checked for leakage of documents the caller may
    not read (and PII-redacted when configured) before it leaves: a non-streamed one whole, a streamed
    one incrementally, text held back until checked, a leak ending the stream with "content_filter".
    With `dashboard` sources, the operator dashboard is served at `/ui` (see `jijian.serve.dashboard`).
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="jijian", docs_url=None, redoc_url=None, lifespan=lifespan)
    metrics = ServerMetrics(engine, settings.price_per_hour)
    usage_meter = UsageMeter()
    sessions = SessionStore()
    limiter = RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute else None
    app.state.engine, app.state.metrics, app.state.usage = engine, metrics, usage_meter

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, _: Exception) -> JSONResponse:
        return ApiError(404, f"no route {request.url.path}", "invalid_request_error", code="not_found").response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, _: Exception) -> JSONResponse:
        return ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"
        ).response()

    def keys_required() -> bool:
        return bool(settings.api_keys) or (policy is not None and policy.keyring.has_keys)

    def principal_for_key(key: str | None) -> Principal | None:
        """The principal holding an API key: `[serve] api_keys` first, then the guard's key file."""
        if key is None:
            return None
        principal = settings.api_keys.get(key)
        if principal is None and policy is not None and policy.keyring.has_keys:
            principal = policy.authenticate(key)
        return principal

    def authenticate(request: Request) -> Principal | None:
        key = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        if keys_required():
            principal = principal_for_key(key)
            if principal is None and not header:
                # The dashboard's playground calls the API with its session cookie instead of the key.
                principal = sessions.principal(request.cookies.get(SESSION_COOKIE))
            if principal is None:
                raise ApiError(401, "missing or invalid API key", "invalid_request_error", code="invalid_api_key")
        else:
            principal = None
        if limiter is not None and not limiter.allow(key or (request.client.host if request.client else "-")):
            raise ApiError(429, "rate limit exceeded for this API key", "rate_limit_error", code="rate_limit_exceeded")
        return principal

    async def screen_prompt(text: str, principal: Principal | None, request_id: str) -> None:
        if policy is None:
            return
        decision = await asyncio.to_thread(policy.check_request, text, principal, request_id)
        if not decision.allowed:
            reasons = "; ".join(decision.injection.reasons[:3])
            raise ApiError(
                400,
                f"the request was refused by the prompt-injection guard ({reasons})",
                "invalid_request_error",
                code="prompt_injection",
            )

    async def screen_answer(text: str, principal: Principal | None, request_id: str) -> str:
        if policy is None:
            return text
        decision = await asyncio.to_thread(policy.check_response, text, principal, request_id)
        return decision.text

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", "invalid_request_error") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{param}: {first['msg']}", "invalid_request_error", param=param) from None
        try:
            settings.adapter_for(getattr(body, "model", None))
        except KeyError:
            served = ", ".join(repr(n) for n in [settings.model_name, *settings.adapters])
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist; this server serves {served}",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            ) from None
        return body

    def sampling(body: _Body, max_tokens: int) -> SamplingParams:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_k=body.top_k,
                top_p=body.top_p,
                repetition_penalty=body.repetition_penalty,
                seed=body.seed,
                stop=stop,
                ignore_eos=body.ignore_eos,
                adapter=settings.adapter_for(getattr(body, "model", None)),
            )
        except InvalidRequestError as exc:
            raise ApiError(400, str(exc), "invalid_request_error", param=exc.param) from None

    async def run(
        request: Request, prompt: list[int], params: SamplingParams, request_id: str, principal: Principal | None
    ) -> AsyncIterator[RequestOutput]:
        """Engine outputs for one request, with the timeout, metrics and error mapping applied."""
        began = time.monotonic()
        first: float | None = None
        last: RequestOutput | None = None
        outcome = "error"
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                async for output in engine.generate(request_id, prompt, params):
                    if first is None:
                        first = time.monotonic()
                        metrics.observe_ttft(first - began)
                    last = output
                    yield output
            outcome = "finished"
        except InvalidRequestError as exc:
            outcome = "invalid"
            raise ApiError(400, str(exc), "invalid_request_error", param=exc.param, code=exc.code) from None
        except QueueFullError as exc:
            outcome = "rejected"
            raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
        except TimeoutError:
            outcome = "timeout"
            raise ApiError(504, f"the request took longer than {settings.request_timeout_s} s", "timeout") from None
        except (asyncio.CancelledError, GeneratorExit):  # client gone, or the guard stopped the stream
            outcome = "cancelled"
            raise
        finally:
            metrics.requests.labels(outcome).inc()
            if last is not None:
                metrics.prompt_tokens.inc(last.prompt_tokens)
                metrics.output_tokens.inc(last.completion_tokens)
                usage_meter.record(
                    principal.user if principal else None,
                    last.prompt_tokens,
                    last.completion_tokens,
                    metrics.cost_per_million_tokens(),
                )
                if first is not None and last.completion_tokens > 1:
                    metrics.observe_tpot((time.monotonic() - first) / (last.completion_tokens - 1))

    async def until_disconnected(request: Request, task: asyncio.Task) -> None:
        while not task.done():
            if await request.is_disconnected():
                task.cancel()
                return
            await asyncio.sleep(0.25)

    async def collect(request: Request, outputs: AsyncIterator[RequestOutput]) -> tuple[str, RequestOutput]:
        async def gather() -> tuple[str, RequestOutput]:
            text, last = [], None
            async for output in outputs:
                text.append(output.text_delta)
                last = output
            assert last is not None
            return "".join(text), last

        task = asyncio.ensure_future(gather())
        watcher = asyncio.ensure_future(until_disconnected(request, task))
        try:
            return await task
        finally:
            watcher.cancel()

    def usage(output: RequestOutput) -> dict:
        return {
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": output.cached_tokens},
        }

    def check_length(prompt: list[int], max_tokens: int | None) -> int:
        limit = engine.engine.max_model_len
        if len(prompt) >= limit:
            raise ApiError(
                400,
                f"this model's maximum context length is {limit} tokens; the prompt has {len(prompt)}",
                "invalid_request_error",
                param="prompt",
                code="context_length_exceeded",
            )
        return max_tokens if max_tokens is not None else limit - len(prompt)

    async def started(
        request: Request, prompt: list[int], params: SamplingParams, request_id: str, principal: Principal | None
    ) -> AsyncGenerator[RequestOutput, None]:
        """The request's outputs, with the first one already pulled: a full queue or a bad request then
        raises here, as a 4xx, instead of in the middle of a 200 stream."""
        outputs = run(request, prompt, params, request_id, principal)
        try:
            head = await outputs.__anext__()
        except StopAsyncIteration:
            head = None

        async def with_head() -> AsyncGenerator[RequestOutput, None]:
            if head is not None:
                yield head
            async for output in outputs:
                yield output

        return with_head()

    async def guarded_stream(
        outputs: AsyncGenerator[RequestOutput, None], principal: Principal | None, request_id: str
    ) -> AsyncIterator[tuple[str, RequestOutput, str | None]]:
        """(text to send, engine output, finish reason) per engine output of a streamed answer.

        With a guard, text goes out only once the streaming leakage check has cleared it; a leak ends
        the stream with a notice and finish_reason "content_filter", and generation is aborted.
        """
        if policy is None:
            async for output in outputs:
                yield output.text_delta, output, output.finish_reason
            return
        check = policy.stream_check(principal, request_id)
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                text = check.feed(output.text_delta)
                if output.finished and not check.blocked:
                    text += await asyncio.to_thread(check.finish)
                if check.blocked:
                    yield STOPPED, output, "content_filter"
                    return
                yield text, output, output.finish_reason

    def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
            except ApiError as exc:
                error = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
                yield f"data: {json.dumps({'error': error})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        if engine.error is not None:
            raise ApiError(503, f"engine failed: {engine.error!r}", "server_error")
        return {"status": "ok", "model": settings.model_name}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authenticate(request)
        return {
            "object": "list",
            "data": [
                {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "jijian"},
                *(
                    {"id": name, "object": "model", "created": 0, "owned_by": "jijian", "parent": settings.model_name}
                    for name in settings.adapters
                ),
            ],
        }

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        principal = authenticate(request)
        body: CompletionBody = await parse(request, CompletionBody)
        prompt = (
            body.prompt
            if isinstance(body.prompt, list)
            else tokenizer.encode(body.prompt, add_bos=tokenizer.bos_id is not None)
        )
        if isinstance(body.prompt, str) and not body.prompt:
            raise ApiError(400, "prompt: must not be empty", "invalid_request_error", param="prompt")
        check_length(prompt, body.max_tokens)
        params = sampling(body, body.max_tokens or 16)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        await screen_prompt(
            body.prompt if isinstance(body.prompt, str) else tokenizer.decode(prompt), principal, request_id
        )
        outputs = await started(request, prompt, params, request_id, principal)

        def choice(text: str, reason: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        base = {"id": request_id, "object": "text_completion", "created": created, "model": settings.model_name}
        if body.stream:

            async def chunks() -> AsyncIterator[dict]:
                async for text, output, reason in guarded_stream(outputs, principal, request_id):
                    chunk = {**base, "choices": [choice(text, reason)]}
                    if reason is not None:
                        chunk["usage"] = usage(output)
                    yield chunk

            return sse(chunks())
        text, last = await collect(request, outputs)
        text = await screen_answer(text, principal, request_id)
        return {**base, "choices": [choice(text, last.finish_reason)], "usage": usage(last)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        principal = authenticate(request)
        body: ChatBody = await parse(request, ChatBody)
        messages = [m.model_dump() for m in body.messages]
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        await screen_prompt(last_user_message(messages) or "", principal, request_id)
        passages: list[Passage] = []
        if body.rag is not None:
            if retriever is None:
                raise ApiError(400, "rag: this server has no knowledge base", "invalid_request_error", param="rag")
            query = last_user_message(messages)
            if not query:
                raise ApiError(400, "rag: needs a user message to search for", "invalid_request_error", param="rag")
            try:
                passages = await asyncio.to_thread(
                    retriever.retrieve, query, body.rag.collection, body.rag.top_k, principal
                )
            except AccessDenied as exc:
                raise ApiError(403, str(exc), "permission_error", param="rag.collection") from None
            except KeyError:
                raise ApiError(
                    404,
                    f"rag.collection: no collection {body.rag.collection!r}",
                    "invalid_request_error",
                    param="rag.collection",
                    code="collection_not_found",
                ) from None
            messages = augment_messages(messages, passages)
        if tokenizer.chat_template is None:
            raise ApiError(400, "this model's tokenizer has no chat template", "invalid_request_error")
        prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        max_tokens = check_length(prompt, body.max_completion_tokens or body.max_tokens)
        params = sampling(body, max_tokens)
        created = int(time.time())
        outputs = await started(request, prompt, params, request_id, principal)

        base: dict[str, Any] = {"id": request_id, "created": created, "model": settings.model_name}
        extra = {"citations": citations(passages)} if body.rag is not None else {}
        if body.stream:

            async def chunks() -> AsyncIterator[dict]:
                first = True
                async for text, output, reason in guarded_stream(outputs, principal, request_id):
                    delta: dict[str, str] = {"content": text}
                    if first:
                        delta["role"] = "assistant"
                        first = False
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
                    chunk = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
                    if reason is not None:
                        chunk["usage"] = usage(output)
                    yield chunk

            return sse(chunks())
        text, last = await collect(request, outputs)
        message = {"role": "assistant", "content": await screen_answer(text, principal, request_id)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": last.finish_reason}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": usage(last), **extra}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        authenticate(request)
        try:
            data = json.loads(await request.body())
            body = EmbeddingBody.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
            raise ApiError(400, f"invalid embeddings request: {exc}", "invalid_request_error") from None
        if embedder is None:
            raise ApiError(
                404,
                "no embedding model is configured on this server",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        if body.model != embedder.name:
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist; embeddings use {embedder.name!r}",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = await asyncio.to_thread(embedder.embed, texts)
        return {
            "object": "list",
            "model": embedder.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    if dashboard is not None:
        from jijian.serve.dashboard import DashboardAuth, mount_dashboard

        auth = DashboardAuth(sessions=sessions, keys_required=keys_required, principal_for_key=principal_for_key)
        mount_dashboard(app, dashboard, auth, model_name=settings.model_name, policy=policy, retriever=retriever)
    return app
