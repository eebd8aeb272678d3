"""The OpenAI-compatible routes (/v1/completions, /v1/chat/completions, /v1/embeddings, /v1/models) as a router.

`OpenAIRoutes` holds what the handlers share (engine, tokenizer, guard policy, metrics); `router()`
binds them to paths with the one authentication dependency. Every client-supplied message is bounded,
screened and audited before the engine sees it; control tokens come only from the chat template.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from jijian.guard.allowlists import AccessDenied
from jijian.guard.http_auth import HttpAuth
from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal
from jijian.guard.stream import STOPPED
from jijian.model.tokenizer import Tokenizer
from jijian.serve.async_engine import AsyncEngine, EngineRequestFailed, QueueFullError
from jijian.serve.cpu_threads import to_side_thread
from jijian.serve.engine import RequestOutput
from jijian.serve.errors import ApiError
from jijian.serve.metrics import ServerMetrics
from jijian.serve.openai_bodies import ChatBody, CompletionBody, EmbeddingBody, SamplingBody
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
    """What the HTTP layer needs besides the engine; the limits bound every request before any guard runs."""

    model_name: str
    request_timeout_s: float = 600.0
    price_per_hour: float | None = None
    max_body_bytes: int = 4 * 2**20
    max_prompt_chars: int = 400_000
    max_stop_sequences: int = 4
    max_embedding_inputs: int = 256
    allowed_hosts: list[str] | None = None  # None: any Host (for in-process use); servers pass [serve] allowed_hosts
    adapters: list[str] = field(default_factory=list)  # LoRA adapters, chosen by "model": "name" or "base:name"

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a request's `model` names (None: the base model); KeyError when it names nothing served."""
        if model is None or model == self.model_name:
            return None
        name = model.removeprefix(f"{self.model_name}:")
        if name in self.adapters:
            return name
        raise KeyError(model)


def _usage(output: RequestOutput) -> dict[str, Any]:
    return {
        "prompt_tokens": output.prompt_tokens,
        "completion_tokens": output.completion_tokens,
        "total_tokens": output.prompt_tokens + output.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": output.cached_tokens},
    }


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except ApiError as exc:
            yield f"data: {json.dumps({'error': exc.body()['error']})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with every `#/$defs/...` reference replaced by its definition (the models are not recursive)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that parses its JSON itself (so its errors keep OpenAI's shape)."""
    schema = model.model_json_schema()
    body = _inlined(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


class OpenAIRoutes:
    """The handlers of the OpenAI-compatible API over one engine."""

    def __init__(
        self,
        engine: AsyncEngine,
        tokenizer: Tokenizer,
        settings: ApiSettings,
        metrics: ServerMetrics,
        usage_meter: UsageMeter,
        *,
        retriever: Retriever | None = None,
        embedder: Embedder | None = None,
        policy: GuardPolicy | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.settings = engine, tokenizer, settings
        self.metrics, self.usage_meter = metrics, usage_meter
        self.retriever, self.embedder, self.policy = retriever, embedder, policy

    # --- request checks -------------------------------------------------------------------------

    async def parse(self, request: Request, model: type[BaseModel]) -> Any:
        """The body validated against `model`; any problem is a 400 naming the field."""
        raw = await request.body()
        if len(raw) > self.settings.max_body_bytes:
            raise ApiError(413, f"the request body is larger than {self.settings.max_body_bytes} bytes",
                           "invalid_request_error", code="request_too_large")  # fmt: skip
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", "invalid_request_error") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", "invalid_request_error")
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ApiError(400, f"{param}: {message}" if param else message, "invalid_request_error",
                           param=param or message.split(":", 1)[0]) from None  # fmt: skip
        return body

    def check_model(self, name: str) -> None:
        """404 unless `name` is the served model or one of its adapters."""
        try:
            self.settings.adapter_for(name)
        except KeyError:
            served = ", ".join(repr(n) for n in [self.settings.model_name, *self.settings.adapters])
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {served}",
                           "invalid_request_error", param="model", code="model_not_found") from None  # fmt: skip

    def check_prompt_size(self, chars: int) -> None:
        """400 for a prompt over `max_prompt_chars`, checked before any guard pattern reads it."""
        if chars > self.settings.max_prompt_chars:
            raise ApiError(400, f"the prompt has {chars} characters; this server accepts at most "
                           f"{self.settings.max_prompt_chars}", "invalid_request_error", param="messages",
                           code="prompt_too_long")  # fmt: skip

    def sampling(self, body: SamplingBody, max_tokens: int) -> SamplingParams:
        """Engine sampling parameters from a validated body."""
        stop = body.stop_strings()
        if len(stop) > self.settings.max_stop_sequences:
            raise ApiError(400, f"stop: at most {self.settings.max_stop_sequences} stop strings, got {len(stop)}",
                           "invalid_request_error", param="stop")  # fmt: skip
        try:
            return SamplingParams(
                max_tokens=max_tokens, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                repetition_penalty=body.repetition_penalty, seed=body.seed, stop=stop, ignore_eos=body.ignore_eos,
                adapter=self.settings.adapter_for(getattr(body, "model", None)),
            )  # fmt: skip
        except InvalidRequestError as exc:
            raise ApiError(400, str(exc), "invalid_request_error", param=exc.param) from None

    def check_length(self, prompt: list[int], max_tokens: int | None) -> int:
        """The output budget; 400 when the prompt alone fills the context."""
        limit = self.engine.engine.max_model_len
        if len(prompt) >= limit:
            raise ApiError(400, f"this model's maximum context length is {limit} tokens; the prompt has {len(prompt)}",
                           "invalid_request_error", param="prompt", code="context_length_exceeded")  # fmt: skip
        return max_tokens if max_tokens is not None else limit - len(prompt)

    async def screen(self, messages: Sequence[tuple[str, str]], principal: Principal, request_id: str) -> None:
        """Injection check and audit entry for every client-supplied (role, text); refused if any is flagged."""
        if self.policy is None:
            return
        for role, text in messages:
            decision = await to_side_thread(self.policy.check_request, text, principal, request_id)
            if not decision.allowed:
                reasons = "; ".join(decision.injection.reasons[:3])
                raise ApiError(400, f"the request was refused by the prompt-injection guard ({role} message: "
                               f"{reasons})", "invalid_request_error", code="prompt_injection")  # fmt: skip

    async def screen_answer(self, text: str, principal: Principal, request_id: str) -> str:
        """The answer as the guard lets it out (withheld when it leaks a document the caller may not read)."""
        if self.policy is None:
            return text
        decision = await to_side_thread(self.policy.check_response, text, principal, request_id)
        return decision.text

    # --- running requests -----------------------------------------------------------------------

    async def run(
        self, prompt: list[int], params: SamplingParams, request_id: str, principal: Principal
    ) -> AsyncIterator[RequestOutput]:
        """Engine outputs for one request, with the timeout, metrics and error mapping applied."""
        metrics, timeout = self.metrics, self.settings.request_timeout_s
        began = time.monotonic()
        first: float | None = None
        last: RequestOutput | None = None
        outcome = "error"
        try:
            async with asyncio.timeout(timeout):
                async for output in self.engine.generate(request_id, prompt, params):
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
        except EngineRequestFailed as exc:
            raise ApiError(500, f"generation failed for this request: {exc}", "server_error") from None
        except TimeoutError:
            outcome = "timeout"
            raise ApiError(504, f"the request took longer than {timeout} s", "timeout") from None
        except (asyncio.CancelledError, GeneratorExit):  # client gone, or the guard stopped the stream
            outcome = "cancelled"
            raise
        finally:
            metrics.requests.labels(outcome).inc()
            if last is not None:
                metrics.prompt_tokens.inc(last.prompt_tokens)
                metrics.output_tokens.inc(last.completion_tokens)
                self.usage_meter.record(None if principal.anonymous else principal.user, last.prompt_tokens,
                                        last.completion_tokens, metrics.cost_per_million_tokens())  # fmt: skip
                if first is not None and last.completion_tokens > 1:
                    metrics.observe_tpot((time.monotonic() - first) / (last.completion_tokens - 1))

    async def started(
        self, prompt: list[int], params: SamplingParams, request_id: str, principal: Principal
    ) -> AsyncGenerator[RequestOutput, None]:
        """The outputs with the first one already pulled: a full queue or a bad request then raises here,
        as a 4xx, instead of in the middle of a 200 stream."""
        outputs = self.run(prompt, params, request_id, principal)
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

    @staticmethod
    async def collect(request: Request, outputs: AsyncIterator[RequestOutput]) -> tuple[str, RequestOutput]:
        """The whole answer; generation is cancelled if the client disconnects first."""

        async def gather() -> tuple[str, RequestOutput]:
            text, last = [], None
            async for output in outputs:
                text.append(output.text_delta)
                last = output
            assert last is not None
            return "".join(text), last

        async def until_disconnected(task: asyncio.Task[tuple[str, RequestOutput]]) -> None:
            while not task.done():
                if await request.is_disconnected():
                    task.cancel()
                    return
                await asyncio.sleep(0.25)

        task = asyncio.ensure_future(gather())
        watcher = asyncio.ensure_future(until_disconnected(task))
        try:
            return await task
        finally:
            watcher.cancel()

    async def guarded_stream(
        self, outputs: AsyncGenerator[RequestOutput, None], principal: Principal, request_id: str
    ) -> AsyncIterator[tuple[str, RequestOutput, str | None]]:
        """(text to send, engine output, finish reason) per output; with a guard, text leaves only once the
        streaming leak check cleared it, and a leak ends the stream with finish_reason "content_filter"."""
        if self.policy is None:
            async for output in outputs:
                yield output.text_delta, output, output.finish_reason
            return
        check = self.policy.stream_check(principal, request_id)
        async with contextlib.aclosing(outputs):
            async for output in outputs:
                text = check.feed(output.text_delta)
                if output.finished and not check.blocked:
                    text += await to_side_thread(check.finish)
                if check.blocked:
                    yield STOPPED, output, "content_filter"
                    return
                yield text, output, output.finish_reason

    # --- endpoints ------------------------------------------------------------------------------

    async def completions(self, request: Request, principal: Principal) -> Any:
        """POST /v1/completions."""
        body: CompletionBody = await self.parse(request, CompletionBody)
        self.check_model(body.model)
        tokenizer = self.tokenizer
        if isinstance(body.prompt, str):
            self.check_prompt_size(len(body.prompt))
            prompt = tokenizer.encode(body.prompt, add_bos=tokenizer.bos_id is not None)
            text = body.prompt
        else:
            self.check_prompt_size(len(body.prompt))
            vocab = self.engine.engine.model.cfg.vocab_size
            if any(not 0 <= t < vocab for t in body.prompt):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", "invalid_request_error",
                               param="prompt")  # fmt: skip
            prompt, text = body.prompt, tokenizer.decode(body.prompt)
        self.check_length(prompt, body.max_tokens)
        params = self.sampling(body, body.max_tokens or 16)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        await self.screen([("prompt", text)], principal, request_id)
        outputs = await self.started(prompt, params, request_id, principal)

        def choice(text: str, reason: str | None) -> dict[str, Any]:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

        base = {"id": request_id, "object": "text_completion", "created": created, "model": self.settings.model_name}
        if body.stream:

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                async for text, output, reason in self.guarded_stream(outputs, principal, request_id):
                    chunk = {**base, "choices": [choice(text, reason)]}
                    if reason is not None:
                        chunk["usage"] = _usage(output)
                    yield chunk

            return _sse(chunks())
        answer, last = await self.collect(request, outputs)
        answer = await self.screen_answer(answer, principal, request_id)
        return {**base, "choices": [choice(answer, last.finish_reason)], "usage": _usage(last)}

    async def retrieve(self, body: ChatBody, messages: list[dict[str, str]], principal: Principal,
                       request_id: str) -> tuple[list[dict[str, str]], list[Passage]]:  # fmt: skip
        """The conversation with the passages the caller may read (vetted by the guard) as data, and those passages."""
        assert body.rag is not None
        if self.retriever is None:
            raise ApiError(400, "rag: this server has no knowledge base", "invalid_request_error", param="rag")
        query = last_user_message(messages)
        if not query:
            raise ApiError(400, "rag: needs a user message to search for", "invalid_request_error", param="rag")
        try:
            passages = await to_side_thread(
                self.retriever.retrieve, query, body.rag.collection, body.rag.top_k, principal
            )
        except AccessDenied as exc:
            raise ApiError(403, str(exc), "permission_error", param="rag.collection") from None
        except KeyError:
            raise ApiError(404, f"rag.collection: no collection {body.rag.collection!r}", "invalid_request_error",
                           param="rag.collection", code="collection_not_found") from None  # fmt: skip
        if self.policy is None:
            return augment_messages(messages, passages), passages
        guarded = self.policy.guard_passages(
            [{"id": p.id, "source": p.source, "text": p.text} for p in passages], principal, request_id
        )
        kept_ids = {p.id for p in guarded.kept}
        kept = [p for p in passages if p.id in kept_ids]
        return augment_messages(messages, kept, context=guarded.context), kept

    async def chat(self, request: Request, principal: Principal) -> Any:
        """POST /v1/chat/completions."""
        body: ChatBody = await self.parse(request, ChatBody)
        self.check_model(body.model)
        messages = [m.model_dump() for m in body.messages]
        self.check_prompt_size(sum(len(m["content"]) for m in messages))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        await self.screen([(m["role"], m["content"]) for m in messages], principal, request_id)
        passages: list[Passage] = []
        if body.rag is not None:
            messages, passages = await self.retrieve(body, messages, principal, request_id)
        if self.tokenizer.chat_template is None:
            raise ApiError(400, "this model's tokenizer has no chat template", "invalid_request_error")
        try:
            prompt = self.tokenizer.encode_chat(messages, add_generation_prompt=True)
        except ValueError as exc:
            raise ApiError(400, f"messages: {exc}", "invalid_request_error", param="messages") from None
        max_tokens = self.check_length(prompt, body.max_completion_tokens or body.max_tokens)
        params = self.sampling(body, max_tokens)
        created = int(time.time())
        outputs = await self.started(prompt, params, request_id, principal)

        base: dict[str, Any] = {"id": request_id, "created": created, "model": self.settings.model_name}
        extra = {"citations": citations(passages)} if body.rag is not None else {}
        if body.stream:

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                first = True
                async for text, output, reason in self.guarded_stream(outputs, principal, request_id):
                    delta: dict[str, str] = {"content": text}
                    if first:
                        delta["role"] = "assistant"
                        first = False
                    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
                    chunk = {**base, "object": "chat.completion.chunk", "choices": [choice], **extra}
                    if reason is not None:
                        chunk["usage"] = _usage(output)
                    yield chunk

            return _sse(chunks())
        text, last = await self.collect(request, outputs)
        message = {"role": "assistant", "content": await self.screen_answer(text, principal, request_id)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": last.finish_reason}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(last), **extra}

    async def embeddings(self, request: Request) -> Any:
        """POST /v1/embeddings."""
        body: EmbeddingBody = await self.parse(request, EmbeddingBody)
        if self.embedder is None:
            raise ApiError(404, "no embedding model is configured on this server", "invalid_request_error",
                           param="model", code="model_not_found")  # fmt: skip
        if body.model != self.embedder.name:
            raise ApiError(404, f"the model {body.model!r} does not exist; embeddings use {self.embedder.name!r}",
                           "invalid_request_error", param="model", code="model_not_found")  # fmt: skip
        texts = [body.input] if isinstance(body.input, str) else body.input
        if len(texts) > self.settings.max_embedding_inputs:
            raise ApiError(400, f"input: at most {self.settings.max_embedding_inputs} texts per request, got "
                           f"{len(texts)}", "invalid_request_error", param="input")  # fmt: skip
        self.check_prompt_size(sum(len(t) for t in texts))
        vectors = await to_side_thread(self.embedder.embed, texts)
        return {
            "object": "list",
            "model": self.embedder.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    def models(self) -> dict[str, Any]:
        """GET /v1/models."""
        base = self.settings.model_name
        return {
            "object": "list",
            "data": [
                {"id": base, "object": "model", "created": 0, "owned_by": "jijian"},
                *(
                    {"id": name, "object": "model", "created": 0, "owned_by": "jijian", "parent": base}
                    for name in self.settings.adapters
                ),
            ],
        }

    def router(self, auth: HttpAuth) -> APIRouter:
        """The /v1 routes, each behind the authentication dependency."""
        router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
        caller = Depends(auth)

        @router.get("/models")
        async def models(principal: Principal = caller) -> dict[str, Any]:
            return self.models()

        @router.post("/completions", openapi_extra=body_schema(CompletionBody))
        async def completions(request: Request, principal: Principal = caller) -> Any:
            return await self.completions(request, principal)

        @router.post("/chat/completions", openapi_extra=body_schema(ChatBody))
        async def chat(request: Request, principal: Principal = caller) -> Any:
            return await self.chat(request, principal)

        @router.post("/embeddings", openapi_extra=body_schema(EmbeddingBody))
        async def embeddings(request: Request, principal: Principal = caller) -> Any:
            return await self.embeddings(request)

        return router
