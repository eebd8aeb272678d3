"""The guard's audit log as the dashboard shows it: recent events, blocked requests, chain verification."""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

from jijian.guard.audit import AuditVerdict, verify_audit
from jijian.guard.principals import Principal

RECENT = 100
# Verifying re-reads the whole chain: remember the verdict until the log or its tip file changes.
_verdicts: dict[tuple[Path, bytes | None], tuple[tuple[int, ...], AuditVerdict]] = {}
_verdicts_lock = threading.Lock()


def cached_verdict(path: Path, key: bytes | None = None) -> AuditVerdict:
    """`verify_audit(path, key)`, recomputed only when the log's or its tip's size or modification time changed."""
    tip = path.with_name(path.name + ".tip")
    stamp = tuple(
        value for p in (path, tip) for value in ((p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (-1, -1))
    )
    with _verdicts_lock:
        known = _verdicts.get((path, key))
        if known is not None and known[0] == stamp:
            return known[1]
    verdict = verify_audit(path, key)
    with _verdicts_lock:
        _verdicts[(path, key)] = (stamp, verdict)
    return verdict


def _blocked(event: dict[str, Any]) -> bool:
    """A refused request, a withheld response, or a retrieved passage dropped as an injection."""
    kind = event.get("type")
    return (
        (kind == "request" and event.get("allowed") is False)
        or (kind == "response" and event.get("blocked") is True)
        or kind == "passage_dropped"
    )


def _visible(event: dict[str, Any], principal: Principal | None) -> bool:
    """Admins (and open deployments) see every event; a user sees only events about themself."""
    return principal is None or principal.is_admin or event.get("user") == principal.user


def audit_view(
    path: Path | None, principal: Principal | None, limit: int = RECENT, key: bytes | None = None
) -> dict[str, Any]:
    """Verification status of the audit log and its latest events the viewer may see, newest first."""
    if path is None:
        return {"configured": False, "exists": False, "verification": None, "events": [], "blocked": []}
    if not path.is_file():
        return {
            "configured": True,
            "path": str(path),
            "exists": False,
            "verification": None,
            "events": [],
            "blocked": [],
        }
    verdict = cached_verdict(path, key)
    recent: deque[dict[str, Any]] = deque(maxlen=limit)
    blocked: deque[dict[str, Any]] = deque(maxlen=limit)
    totals = {"events": 0, "blocked": 0}
    # Streamed line by line: an audit log grows without bound, only the tail is kept in memory.
    with path.open("rb") as f:
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            event = entry.get("event") if isinstance(entry, dict) else None
            if not isinstance(event, dict) or not _visible(event, principal):
                continue
            row = {"seq": entry.get("seq"), "ts": entry.get("ts"), **event}
            totals["events"] += 1
            recent.append(row)
            if _blocked(event):
                totals["blocked"] += 1
                blocked.append(row)
    return {
        "configured": True,
        "path": str(path),
        "exists": True,
        "verification": {
            "ok": verdict.ok,
            "entries": verdict.entries,
            "bad_line": verdict.bad_line,
            "reason": verdict.reason,
        },
        "totals": totals,
        "events": list(reversed(recent)),
        "blocked": list(reversed(blocked)),
    }
