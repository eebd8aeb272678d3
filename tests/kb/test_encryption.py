"""Encryption at rest of the knowledge base: nothing readable on disk, everything still works with the key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jijian.config import UserInputError
from jijian.guard.crypto import generate_key, parse_key
from jijian.guard.principals import Principal
from jijian.kb.sealing import CollectionKeyError
from jijian.kb.store import EmbeddedKnowledgeBase, Record, SearchOptions
from jijian.kb.vector_index import prepare

DIM = 16
SENTENCE = "The grey heron flies north at dawn over the quiet salt marsh"
CODENAME = "BLUEFINCH-7731"
ANIMALS = ["otter", "badger", "stoat", "vole", "shrew", "weasel"]
KEY = parse_key(generate_key(), "test key")


def corpus(n: int = 40) -> list[Record]:
    rng = np.random.default_rng(7)
    rows = [
        Record(
            f"row{i}",
            rng.normal(size=DIM),
            f"field note {i}: the {ANIMALS[i % 6]} was seen near the {ANIMALS[(i * 5) % 6]} burrow",
            {"i": i, "animal": ANIMALS[i % 6], "source": f"notes/day{i}.md"},
            readers=None if i % 2 else ["role:ranger"],
        )
        for i in range(n)
    ]
    rows.append(Record("memo", rng.normal(size=DIM), SENTENCE, {"codename": CODENAME}, readers=["role:board"]))
    return rows


def disk_bytes(directory) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_no_text_metadata_or_vector_is_on_disk_in_clear(tmp_path, index):
    rows = corpus()
    kb = EmbeddedKnowledgeBase(tmp_path, key=KEY)
    collection = kb.create_collection("notes", DIM, index=index)
    collection.replace_source("private/board-minutes.md", "0" * 64, rows)
    collection.search(rows[-1].vector, k=3, mode="hybrid", text="heron marsh")
    collection.checkpoint()  # the index snapshot on disk too, next to the WAL
    memo_vector = prepare(np.asarray(rows[-1].vector, dtype=np.float32).reshape(1, -1), "cosine").tobytes()
    for moment in ("open", "closed"):
        raw = disk_bytes(tmp_path / "notes")
        for secret in (b"heron", b"marsh", CODENAME.encode(), b"BLUEFINCH", b"board-minutes", b"badger", b"day3.md"):
            assert secret not in raw, (moment, secret)
        assert memo_vector[:16] not in raw and memo_vector[-16:] not in raw, moment
        kb.close()
    # The same data without a key IS on disk in clear: the grep above can see it.
    clear = EmbeddedKnowledgeBase(tmp_path / "clear").create_collection("notes", DIM, index=index)
    clear.insert(rows)
    clear.close()
    assert b"heron" in disk_bytes(tmp_path / "clear") and CODENAME.encode() in disk_bytes(tmp_path / "clear")


def test_round_trip_search_filters_and_acls_work_with_the_key(tmp_path):
    rows = corpus()
    kb = EmbeddedKnowledgeBase(tmp_path, SearchOptions(exact_below=10), key=KEY)
    kb.create_collection("notes", DIM, index="hnsw").replace_source("private/minutes.md", "ab" * 32, rows)
    kb.close()

    collection = EmbeddedKnowledgeBase(tmp_path, SearchOptions(exact_below=10), key=KEY).collection("notes")
    memo = collection.get("memo")
    assert memo.text == SENTENCE and memo.metadata == {"codename": CODENAME} and memo.readers == ["role:board"]
    expected = prepare(np.asarray(rows[-1].vector, dtype=np.float32).reshape(1, -1), "cosine")[0]
    np.testing.assert_array_equal(memo.vector, expected)
    assert collection.source_hash("private/minutes.md") == "ab" * 32
    assert collection.search(rows[5].vector, k=1)[0].id == "row5"
    assert collection.search(text="heron marsh", k=1, mode="lexical")[0].id == "memo"
    assert collection.search(rows[0].vector, k=1, mode="hybrid", text="salt marsh heron")[0].id in ("memo", "row0")
    filtered = collection.search(rows[0].vector, k=50, filter="animal == 'otter' and i < 20")
    assert {h.id for h in filtered} == {f"row{i}" for i in range(0, 20, 6)}
    assert collection.search(text="heron", k=5, mode="lexical", filter=f"codename == '{CODENAME}'")[0].id == "memo"
    visitor, board = Principal("visitor"), Principal("eve", frozenset({"board"}))
    assert "memo" not in {h.id for h in collection.search(text="heron marsh dawn", k=50, mode="hybrid",
                                                        vector=rows[-1].vector, principal=visitor)}  # fmt: skip
    assert collection.search(text="heron", k=1, mode="lexical", principal=board)[0].id == "memo"
    assert all(h.readers is None for h in collection.search(rows[2].vector, k=20, principal=visitor))
    collection.upsert([Record("memo", rows[-1].vector, "replaced text about otters", {"codename": "X"})])
    assert collection.get("memo").text == "replaced text about otters"
    assert collection.search(text="heron", k=5, mode="lexical") == []
    assert [h.id for h in collection.search(rows[0].vector, k=5, filter="codename == 'X'")] == ["memo"]  # not stale
    assert collection.search(rows[0].vector, k=5, filter=f"codename == '{CODENAME}'") == []


def test_blinded_lexical_index_ranks_exactly_like_the_clear_one(tmp_path):
    rows = corpus()
    sealed = EmbeddedKnowledgeBase(tmp_path / "sealed", key=KEY).create_collection("c", DIM, index="flat")
    clear = EmbeddedKnowledgeBase(tmp_path / "clear").create_collection("c", DIM, index="flat")
    sealed.insert(rows)
    clear.insert(rows)
    for query in ("otter burrow", "badger seen near the vole", "field note 17", "heron"):
        a = sealed.search(text=query, k=10, mode="lexical")
        b = clear.search(text=query, k=10, mode="lexical")
        assert [h.id for h in a] == [h.id for h in b], query
        assert [h.score for h in a] == pytest.approx([h.score for h in b]), query


def test_a_wrong_or_missing_key_is_a_clear_error_on_open(tmp_path):
    EmbeddedKnowledgeBase(tmp_path, key=KEY).create_collection("notes", DIM).insert(corpus(3))
    wrong = parse_key(generate_key(), "other key")
    with pytest.raises(CollectionKeyError, match=r"collection\.json: wrong encryption key for collection 'notes'"):
        EmbeddedKnowledgeBase(tmp_path, key=wrong).collection("notes")
    with pytest.raises(UserInputError, match=r"collection 'notes' is encrypted: set \[guard\] encrypt_at_rest"):
        EmbeddedKnowledgeBase(tmp_path).collection("notes")
    assert EmbeddedKnowledgeBase(tmp_path, key=KEY).collection("notes").count() == 4  # nothing was damaged


WRITER = """
import sys, numpy as np
from jijian.kb.store import EmbeddedKnowledgeBase, Record, SearchOptions
kb = EmbeddedKnowledgeBase(sys.argv[1], SearchOptions(checkpoint_rows=5), key=bytes.fromhex(sys.argv[2]))
collection = kb.collection("c")
rng = np.random.default_rng(1)
for i in range(10**6):
    collection.insert([Record(f"r{i}", rng.normal(size=16), f"secret row {i}", {"n": i})])
    if i % 4 == 3:
        collection.delete([f"r{i - 1}"])
        print(f"del r{i - 1}", flush=True)
    print(f"ack r{i}", flush=True)
"""


def test_kill_9_loses_no_acknowledged_insert_of_an_encrypted_collection(tmp_path):
    EmbeddedKnowledgeBase(tmp_path, key=KEY).create_collection("c", DIM, index="hnsw")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), KEY.hex()], stdout=subprocess.PIPE, text=True)
    acked, deleted = [], set()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        kind, rid = proc.stdout.readline().split()
        (acked.append if kind == "ack" else deleted.add)(rid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) == 40
    collection = EmbeddedKnowledgeBase(tmp_path, key=KEY).collection("c")
    for rid in acked:
        record = collection.get(rid)
        if rid in deleted:
            assert record is None
            continue
        assert record is not None and record.text == f"secret row {rid[1:]}"
        assert collection.search(record.vector, k=1)[0].id == rid
    assert collection.index.size - len(collection.tombstones) == collection.count()
    assert b"secret row" not in disk_bytes(tmp_path / "c")


def test_cli_ingest_and_search_with_encryption_configured(tmp_path):
    from typer.testing import CliRunner

    from jijian.cli.main import app

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "heron.md").write_text(SENTENCE + ".")
    (tmp_path / "docs" / "otter.md").write_text("Otters hold hands while they sleep on the river.")
    (tmp_path / "key").write_text(generate_key())
    config = tmp_path / "deploy.toml"
    config.write_text(
        f'[kb]\npath = "{tmp_path / "kb"}"\nembedding_model = "hashing"\n'
        f'[guard]\nencrypt_at_rest = true\nkey_env = "JIJIAN_TEST_UNSET_KEY"\nkey_file = "{tmp_path / "key"}"\n'
    )
    runner = CliRunner()
    result = runner.invoke(app, ["kb", "ingest", "wiki", str(tmp_path / "docs"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert b"heron" not in disk_bytes(tmp_path / "kb") and b"Otters" not in disk_bytes(tmp_path / "kb")
    result = runner.invoke(app, ["kb", "search", "wiki", "where does the heron fly", "-k", "1", "-c", str(config)])
    assert result.exit_code == 0 and "heron.md" in result.output and "salt marsh" in result.output
    (tmp_path / "key").write_text(generate_key())  # the wrong key
    result = runner.invoke(app, ["kb", "search", "wiki", "heron", "-c", str(config)])
    assert result.exit_code == 2 and "wrong encryption key for collection 'wiki'" in result.output
