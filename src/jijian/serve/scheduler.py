"""Continuous (iteration-level) batching under a per-step token budget, as in vLLM's v1 scheduler.

There is no separate prefill phase: every step each scheduled request advances by some tokens — a
decode step by one (plus the draft tokens it verifies under speculative decoding), a prompt by as
many as the budget allows (chunked prefill). Running requests go
first, in arrival order; when the cache runs out of blocks the most recently admitted running request
is preempted (its blocks freed, to be recomputed later from prompt + output so far). Waiting
requests are admitted while budget, sequence slots and blocks last.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from jijian.serve.kv_cache import KVCacheManager
from jijian.serve.request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    """What one engine step computes: requests in batch order and how many new tokens each gets."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        """Tokens in the batch (the model runner's row count)."""
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.requests)


class Scheduler:
    """Decides each step's batch; owns the waiting and running queues."""

    def __init__(self, kv_cache: KVCacheManager, *, max_num_seqs: int, max_batch_tokens: int) -> None:
        self.kv_cache = kv_cache
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_cached_tokens_total = 0  # prompt tokens served from the prefix cache, over all admissions

    def add(self, request: Request) -> None:
        """Queue a new request."""
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Drop a request from whichever queue holds it and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv_cache.free(request.request_id)

    def has_unfinished(self) -> bool:
        """True while any request waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Pick this step's batch."""
        batch = ScheduledBatch()
        budget = self.max_batch_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            self.kv_cache.release_out_of_window(request.request_id, request.num_computed_tokens)
            pending = request.num_tokens - request.num_computed_tokens
            drafts = len(request.spec_token_ids) if pending == 1 else 0  # only a decode step verifies drafts
            num_new = min(pending + drafts, budget)
            while not self.kv_cache.allocate(request.request_id, request.num_computed_tokens + num_new):
                if num_new > pending:  # drop the drafts before taking anyone's blocks
                    num_new = min(pending, budget)
                    continue
                victim = self.running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is request:
                    break
            else:
                batch.requests.append(request)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
                index += 1
                continue
            break  # the request itself was preempted; everything after it already was
        if batch.preempted:
            return batch  # no admissions in a step that had to give memory back
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            cached = self.kv_cache.find_cached_prefix(request.request_id, request.all_token_ids, request.cache_salt)
            self.kv_cache.release_out_of_window(request.request_id, cached)
            num_new = min(request.num_tokens - cached, budget)
            if not self.kv_cache.allocate(request.request_id, cached + num_new):
                # Give the prefix references back: a waiting request must not pin blocks others need.
                self.kv_cache.free(request.request_id)
                break
            request.num_computed_tokens = cached
            self.num_cached_tokens_total += cached
            if request.num_preemptions == 0:
                request.num_cached_tokens = cached
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            batch.requests.append(request)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        return batch

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request.request_id)
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
