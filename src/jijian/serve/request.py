"""A generation request as the engine tracks it, and the sampling parameters a client chose."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from jijian.config.errors import UserInputError


class InvalidRequestError(UserInputError):
    """A request the engine cannot run (bad sampling parameters, prompt too long, ...)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; the defaults are greedy decoding of up to 16 tokens."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k truncation
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    adapter: str | None = None  # a LoRA adapter the server holds ([serve] adapters); None: the base model

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 1, "must be at least 1"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be between 0 and 100"),
            ("top_k", self.top_k >= 0, "must be 0 (off) or positive"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0.0, "must be positive"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise InvalidRequestError(f"{name} {why}, got {getattr(self, name)!r}", param=name)
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must be non-empty", param="stop")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature == 0.0 or self.top_k == 1


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """One sequence being generated: its tokens, progress through the KV cache, and stop state."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache (first admission only)
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    text: str = ""
    num_text_sent: int = 0
    first_token_time: float | None = None
    spec_token_ids: list[int] = field(default_factory=list)  # draft tokens to verify on the next decode step
    adapter_index: int | None = None  # the engine's index of params.adapter
    cache_salt: int | None = None  # prefix-cache hash seed: blocks are shared only under the same adapter

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt followed by everything generated so far (what a recompute must prefill)."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        """Prompt plus output length."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        """True once a stop condition was met or the request was aborted."""
        return self.status is RequestStatus.FINISHED
