"""The embedded collection store: CRUD, filtered / ACL / lexical / hybrid search, durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jijian.config import UserInputError
from jijian.guard.principals import Principal
from jijian.kb.store import CollectionNotFound, EmbeddedKnowledgeBase, Hit, KBError, Record, SearchOptions

DIM = 16
WORDS = ["cat", "dog", "fish", "bird", "lion", "wolf", "bear", "frog"]


def records(n: int, seed: int = 0, start: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [
        Record(
            id=f"doc{i}",
            vector=rng.normal(size=DIM),
            text=f"a note about the {WORDS[i % len(WORDS)]} number {i}",
            metadata={"i": i, "group": WORDS[i % 4], "even": i % 2 == 0},
            readers=None if i % 3 == 0 else (["alice"] if i % 3 == 1 else ["role:staff"]),
        )
        for i in range(start, start + n)
    ]


def brute_force(rows: list[Record], query: np.ndarray, k: int, keep=lambda r: True) -> list[str]:
    unit = lambda v: np.asarray(v) / np.linalg.norm(v)  # noqa: E731
    scored = sorted((float(unit(r.vector) @ unit(query)), r.id) for r in rows if keep(r))
    return [rid for _, rid in reversed(scored)][:k]


@pytest.fixture(params=["flat", "hnsw", "ivf_flat"])
def kb_and_index(request, tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path / "kb", SearchOptions(exact_below=20))
    yield kb, request.param
    kb.close()


def test_crud_round_trip(kb_and_index):
    kb, index = kb_and_index
    col = kb.create_collection("notes", DIM, index=index)
    rows = records(60)
    assert col.insert(rows) == [r.id for r in rows]
    assert col.count() == 60
    got = col.get("doc7")
    assert got.text == rows[7].text and got.metadata == rows[7].metadata and got.readers == ["alice"]
    with pytest.raises(KBError, match="already exists"):
        col.insert([rows[0]])
    col.upsert([Record("doc7", rows[8].vector, "replaced", {"i": -1})])
    assert col.get("doc7").text == "replaced" and col.count() == 60
    assert col.delete(["doc1", "doc2", "missing"]) == 2
    assert col.get("doc1") is None and col.count() == 58
    hits = col.search(rows[1].vector, k=5)
    assert "doc1" not in [h.id for h in hits] and len(hits) == 5
    generated = col.insert([Record(None, rows[0].vector, "no id")])[0]
    assert col.get(generated).text == "no id"
    assert [c["name"] for c in kb.list_collections()] == ["notes"]
    kb.drop_collection("notes")
    with pytest.raises(CollectionNotFound):
        kb.collection("notes")


def test_search_ranks_like_brute_force(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    col = kb.create_collection("c", DIM, index="flat")
    rows = records(200)
    col.insert(rows)
    query = np.random.default_rng(9).normal(size=DIM)
    assert [h.id for h in col.search(query, k=10)] == brute_force(rows, query, 10)


def test_bad_input_names_the_problem(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    col = kb.create_collection("c", DIM)
    with pytest.raises(KBError, match="dimension 3, collection 'c' expects 16"):
        col.insert([Record("x", [1.0, 2.0, 3.0])])
    with pytest.raises(KBError, match="NaN"):
        col.insert([Record("x", [float("nan")] * DIM)])
    with pytest.raises(UserInputError, match="readers"):
        col.insert([Record("x", np.ones(DIM), readers="alice")])
    with pytest.raises(UserInputError, match="filter"):
        col.search(np.ones(DIM), filter="i >")
    with pytest.raises(KBError, match="collection name"):
        kb.create_collection("../evil", DIM)
    assert col.count() == 0  # nothing half-written


@pytest.mark.parametrize("exact_below", [0, 10_000])
def test_selective_filter_returns_k_when_k_match(tmp_path, exact_below):
    kb = EmbeddedKnowledgeBase(tmp_path, SearchOptions(exact_below=exact_below))
    col = kb.create_collection("c", DIM, index="hnsw")
    rows = records(600)
    col.insert(rows)
    query = rows[0].vector
    expr = "i >= 100 and i < 112 and not even == true"  # 6 matches among 600
    hits = col.search(query, k=10, filter=expr)
    expected = brute_force(rows, query, 10, lambda r: 100 <= r.metadata["i"] < 112 and r.metadata["i"] % 2)
    assert [h.id for h in hits] == expected and len(hits) == 6
    hits = col.search(query, k=10, filter="group in ['cat', 'dog'] or i == 3")
    assert len(hits) == 10 and all(h.metadata["group"] in ("cat", "dog") or h.metadata["i"] == 3 for h in hits)


def test_acl_is_applied_inside_retrieval(kb_and_index):
    kb, index = kb_and_index
    col = kb.create_collection("c", DIM, index=index)
    rows = records(90)
    col.insert(rows)
    query = rows[1].vector  # readable by alice only
    bob, alice, staff, admin = (
        Principal("bob"),
        Principal("alice"),
        Principal("carol", {"staff"}),
        Principal("root", {"admin"}),
    )
    bob_hits = col.search(query, k=10, principal=bob)
    assert len(bob_hits) == 10 and all(h.readers is None for h in bob_hits)
    assert bob_hits and [h.id for h in bob_hits] == brute_force(rows, query, 10, lambda r: r.readers is None)
    assert col.search(query, k=1, principal=alice)[0].id == "doc1"
    assert all(h.readers in (None, ["role:staff"]) for h in col.search(query, k=30, principal=staff))
    assert len(col.search(query, k=90, principal=admin)) == 90
    lexical = col.search(text="cat dog", k=50, mode="lexical", principal=bob)
    assert lexical and all(h.readers is None for h in lexical)


def test_lexical_and_hybrid_modes(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    col = kb.create_collection("c", DIM, index="flat")
    rows = records(80)
    col.insert(rows)
    lexical = col.search(text="wolf", k=5, mode="lexical")
    assert len(lexical) == 5 and all("wolf" in h.text for h in lexical)
    hybrid = col.search(rows[13].vector, text="wolf", k=5, mode="hybrid")  # doc13 is a wolf and the vector match
    assert hybrid[0].id == "doc13"
    with pytest.raises(KBError, match="needs the query text"):
        col.search(rows[0].vector, mode="hybrid")
    with pytest.raises(KBError, match="mode 'fuzzy'"):
        col.search(rows[0].vector, mode="fuzzy")


def test_ivf_trains_once_enough_rows_and_compaction_drops_tombstones(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    from jijian.kb.vector_index import IndexParams

    kb.defaults = IndexParams(kind="ivf_flat", nlist=4, nprobe=4)
    col = kb.create_collection("c", DIM)
    col.insert(records(100))
    assert col.index.needs_training
    col.insert(records(200, start=100))
    assert not col.index.needs_training and col.index.size == 300
    col.delete([f"doc{i}" for i in range(10)])
    assert col.index.size == 300 and len(col.tombstones) == 10
    assert "doc3" not in [h.id for h in col.search(records(4)[3].vector, k=20)]
    col.delete([f"doc{i}" for i in range(10, 80)])  # > 25% tombstones: compacts
    assert col.index.size == 220 and not col.tombstones
    kb.close()
    reopened = EmbeddedKnowledgeBase(tmp_path).collection("c")
    assert reopened.count() == 220 and reopened.index.size == 220 and not reopened.index.needs_training


WRITER = """
import sys, numpy as np
from jijian.kb.store import EmbeddedKnowledgeBase, Record, SearchOptions
kb = EmbeddedKnowledgeBase(sys.argv[1], SearchOptions(checkpoint_rows=7))
col = kb.collection("c")
rng = np.random.default_rng(0)
i = 0
while True:
    col.insert([Record(f"r{i}", rng.normal(size=16), f"row {i}", {"i": i})])
    if i % 5 == 4:
        col.delete([f"r{i - 2}"])
        print(f"del r{i - 2}", flush=True)
    print(f"ack r{i}", flush=True)
    i += 1
"""


def test_kill_9_loses_no_acknowledged_insert(tmp_path):
    EmbeddedKnowledgeBase(tmp_path).create_collection("c", DIM, index="hnsw")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acked, deleted = [], set()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        kind, rid = proc.stdout.readline().split()
        (acked.append if kind == "ack" else deleted.add)(rid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) == 60
    col = EmbeddedKnowledgeBase(tmp_path).collection("c")
    alive = [rid for rid in acked if rid not in deleted]
    assert col.count() >= len(alive)  # the insert in flight may have committed before the kill
    for rid in alive:
        record = col.get(rid)
        assert record is not None, rid
        assert col.search(record.vector, k=1)[0].id == rid
    assert all(col.get(rid) is None for rid in deleted)
    assert col.index.size - len(col.tombstones) == col.count()  # index consistent with SQLite


def test_directory_layout(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    kb.create_collection("c", DIM).insert(records(5))
    kb.close()
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"collection.json", "rows.sqlite", "index.faiss"}
    assert isinstance(Path(tmp_path / "c" / "rows.sqlite").stat().st_size, int)


def test_batch_search_equals_single_searches(tmp_path):
    col = EmbeddedKnowledgeBase(tmp_path).create_collection("c", DIM, index="hnsw")
    rows = records(120)
    col.insert(rows)
    col.delete(["doc3"])
    queries = np.stack([rows[i].vector for i in (3, 10, 50)])
    batched = col.search_batch(queries, k=4)
    assert [[h.id for h in hits] for hits in batched] == [[h.id for h in col.search(q, k=4)] for q in queries]
    assert "doc3" not in [h.id for h in batched[0]]
    with pytest.raises(KBError, match="shape"):
        col.search_batch(np.ones((2, 3)), k=4)


def test_filtered_results_follow_writes(tmp_path):
    col = EmbeddedKnowledgeBase(tmp_path).create_collection("c", DIM, index="hnsw")
    rows = records(50)
    col.insert(rows)
    assert len(col.search(rows[0].vector, k=50, filter="group == 'cat'")) == 13
    col.insert([Record("new", rows[0].vector, "", {"group": "cat"})])
    assert "new" in [h.id for h in col.search(rows[0].vector, k=50, filter="group == 'cat'")]
    col.delete(["new", "doc0"])
    assert len(col.search(rows[0].vector, k=50, filter="group == 'cat'")) == 12


def test_ids_only_search_follows_every_write(tmp_path):
    """The in-memory rowid -> id map answers exactly what SQLite would, through writes, rollbacks and reopening."""
    kb = EmbeddedKnowledgeBase(tmp_path, SearchOptions(exact_below=5))
    col = kb.create_collection("c", DIM, index="hnsw")
    rows = records(80)
    col.insert(rows[:60])
    queries = np.stack([r.vector for r in rows[::7]])

    def agree(collection) -> None:
        for q in queries:
            for kwargs in ({}, {"filter": "group == 'cat'"}, {"principal": Principal("bob")}):
                full = collection.search(q, k=8, **kwargs)
                bare = collection.search(q, k=8, output_fields=[], **kwargs)
                assert [(h.id, h.score) for h in bare] == [(h.id, h.score) for h in full]
        bare_batch = collection.search_batch(queries, k=8, output_fields=[])
        full_batch = collection.search_batch(queries, k=8)
        assert [[h.id for h in hits] for hits in bare_batch] == [[h.id for h in hits] for hits in full_batch]

    agree(col)
    col.search(rows[5].vector, k=3, output_fields=[])  # caches the (empty) exclusion bitmap
    col.delete(["doc5"])
    assert "doc5" not in [h.id for h in col.search(rows[5].vector, k=3, output_fields=[])]
    col.upsert([Record("doc6", rows[61].vector, "moved", {"i": 6})])  # same id, new rowid and vector
    assert col.search(rows[61].vector, k=1, output_fields=[])[0].id == "doc6"
    with pytest.raises(KBError, match="already exists"):
        col.insert([rows[60], rows[0]])  # rolled back: doc60 must not appear
    assert "doc60" not in [h.id for h in col.search(rows[60].vector, k=5, output_fields=[])]
    col.insert(rows[60:])
    agree(col)
    kb.close()
    agree(EmbeddedKnowledgeBase(tmp_path).collection("c"))


def test_output_fields_on_lexical_and_hybrid_search(tmp_path):
    col = EmbeddedKnowledgeBase(tmp_path).create_collection("c", DIM)
    rows = records(30)
    col.insert(rows)
    lexical = col.search(text="wolf", k=5, mode="lexical", output_fields=["text"])
    assert lexical and all("wolf" in h.text and h.metadata == {} for h in lexical)
    hybrid = col.search(rows[13].vector, text="wolf", k=5, mode="hybrid", output_fields=["readers"])
    assert hybrid[0].id == "doc13" and hybrid[0].readers == ["alice"] and hybrid[0].text == ""
    with pytest.raises(KBError, match="output_fields"):
        col.search_batch(np.ones((1, DIM)), output_fields=["embedding"])


def test_ids_only_hits_read_like_a_list_of_hits(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    col = kb.create_collection("c", DIM, index="hnsw")
    rows = records(5)
    col.insert(rows)
    bare = col.search(rows[2].vector, k=10, output_fields=[])  # k above the row count: padding drops out
    full = col.search(rows[2].vector, k=10, output_fields=["text"])
    assert len(bare) == 5 and bare[0].id == "doc2" and bare[-1] == list(bare)[-1]
    assert [(h.id, h.score) for h in bare] == [(h.id, h.score) for h in full]
    assert bare == [Hit(h.id, h.score) for h in full] and bare != [Hit("x", 0.0)] and bare != "doc2"
    assert bare[1:3] == list(bare)[1:3] and isinstance(bare[0], Hit)
    assert [h.to_dict()["id"] for h in bare] == [h.id for h in full]


def test_a_collection_dropped_or_closed_elsewhere_refuses_clearly(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    held = kb.create_collection("c", DIM)
    held.insert(records(3))
    kb.drop_collection("c")  # e.g. by an admin over HTTP while a search request holds the object
    with pytest.raises(CollectionNotFound, match="closed or dropped"):
        held.search(records(1)[0].vector, k=1)
    other = kb.create_collection("d", DIM)
    kb.close()
    kb.close()  # twice is harmless
    with pytest.raises(CollectionNotFound, match="closed or dropped"):
        other.count()
    assert EmbeddedKnowledgeBase(tmp_path).collection("d").count() == 0
