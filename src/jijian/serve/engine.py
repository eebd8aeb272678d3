"""The engine core: scheduler + KV-cache manager + model runner + sampler, driven one step at a time.

It knows nothing about HTTP: `serve.async_engine` runs `step()` in a background thread and
`serve.api` talks to that. Each step schedules a batch, runs it, samples the requests whose prompt is
fully computed, detokenises, applies stop conditions and reports what changed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from jijian.model.llama import CausalLM
from jijian.model.tokenizer import Tokenizer
from jijian.serve.kv_cache import KVCacheManager
from jijian.serve.request import InvalidRequestError, Request, RequestStatus, SamplingParams
from jijian.serve.runner import ModelRunner
from jijian.serve.sampler import Sampler
from jijian.serve.scheduler import Scheduler
from jijian.serve.spec_decode import NgramProposer


@dataclass(frozen=True)
class EngineConfig:
    """Capacity limits of one engine."""

    max_num_seqs: int = 64
    max_batch_tokens: int = 2048
    block_size: int = 16
    num_blocks: int = 1024
    max_model_len: int | None = None  # None: the model's max_seq_len
    enable_prefix_caching: bool = True
    num_speculative_tokens: int = 0  # n-gram drafts verified per decode step; 0: one token at a time
    ngram_range: tuple[int, int] = (2, 4)  # shortest and longest tail the proposer matches
    # Pure decode steps: "auto" (CUDA graphs on CUDA, the static-shape path for small batches on the CPU),
    # "on" (torch.compile on the CPU), "off" (the dynamic path), or a path by name (runner.DECODE_PATHS).
    compile_decode: str = "auto"
    # CPU, quantised weights: steps with more rows than this (prompt chunks, large decode batches) multiply a
    # float copy of the int4/int8 weights instead, where the packed quantised kernels' cost grows with every
    # row; 0 keeps every step on the quantised kernels (and no copy in memory).
    dense_above_rows: int = 0


@dataclass
class RequestOutput:
    """What a step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    error: str | None = None  # set when this request alone failed (finish_reason "error"); others carry on


@dataclass
class EngineStats:
    """Counters since start, and gauges of the last step (read by the metrics endpoint)."""

    steps: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_cached: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    last_batch_size: int = 0
    last_batch_tokens: int = 0
    kv_usage: float = 0.0
    busy_seconds: float = 0.0
    draft_tokens: int = 0  # speculative tokens verified
    accepted_tokens: int = 0  # ... and kept


class LLMEngine:
    """Continuous-batching generation over a paged KV cache for one model."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Tokenizer | None,
        config: EngineConfig | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        runner: ModelRunner | None = None,
    ) -> None:
        """`adapters` maps names to PEFT LoRA directories a request can pick through `SamplingParams.adapter`;
        `runner` replaces the default single-process runner (the tensor-parallel one passes its own)."""
        self.config = config or EngineConfig()
        cfg = self.config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_model_len = min(cfg.max_model_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.kv_cache = KVCacheManager(
            cfg.num_blocks,
            cfg.block_size,
            enable_prefix_caching=cfg.enable_prefix_caching,
            sliding_window=model.cfg.sliding_window,
        )
        self.scheduler = Scheduler(self.kv_cache, max_num_seqs=cfg.max_num_seqs, max_batch_tokens=cfg.max_batch_tokens)
        if runner is not None and adapters:
            raise ValueError("LoRA adapters are served by the single-process runner only")
        self.runner = runner if runner is not None else ModelRunner(
            model, cfg.num_blocks, cfg.block_size, adapters,
            decode=cfg.compile_decode, max_num_seqs=cfg.max_num_seqs, max_model_len=self.max_model_len,
            dense_above_rows=cfg.dense_above_rows,
        )  # fmt: skip
        self.adapter_names = list(adapters or {})
        self.sampler = Sampler(self.runner.device)
        self.proposer = (
            NgramProposer(cfg.num_speculative_tokens, *cfg.ngram_range) if cfg.num_speculative_tokens > 0 else None
        )
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._ids = itertools.count()

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's end-of-sequence id, which stops generation unless ignore_eos is set."""
        return self.tokenizer.eos_id if self.tokenizer is not None else None

    def num_waiting(self) -> int:
        """Requests queued but not yet admitted (or preempted)."""
        return len(self.scheduler.waiting)

    def num_running(self) -> int:
        """Requests holding KV-cache blocks."""
        return len(self.scheduler.running)

    def has_unfinished(self) -> bool:
        """True while any request is queued or running."""
        return self.scheduler.has_unfinished()

    def check_request(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise InvalidRequestError if this request can never run on this engine."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if params.adapter is not None and params.adapter not in self.adapter_names:
            raise InvalidRequestError(
                f"no adapter {params.adapter!r}; this server holds {self.adapter_names or 'none'}", param="model"
            )
        vocab = self.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        total = len(prompt_token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise InvalidRequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request needs "
                f"{total} ({len(prompt_token_ids)} in the prompt + {params.max_tokens} max_tokens)",
                param="max_tokens" if len(prompt_token_ids) < self.max_model_len else "prompt",
                code="context_length_exceeded",
            )
        capacity = self.config.num_blocks * self.config.block_size
        needed = self.kv_cache_tokens_needed(total)
        if needed > capacity:
            raise InvalidRequestError(
                f"the request needs {needed} tokens of KV cache; the server holds {capacity}",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def kv_cache_tokens_needed(self, total_tokens: int) -> int:
        """Cache slots a request of `total_tokens` holds at its peak.

        Under a sliding window the blocks behind the window are given back as it advances, so the peak
        is the window, one step's tokens and a partial block at either end — not the whole context.
        """
        window = self.model.cfg.sliding_window
        if window is None:
            return total_tokens
        return min(total_tokens, window + self.config.max_batch_tokens + 2 * self.config.block_size)

    def add_request(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> Request:
        """Validate and queue a request; it starts on the next step that has room for it."""
        self.check_request(prompt_token_ids, params)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        request = Request(request_id, list(prompt_token_ids), params, eos_token_id=self.eos_token_id)
        if params.adapter is not None and self.runner.adapters is not None:
            request.adapter_index = self.runner.adapters.index(params.adapter)
            request.cache_salt = self.runner.adapters.salts[params.adapter]
        self.requests[request_id] = request
        self.scheduler.add(request)
        return request

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its blocks (a client went away); False if it was not live."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return False
        request.status = RequestStatus.FINISHED
        request.finish_reason = "abort"
        self._release(request)
        return True

    def step(self) -> list[RequestOutput]:
        """Run one iteration of continuous batching; returns the requests that advanced."""
        batch = self.scheduler.schedule()
        self.stats.preemptions += len(batch.preempted)
        if not batch:
            return []
        began = time.perf_counter()
        token_lists, starts, tables, logits_counts, drafts = [], [], [], [], []
        for request, num_new in zip(batch.requests, batch.num_new_tokens, strict=True):
            start = request.num_computed_tokens
            tokens = request.all_token_ids
            pending = len(tokens) - start
            draft = request.spec_token_ids[: num_new - pending] if num_new > pending else []
            token_lists.append(tokens[start:] + draft if draft else tokens[start : start + num_new])
            starts.append(start)
            tables.append(self.kv_cache.block_ids(request.request_id))
            logits_counts.append(1 + len(draft) if num_new >= pending else 0)
            drafts.append(draft)
            if start < len(request.prompt_token_ids):
                self.stats.prompt_tokens_computed += min(num_new, len(tokens) - start)
        # With only prompt chunks in the batch the pass still runs, to write their KV entries.
        adapter_ids = [r.adapter_index for r in batch.requests] if self.runner.adapters is not None else None
        logits = self.runner.execute(token_lists, starts, tables, logits_counts, adapter_ids)
        new_tokens = self._pick_tokens(logits, batch.requests, logits_counts, drafts)
        outputs = []
        now = time.monotonic()
        for request, num_new, draft, tokens in zip(
            batch.requests, batch.num_new_tokens, drafts, new_tokens, strict=True
        ):
            failure = self.sampler.failures.pop(request.request_id, None)
            try:
                if failure is not None:
                    raise failure
                # Drafts the model rejected hold KV entries past the computed length: overwritten next step.
                request.num_computed_tokens += num_new - len(draft) + len(tokens) - 1 if draft else num_new
                computed_ids = request.all_token_ids + tokens[:-1] if draft else request.all_token_ids
                self.kv_cache.cache_full_blocks(request.request_id, computed_ids, request.num_computed_tokens)
                if tokens:
                    outputs.append(self._append_tokens(request, tokens, now))
            except Exception as exc:  # one request's failure must not stop the batch
                outputs.append(self._fail(request, exc))
        self._propose_drafts(outputs)
        elapsed = time.perf_counter() - began
        self.stats.steps += 1
        self.stats.busy_seconds += elapsed
        self.stats.last_batch_size = len(batch.requests)
        self.stats.last_batch_tokens = batch.total_tokens
        self.stats.kv_usage = self.kv_cache.usage()
        self.stats.generated_tokens += sum(len(o.new_token_ids) for o in outputs)
        self.stats.prompt_tokens_cached = self.scheduler.num_cached_tokens_total
        return outputs

    def _pick_tokens(
        self,
        logits: torch.Tensor,
        requests: Sequence[Request],
        logits_counts: Sequence[int],
        drafts: Sequence[list[int]],
    ) -> list[list[int]]:
        """The tokens each request gains this step: none, one sampled, or accepted drafts plus one.

        A request with drafts is greedy (the proposer drafts for no other), so it keeps its drafts up
        to the first one that differs from the argmax at that position, and then the argmax there.
        """
        offsets = list(itertools.accumulate(logits_counts, initial=0))
        sampling = [i for i, d in enumerate(drafts) if logits_counts[i] and not d]
        picked: list[list[int]] = [[] for _ in requests]
        if sampling:
            last_rows = torch.as_tensor([offsets[i + 1] - 1 for i in sampling], dtype=torch.long, device=logits.device)
            sampled = self.sampler.sample(logits[last_rows], [requests[i] for i in sampling])
            for i, token in zip(sampling, sampled, strict=True):
                picked[i] = [token]
        verifying = [i for i, d in enumerate(drafts) if d]
        if verifying:
            argmax = logits.argmax(dim=-1).tolist()
            for i in verifying:
                predicted = argmax[offsets[i] : offsets[i + 1]]
                accepted = 0
                while accepted < len(drafts[i]) and drafts[i][accepted] == predicted[accepted]:
                    accepted += 1
                picked[i] = predicted[: accepted + 1]
                self.stats.draft_tokens += len(drafts[i])
                self.stats.accepted_tokens += accepted
        return picked

    def _propose_drafts(self, outputs: Sequence[RequestOutput]) -> None:
        """Draft the next step's speculative tokens for the greedy requests that advanced."""
        if self.proposer is None:
            return
        for output in outputs:
            request = self.requests.get(output.request_id)
            if request is None or output.finished:
                continue
            params = request.params
            request.spec_token_ids = []
            if params.greedy and params.repetition_penalty == 1.0:
                # Never draft past max_tokens or the context: the token after the drafts comes too.
                room = min(params.max_tokens - len(request.output_token_ids), self.max_model_len - request.num_tokens)
                request.spec_token_ids = self.proposer.propose(request.request_id, request.all_token_ids, room - 1)

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[list[int]]:
        """Run prompts to completion together (offline batch use and tests); returns each one's new tokens."""
        param_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        requests = [self.add_request(p, sp) for p, sp in zip(prompts, param_list, strict=True)]
        while any(not r.finished for r in requests):
            self.step()
        return [list(r.output_token_ids) for r in requests]

    def _append_tokens(self, request: Request, tokens: Sequence[int], now: float) -> RequestOutput:
        """Append new tokens in order until one ends the request; the rest are dropped."""
        if request.first_token_time is None:
            request.first_token_time = now
        params = request.params
        reason = None
        kept = []
        for token in tokens:
            request.output_token_ids.append(token)
            kept.append(token)
            hit_eos = not params.ignore_eos and token == request.eos_token_id
            if hit_eos or token in params.stop_token_ids:
                reason = "stop"
            elif len(request.output_token_ids) >= params.max_tokens or request.num_tokens >= self.max_model_len:
                reason = "length"
            if reason is not None:
                break
        delta, stop_reason = self._detokenize(request, final=reason is not None)
        reason = stop_reason or reason
        if reason is not None:
            request.status = RequestStatus.FINISHED
            request.finish_reason = reason
            self._release(request)
        return RequestOutput(
            request_id=request.request_id,
            new_token_ids=kept,
            text_delta=delta,
            finished=reason is not None,
            finish_reason=reason,
            prompt_tokens=len(request.prompt_token_ids),
            completion_tokens=len(request.output_token_ids),
            cached_tokens=request.num_cached_tokens,
        )

    def _fail(self, request: Request, exc: Exception) -> RequestOutput:
        """End one request with an error (its sampling or detokenizing raised); the batch goes on without it."""
        request.status = RequestStatus.FINISHED
        request.finish_reason = "error"
        self._release(request)
        return RequestOutput(
            request_id=request.request_id, new_token_ids=[], text_delta="", finished=True, finish_reason="error",
            prompt_tokens=len(request.prompt_token_ids), completion_tokens=len(request.output_token_ids),
            cached_tokens=request.num_cached_tokens, error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip

    def _release(self, request: Request) -> None:
        """Forget a finished or aborted request everywhere; its blocks go back to the cache."""
        self.scheduler.remove(request)
        self.sampler.forget(request.request_id)
        if self.proposer is not None:
            self.proposer.forget(request.request_id)
        self.requests.pop(request.request_id, None)

    def _detokenize(self, request: Request, final: bool) -> tuple[str, str | None]:
        """New text since the last call, held back while it may still become a stop string or a partial character."""
        if self.tokenizer is None:
            return "", None
        text = self.tokenizer.decode(request.output_token_ids)
        stops = request.params.stop
        stop_reason = None
        if stops:
            search_from = max(0, request.num_text_sent - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
            if hits:
                text = text[: min(hits)]
                stop_reason = "stop"
        request.text = text
        end = len(text)
        if not final and stop_reason is None:
            if stops:
                end = max(request.num_text_sent, end - (max(len(s) for s in stops) - 1))
            while end > request.num_text_sent and text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                end -= 1
        delta = text[request.num_text_sent : end]
        request.num_text_sent = end
        return delta, stop_reason
