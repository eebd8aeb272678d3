"""The `KnowledgeBase` / `Collection` Protocol: one behavioural suite, run against both backends.

The embedded store and the Milvus backend (milvus-lite, one instance per module) must answer every
operation the same way; where they differ by design (lexical and hybrid search are embedded-only),
the test says so. A structural check compares each backend's methods with the Protocol's.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from jijian.config import KBConfig, UserInputError
from jijian.guard.principals import Principal
from jijian.kb.backend import (
    Collection,
    CollectionNotFound,
    KBError,
    KnowledgeBase,
    Record,
    open_knowledge_base,
)
from jijian.kb.milvus import MilvusCollection, MilvusKnowledgeBase
from jijian.kb.store import EmbeddedCollection, EmbeddedKnowledgeBase

DIM = 8
_names = (f"c{i}" for i in itertools.count())


@dataclass
class Backend:
    """A store of one backend that a test may close and open again on the same files."""

    name: str
    config: KBConfig
    kb: KnowledgeBase

    def reopen(self) -> KnowledgeBase:
        self.kb.close()
        self.kb = open_knowledge_base(self.config)
        return self.kb


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def backend(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    config = KBConfig(path=root / "kb", backend=request.param, uri=str(root / "milvus.db"), index="flat")
    held = Backend(request.param, config, open_knowledge_base(config))
    yield held
    held.kb.close()


@pytest.fixture
def kb(backend) -> KnowledgeBase:
    return backend.kb


def rows(n: int, start: int = 0) -> list[Record]:
    """Records d{start}..; each one's vector depends on its number only."""
    return [
        Record(f"d{i}", np.random.default_rng(i).normal(size=DIM), f"text {i}",
               {"i": i, "tag": "ab"[i % 2], "nested": {"x": i % 5}}, None if i % 3 == 0 else ["alice"])
        for i in range(start, start + n)
    ]  # fmt: skip


def exact(data: list[Record], query: np.ndarray, k: int, keep) -> list[str]:
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    scored = sorted(((float(unit(r.vector) @ unit(query)), r.id) for r in data if keep(r)), reverse=True)
    return [rid for _, rid in scored[:k]]


# -- structure ------------------------------------------------------------------------------------


KB_OPERATIONS = {"create_collection", "collection", "list_collections", "drop_collection", "close"}
COLLECTION_OPERATIONS = {
    "name", "dim", "insert", "upsert", "delete", "get", "count", "ids", "search", "source_hash", "replace_source",
    "restricted_records", "checkpoint", "close",
}  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "operations", "implementations"),
    [
        (KnowledgeBase, KB_OPERATIONS, [EmbeddedKnowledgeBase, MilvusKnowledgeBase]),
        (Collection, COLLECTION_OPERATIONS, [EmbeddedCollection, MilvusCollection]),
    ],
)
def test_each_backend_has_every_operation_with_the_protocols_signature(protocol, operations, implementations):
    members = [name for name in protocol.__dict__ if not name.startswith("_")]
    assert set(members) == operations  # what callers use, named once
    for implementation in implementations:
        for name in members:
            wanted = getattr(protocol, name)
            if isinstance(wanted, property):
                continue  # `name` and `dim`: plain attributes of an instance, checked by isinstance below
            got = getattr(implementation, name, None)
            assert callable(got), f"{implementation.__name__} lacks {name}()"
            expected = [(p.name, p.kind, p.default) for p in inspect.signature(wanted).parameters.values()]
            actual = [(p.name, p.kind, p.default) for p in inspect.signature(got).parameters.values()]
            assert actual == expected, f"{implementation.__name__}.{name}: {actual} != {expected}"


def test_instances_satisfy_the_protocols(kb):
    assert isinstance(kb, KnowledgeBase)
    col = kb.create_collection(next(_names), DIM)
    assert isinstance(col, Collection)
    assert isinstance(kb.collection(col.name), Collection)
    assert (col.name, col.dim) == (col.name, DIM)


# -- behaviour ------------------------------------------------------------------------------------


def test_crud(kb):
    name = next(_names)
    col = kb.create_collection(name, DIM)
    data = rows(30)
    assert col.insert(data) == [r.id for r in data]
    assert col.count() == 30 and sorted(col.ids()) == sorted(r.id for r in data)
    got = col.get("d4")
    assert got.text == "text 4" and got.metadata == data[4].metadata and got.readers == ["alice"]
    assert np.allclose(
        got.vector / np.linalg.norm(got.vector), data[4].vector / np.linalg.norm(data[4].vector), atol=1e-5
    )
    with pytest.raises(KBError, match="already exists"):
        col.insert([data[0]])
    col.upsert([Record("d4", data[4].vector, "changed", {"i": 4})])
    assert col.get("d4").text == "changed" and col.get("d4").readers is None and col.count() == 30
    assert col.delete(["d5", "nope"]) == 1 and col.get("d5") is None and col.count() == 29
    assert "d5" not in col.ids()
    assert col.search(data[5].vector, k=3)[0].id != "d5"
    generated = col.insert([Record(None, data[0].vector, "no id")])
    assert len(generated) == 1 and col.get(generated[0]).text == "no id"
    assert name in [c["name"] for c in kb.list_collections()]
    with pytest.raises(KBError, match="already exists"):
        kb.create_collection(name, DIM)
    kb.drop_collection(name)
    with pytest.raises(CollectionNotFound):
        kb.collection(name)
    with pytest.raises(CollectionNotFound):
        kb.drop_collection(name)


def test_search_filter_and_acl(kb):
    col = kb.create_collection(next(_names), DIM)
    data = rows(60)
    col.insert(data)
    query = data[7].vector
    assert [h.id for h in col.search(query, k=5)] == exact(data, query, 5, lambda r: True)
    expr = "tag == 'a' and i >= 10 and nested.x in [1, 2] and not i == 12"

    def keep(r: Record) -> bool:
        m = r.metadata
        return m["tag"] == "a" and m["i"] >= 10 and m["nested"]["x"] in (1, 2) and m["i"] != 12

    assert [h.id for h in col.search(query, k=10, filter=expr)] == exact(data, query, 10, keep)
    assert [h.id for h in col.search(query, k=4, filter="missing != 1")] == exact(data, query, 4, lambda r: True)
    bob = [h.id for h in col.search(query, k=10, principal=Principal("bob"))]
    assert bob == exact(data, query, 10, lambda r: r.readers is None)
    alice = [h.id for h in col.search(query, k=10, principal=Principal("alice"))]
    assert alice == exact(data, query, 10, lambda r: True)
    both = col.search(query, k=10, filter="tag == 'b'", principal=Principal("bob"))
    assert [h.id for h in both] == exact(data, query, 10, lambda r: r.readers is None and r.metadata["tag"] == "b")
    # vector_weight concerns hybrid fusion only; a vector search accepts it and ranks the same.
    assert [h.id for h in col.search(query, k=5, vector_weight=0.5)] == exact(data, query, 5, lambda r: True)
    scores = [h.score for h in col.search(query, k=10)]
    assert scores == sorted(scores, reverse=True)  # higher is better on every backend


def test_lexical_and_hybrid_are_embedded_only(backend):
    col = backend.kb.create_collection(next(_names), DIM)
    data = rows(12)
    col.insert(data)
    if backend.name == "milvus":
        for mode in ("lexical", "hybrid"):
            with pytest.raises(KBError, match="only vector search"):
                col.search(data[0].vector, k=3, mode=mode, text="text 3")
        return
    assert col.search(None, k=1, mode="lexical", text="3")[0].id == "d3"
    assert col.search(data[0].vector, k=1, mode="hybrid", text="text 0")[0].id == "d0"


def test_bad_input(kb):
    col = kb.create_collection(next(_names), DIM)
    with pytest.raises(KBError, match="dimension 3"):
        col.insert([Record("x", [1.0, 2.0, 3.0])])
    with pytest.raises(KBError, match="NaN"):
        col.insert([Record("x", [float("nan")] * DIM)])
    with pytest.raises(KBError, match="twice"):
        col.insert([Record("x", np.ones(DIM)), Record("x", np.ones(DIM))])
    with pytest.raises(KBError, match="metadata"):
        col.insert([Record("x", np.ones(DIM), metadata=["not", "an", "object"])])  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="filter"):
        col.search(np.ones(DIM), filter="i >")
    with pytest.raises(KBError, match="dimension 2"):
        col.search(np.ones(2))
    with pytest.raises(KBError, match="NaN"):
        col.search(np.full(DIM, np.inf))
    with pytest.raises(KBError, match="k must be"):
        col.search(np.ones(DIM), k=0)
    with pytest.raises(KBError, match="needs a query vector"):
        col.search(None)
    with pytest.raises(CollectionNotFound):
        kb.collection("does_not_exist")
    with pytest.raises(KBError, match="collection name"):
        kb.create_collection("../evil", DIM)
    with pytest.raises(KBError, match="dim"):
        kb.create_collection(next(_names), 0)
    assert col.count() == 0  # nothing half-written


def test_output_fields_choose_what_hits_carry(kb):
    col = kb.create_collection(next(_names), DIM)
    data = rows(20)
    col.insert(data)
    query = data[3].vector
    full = col.search(query, k=6)
    bare = col.search(query, k=6, output_fields=[])
    assert [(h.id, round(h.score, 4)) for h in bare] == [(h.id, round(h.score, 4)) for h in full]
    assert all(h.text == "" and h.metadata == {} and h.readers is None for h in bare)
    assert any(h.readers == ["alice"] for h in full)
    only_meta = col.search(query, k=6, filter="tag == 'a'", output_fields=["metadata"])
    assert only_meta and all(h.text == "" and h.metadata == data[int(h.id[1:])].metadata for h in only_meta)
    with pytest.raises(KBError, match="output_fields: unknown field 'vector'"):
        col.search(query, output_fields=["vector"])
    with pytest.raises(KBError, match="output_fields"):
        col.search(query, output_fields="text")


def test_source_bookkeeping_replaces_a_files_records(kb):
    name = next(_names)
    col = kb.create_collection(name, DIM)
    first, other = "/docs/手册.md", "/docs/other.md"
    assert col.source_hash(first) is None
    assert col.replace_source(first, "h1", rows(4)) == ["d0", "d1", "d2", "d3"]
    col.replace_source(other, "o1", rows(2, start=100))
    assert (col.source_hash(first), col.source_hash(other)) == ("h1", "o1")
    # The file changed and now has fewer chunks: the old ones go, the other file's stay.
    assert col.replace_source(first, "h2", rows(2, start=10)) == ["d10", "d11"]
    assert col.source_hash(first) == "h2"
    assert sorted(col.ids()) == ["d10", "d100", "d101", "d11"]
    assert all(col.get(f"d{i}") is None for i in range(4))
    assert col.search(rows(4)[0].vector, k=10, output_fields=[]) and "d0" not in {
        h.id for h in col.search(rows(4)[0].vector, k=10, output_fields=[])
    }
    # The bookkeeping belongs to the collection: another collection, or one made anew, knows nothing of it.
    assert kb.create_collection(next(_names), DIM).source_hash(first) is None
    kb.drop_collection(name)
    assert kb.create_collection(name, DIM).source_hash(first) is None


def test_restricted_records_are_those_with_readers(kb):
    col = kb.create_collection(next(_names), DIM)
    assert list(col.restricted_records()) == []
    data = rows(9)
    col.insert(data)
    col.upsert([Record("d1", data[1].vector, "now public")])
    expected = sorted((r.id, r.text, r.readers) for r in data if r.readers is not None and r.id != "d1")
    assert sorted(col.restricted_records()) == expected


def test_writes_persist_across_reopen(backend):
    name = next(_names)
    col = backend.kb.create_collection(name, DIM)
    data = rows(25)
    col.insert(data)
    col.delete(["d3"])
    source_vector = rows(1, start=200)[0].vector
    col.replace_source("/a.txt", "ha", [Record("s0", source_vector, "from a")])
    col.checkpoint()
    col.insert(rows(3, start=50))  # after the checkpoint: recovered by replay (embedded) or by Milvus
    kb = backend.reopen()
    again = kb.collection(name)
    assert again.count() == 24 + 1 + 3 and again.get("d3") is None and again.get("d51").text == "text 51"
    assert again.source_hash("/a.txt") == "ha"
    query = data[7].vector
    kept = [r for r in data if r.id != "d3"] + [Record("s0", source_vector)] + rows(3, start=50)
    assert [h.id for h in again.search(query, k=5)] == exact(kept, query, 5, lambda r: True)
    assert name in [c["name"] for c in kb.list_collections()]


def test_threads_may_share_a_collection(backend):
    """Writers and readers on one collection object at once: every write lands, every read is whole."""
    col = backend.kb.create_collection(next(_names), DIM)
    base = rows(20, start=1000)
    col.insert(base)
    errors: list[BaseException] = []
    writers, batches, per_batch = 3, 6, 5

    def write(worker: int) -> None:
        try:
            for batch in range(batches):
                start = worker * 100 + batch * per_batch
                col.insert(rows(per_batch, start=start))
                col.upsert([Record(f"d{start}", np.ones(DIM), "upserted", {"i": start})])
                col.delete([f"d{start + 1}"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        try:
            for i in range(30):
                query = base[i % len(base)].vector
                assert len(col.search(query, k=5, output_fields=[])) == 5
                assert len(col.search(query, k=5, filter="tag == 'a'", principal=Principal("bob"))) > 0
                col.count()
                col.ids()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    expected = len(base) + writers * batches * (per_batch - 1)
    assert col.count() == expected and len(set(col.ids())) == expected
    for worker in range(writers):
        start = worker * 100
        assert col.get(f"d{start}").text == "upserted" and col.get(f"d{start + 1}") is None
        assert col.search(rows(1, start=start + 2)[0].vector, k=1)[0].id == f"d{start + 2}"
    if isinstance(col, EmbeddedCollection):
        assert col.index.size - len(col.tombstones) == col.count()  # the index agrees with SQLite
