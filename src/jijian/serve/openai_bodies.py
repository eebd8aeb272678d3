"""Request bodies of the OpenAI-compatible API, every field bounded so a hostile value fails at the door.

Ranges follow OpenAI's where it documents one (temperature 0..2, penalties -2..2, logit_bias -100..100);
fields jijian does not implement are accepted only at their neutral value, with an error naming them
otherwise, so a client never silently gets different sampling from what it asked for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes [-2**63, 2**64)
MIN_SEED = -(2**63)
MAX_STOP_CHARS = 256
MAX_MESSAGES = 1024
MAX_NAME_CHARS = 256


class _Strict(BaseModel):
    # NaN and infinities are not numbers a sampler can use (Python's json module accepts them).
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class SamplingBody(_Strict):
    """The sampling fields shared by completions and chat completions."""

    model: str = Field(max_length=MAX_NAME_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=2**20)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=2**20)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=300)
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    stop: str | list[str] | None = Field(default=None)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False  # extension (as in vLLM): generate exactly max_tokens, for benchmarks
    user: str | None = Field(default=None, max_length=MAX_NAME_CHARS)

    @model_validator(mode="after")
    def _supported(self) -> SamplingBody:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise ValueError(f"{name}: not supported by this server (use repetition_penalty); send 0 or omit it")
        if self.logit_bias:
            for token, bias in self.logit_bias.items():
                if not token.isdigit() or not -100.0 <= bias <= 100.0:
                    raise ValueError("logit_bias: keys must be token ids and values in [-100, 100]")
            raise ValueError("logit_bias: not supported by this server; omit it")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop: each stop string must have 1 to {MAX_STOP_CHARS} characters")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionBody(SamplingBody):
    """POST /v1/completions."""

    prompt: str | list[int] = Field(min_length=1)


class ChatMessage(_Strict):
    """One chat turn."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class RagOptions(BaseModel):
    """The `rag` extension of chat completions."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    top_k: int = Field(default=4, ge=1, le=50)


class ChatBody(SamplingBody):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**20)
    rag: RagOptions | None = None


class EmbeddingBody(_Strict):
    """POST /v1/embeddings."""

    model: str = Field(max_length=MAX_NAME_CHARS)
    input: str | list[str] = Field(min_length=1)
