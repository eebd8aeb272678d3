"""A bound on what one audit entry may hold, so a huge prompt cannot fill the disk through the audit log."""

from __future__ import annotations

from typing import Any

TRUNCATED = "…[truncated {n} characters]"


def cap_event(event: Any, max_chars: int) -> Any:
    """`event` with every string longer than `max_chars` cut (marked with how much was cut), lists cut to 1000."""
    if isinstance(event, str):
        return event if len(event) <= max_chars else event[:max_chars] + TRUNCATED.format(n=len(event) - max_chars)
    if isinstance(event, dict):
        return {str(k)[:256]: cap_event(v, max_chars) for k, v in event.items()}
    if isinstance(event, list | tuple):
        return [cap_event(v, max_chars) for v in list(event)[:1000]]
    return event
