"""Helpers of the HTTP trust-boundary tests: the real app over a tiny random model, keys in the one key ring."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from jijian.config.schema import GuardConfig
from jijian.guard.apikeys import KeyEntry, KeyRing, key_digest
from jijian.guard.http_auth import HttpAuth
from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal
from jijian.serve.async_engine import AsyncEngine
from jijian.serve.engine import EngineConfig, LLMEngine
from jijian.serve.rag import InMemoryRetriever, Passage

MODEL = "tiny"
ALICE = "jj-alice-key"  # finance
BOB = "jj-bob-key"  # staff
WRITER = "jj-writer-key"
ADMIN = "jj-admin-key"
PRINCIPALS = {
    ALICE: Principal("alice", frozenset({"finance"})),
    BOB: Principal("bob", frozenset({"staff"})),
    WRITER: Principal("wendy", frozenset({"writer"})),
    ADMIN: Principal("root", frozenset({"admin"})),
}
SECRET = "The finance plan moves 310 million to Project Heron in March."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keyring() -> KeyRing:
    return KeyRing([KeyEntry(principal, key_digest(key)) for key, principal in PRINCIPALS.items()])


class RecordingEngine(AsyncEngine):
    """An AsyncEngine that keeps the prompt token ids of every request it is given."""

    def __init__(self, engine: LLMEngine, **kwargs) -> None:
        super().__init__(engine, **kwargs)
        self.prompts: list[list[int]] = []

    def generate(self, request_id: str, prompt_token_ids: Sequence[int], params):  # type: ignore[override]
        self.prompts.append(list(prompt_token_ids))
        return super().generate(request_id, prompt_token_ids, params)


def passages() -> list[Passage]:
    return [
        Passage("hours", "facilities/hours.md", "The canteen serves lunch from noon to two.", 0.0),
        Passage("heron", "board/heron.md", SECRET, 0.0),
    ]


class AclRetriever(InMemoryRetriever):
    """In-memory passages with ACLs, filtered by the caller as the knowledge base filters them."""

    readers: ClassVar[dict[str, list[str] | None]] = {"hours": None, "heron": ["role:finance"]}

    def retrieve(self, query, collection, top_k, principal):
        from jijian.guard.principals import can_read

        found = super().retrieve(query, collection, top_k, principal)
        return [p for p in found if can_read(principal, self.readers.get(p.id))]


def make_app(
    tiny_model,
    tmp_path: Path,
    *,
    allow_anonymous: bool = False,
    collections: dict[str, list[Passage]] | None = None,
    guard: dict | None = None,
    dashboard: bool = False,
    embedder=None,
    max_model_len: int | None = None,
    **settings,
):
    """(app, engine, audit path) for a keyed deployment with a guard policy, an audit log and RAG passages."""
    from jijian.serve.api import ApiSettings, create_app
    from jijian.serve.dashboard import DashboardSources

    model, tokenizer = tiny_model
    audit = tmp_path / "audit.jsonl"
    policy = GuardPolicy(GuardConfig(audit_log=audit, **(guard or {})), keyring=keyring())
    auth = HttpAuth(keyring(), allow_anonymous=allow_anonymous,
                    rate_limit_per_minute=settings.pop("rate_limit_per_minute", None))  # fmt: skip
    config = EngineConfig(num_blocks=512, block_size=4, max_batch_tokens=256, max_model_len=max_model_len)
    engine = RecordingEngine(LLMEngine(model, tokenizer, config))
    retriever = AclRetriever(collections or {"wiki": passages()})
    sources = DashboardSources(name="sec", train_dir=tmp_path / "runs", audit_log=audit) if dashboard else None
    app = create_app(engine, tokenizer, ApiSettings(model_name=MODEL, **settings), auth=auth, retriever=retriever,
                     embedder=embedder, policy=policy, dashboard=sources)  # fmt: skip
    return app, engine, audit
