"""What each dashboard page shows, as JSON-ready dicts: the HTML pages and the JSON endpoints share these."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import ANONYMOUS, Principal
from jijian.serve.cpu_threads import to_side_thread
from jijian.serve.dashboard import training
from jijian.serve.dashboard.guard_events import audit_view
from jijian.serve.dashboard.sources import DashboardSources

if TYPE_CHECKING:
    from jijian.serve.async_engine import AsyncEngine
    from jijian.serve.metrics import ServerMetrics
    from jijian.serve.rag import Retriever
    from jijian.serve.usage import UsageMeter


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a principal, or nobody on a deployment without API keys (then everything is visible)."""

    principal: Principal | None
    open_deployment: bool

    @property
    def is_admin(self) -> bool:
        """Admins and viewers of an open deployment see every user's data."""
        return self.open_deployment or (self.principal is not None and self.principal.is_admin)

    @property
    def name(self) -> str:
        """How the viewer is shown in the page header."""
        if self.principal is None:
            return "open deployment (no API keys configured)"
        roles = ", ".join(sorted(self.principal.roles))
        return f"{self.principal.user}" + (f" ({roles})" if roles else "")

    def to_json(self) -> dict[str, Any]:
        """The viewer as the JSON endpoints report it."""
        return {
            "user": self.principal.user if self.principal else None,
            "roles": sorted(self.principal.roles) if self.principal else [],
            "admin": self.is_admin,
            "open_deployment": self.open_deployment,
        }


def training_view(sources: DashboardSources) -> dict[str, Any]:
    """Every training run under `[train] output_dir` (runs hold no user data: every viewer sees them)."""
    runs = []
    for run_dir in training.find_runs(sources.train_dir):
        own_checkpoints = sources.checkpoint_dir if run_dir == sources.train_dir else None
        runs.append(training.read_run(run_dir, own_checkpoints))
    return {"train_dir": str(sources.train_dir) if sources.train_dir else None, "runs": runs}


def kb_view(sources: DashboardSources, viewer: Viewer, policy: GuardPolicy | None) -> dict[str, Any]:
    """The collections the viewer may search, with their counts, index type, metric and dimension."""
    if sources.kb is None:
        return {"available": False, "collections": []}
    collections = sources.kb.list_collections()
    if policy is not None:
        collections = [c for c in collections if policy.allowlists.may_use_collection(viewer.principal, c["name"])]
    return {"available": True, "collections": collections}


class SearchError(Exception):
    """A knowledge-base search the dashboard refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def kb_search(
    retriever: Retriever | None, viewer: Viewer, collection: str, query: str, k: int, policy: GuardPolicy | None = None
) -> list[dict[str, Any]]:
    """Search a collection as the viewer's principal (anonymous on an open deployment), through the server's
    retriever: ACLs apply, and the guard drops passages it judges to be injections."""
    from jijian.guard.allowlists import AccessDenied

    if retriever is None:
        raise SearchError(404, "this deployment has no knowledge base")
    if not query.strip():
        raise SearchError(400, "q: the query must not be empty")
    if not 1 <= k <= 50:
        raise SearchError(400, f"k: must be between 1 and 50, got {k}")
    try:
        principal = viewer.principal or ANONYMOUS
        passages = await to_side_thread(retriever.retrieve, query, collection, k, principal)
    except AccessDenied as exc:
        raise SearchError(403, str(exc)) from None
    except KeyError:
        raise SearchError(404, f"collection: no collection {collection!r}") from None
    if policy is not None:
        guarded = policy.guard_passages([{"id": p.id, "source": p.source, "text": p.text} for p in passages], principal)
        kept = {p.id for p in guarded.kept}
        passages = [p for p in passages if p.id in kept]
    return [{"id": p.id, "source": p.source, "score": p.score, "text": p.text} for p in passages]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def serving_view(
    engine: AsyncEngine, metrics: ServerMetrics, usage: UsageMeter, viewer: Viewer, currency: str
) -> dict[str, Any]:
    """Live server figures; the usage table holds every user for admins and only the viewer's own otherwise."""
    core = engine.engine
    stats = core.stats
    if viewer.is_admin:
        per_user = usage.all()
    else:
        assert viewer.principal is not None
        per_user = {viewer.principal.user: usage.of(viewer.principal.user)}
    return {
        "live_tokens_per_s": metrics.live_tokens_per_second(),
        "busy_tokens_per_s": metrics.tokens_per_second(),
        "latency": metrics.latency_percentiles(),
        "queue_depth": engine.queue_depth(),
        "running": core.num_running(),
        "batch_size": stats.last_batch_size,
        "kv_cache_usage": stats.kv_usage,
        "kv_cache_blocks": core.config.num_blocks,
        "generated_tokens": stats.generated_tokens,
        "cost_per_million_tokens": _finite(metrics.cost_per_million_tokens()),
        "currency": currency,
        "usage": per_user,
        "usage_scope": "all users" if viewer.is_admin else "your own usage",
    }


def guard_view(sources: DashboardSources, viewer: Viewer) -> dict[str, Any]:
    """The audit log's verification status and the recent events the viewer may see."""
    view = audit_view(sources.audit_log, None if viewer.is_admin else viewer.principal, key=sources.audit_key)
    view["scope"] = "all users" if viewer.is_admin else "your own requests"
    return view
