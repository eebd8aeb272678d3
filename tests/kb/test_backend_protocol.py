"""One behavioural suite, run against the embedded store and the Milvus backend (milvus-lite)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jijian.config import KBConfig, UserInputError
from jijian.guard.principals import Principal
from jijian.kb.backend import CollectionNotFound, KBError, Record, open_knowledge_base

DIM = 8
_names = (f"c{i}" for i in itertools.count())


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def kb(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    config = KBConfig(path=root / "kb", backend=request.param, uri=str(root / "milvus.db"), index="flat")
    store = open_knowledge_base(config)
    yield store
    store.close()


def rows(n: int) -> list[Record]:
    rng = np.random.default_rng(1)
    return [
        Record(f"d{i}", rng.normal(size=DIM), f"text {i}", {"i": i, "tag": "ab"[i % 2], "nested": {"x": i % 5}},
               None if i % 3 == 0 else ["alice"])
        for i in range(n)
    ]  # fmt: skip


def exact(data: list[Record], query: np.ndarray, k: int, keep) -> list[str]:
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    scored = sorted(((float(unit(r.vector) @ unit(query)), r.id) for r in data if keep(r)), reverse=True)
    return [rid for _, rid in scored[:k]]


def test_crud(kb):
    name = next(_names)
    col = kb.create_collection(name, DIM)
    data = rows(30)
    col.insert(data)
    assert col.count() == 30
    got = col.get("d4")
    assert got.text == "text 4" and got.metadata == data[4].metadata and got.readers == ["alice"]
    assert np.allclose(
        got.vector / np.linalg.norm(got.vector), data[4].vector / np.linalg.norm(data[4].vector), atol=1e-5
    )
    with pytest.raises(KBError, match="already exists"):
        col.insert([data[0]])
    col.upsert([Record("d4", data[4].vector, "changed", {"i": 4})])
    assert col.get("d4").text == "changed" and col.count() == 30
    assert col.delete(["d5", "nope"]) == 1 and col.get("d5") is None and col.count() == 29
    assert col.search(data[5].vector, k=3)[0].id != "d5"
    assert name in [c["name"] for c in kb.list_collections()]
    kb.drop_collection(name)
    with pytest.raises(CollectionNotFound):
        kb.collection(name)


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


def test_bad_input(kb):
    col = kb.create_collection(next(_names), DIM)
    with pytest.raises(KBError, match="dimension 3"):
        col.insert([Record("x", [1.0, 2.0, 3.0])])
    with pytest.raises(UserInputError, match="filter"):
        col.search(np.ones(DIM), filter="i >")
    with pytest.raises(KBError, match="dimension 2"):
        col.search(np.ones(2))
    with pytest.raises(CollectionNotFound):
        kb.collection("does_not_exist")
    assert col.count() == 0


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
