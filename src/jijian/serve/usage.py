"""Per-principal usage metering: requests, prompt and completion tokens, and what they cost.

The server records every request that reached the engine under the caller's user name (or
`anonymous` on a deployment without API keys). Cost is the hardware rent attributed to the request's
generated tokens at the throughput measured when it finished (`[hardware]` price; None when unset),
the same figure `/metrics` reports as cost per million output tokens.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

ANONYMOUS = "anonymous"


@dataclass
class Usage:
    """What one user has consumed since the server started."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None


class UsageMeter:
    """Usage per user name, safe to update from the event loop and read from worker threads."""

    def __init__(self) -> None:
        self._usage: dict[str, Usage] = {}
        self._lock = threading.Lock()

    def record(self, user: str | None, prompt_tokens: int, completion_tokens: int, cost_per_million: float) -> None:
        """Add one request; `cost_per_million` output tokens may be NaN (no price configured)."""
        with self._lock:
            usage = self._usage.setdefault(user or ANONYMOUS, Usage())
            usage.requests += 1
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            if not math.isnan(cost_per_million):
                usage.cost = (usage.cost or 0.0) + completion_tokens * cost_per_million / 1e6

    def of(self, user: str | None) -> dict[str, Any]:
        """One user's usage as a JSON-ready dict (zeros for a user never seen)."""
        with self._lock:
            return asdict(self._usage.get(user or ANONYMOUS, Usage()))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every user's usage, by user name."""
        with self._lock:
            return {user: asdict(usage) for user, usage in sorted(self._usage.items())}
