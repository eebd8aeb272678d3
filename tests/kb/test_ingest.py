"""Chunking, file ingestion, the CLI and the HTTP API of the knowledge base."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.guard.http_auth import HttpAuth
from jijian.guard.principals import Principal
from jijian.kb.api import create_kb_app
from jijian.kb.chunking import chunk_text
from jijian.kb.embed import HashingEmbedder, load_embedder
from jijian.kb.ingest import IngestError, html_to_text, ingest_files
from jijian.kb.store import EmbeddedKnowledgeBase

count = HashingEmbedder().count_tokens


def test_chunks_respect_limits_overlap_and_code_blocks():
    code = "```python\ndef f(x):\n\n    return x + 1\n```"
    text = "Intro paragraph with words.\n\n" + code + "\n\n" + " ".join(f"w{i}" for i in range(120)) + "\n\nEnd."
    chunks = chunk_text(text, count, max_tokens=30, overlap=6)
    assert all(count(c.text) <= 30 for c in chunks)
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    assert any(code in c.text for c in chunks)  # the fence (with its blank line) was never cut
    words = [c.text.split() for c in chunks if c.text.startswith("w")]
    assert all(set(a) & set(b) for a, b in itertools.pairwise(words))  # consecutive chunks overlap
    covered = " ".join(c.text for c in chunks)
    assert all(f"w{i}" in covered for i in range(120)) and "End." in covered
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text, count, max_tokens=10, overlap=10)


def test_html_text_drops_scripts():
    assert html_to_text("<p>Hello</p><script>evil()</script><p>world</p>").split() == ["Hello", "world"]


def test_ingest_skips_unchanged_and_replaces_changed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha beta gamma\n\nsecond paragraph about delta")
    (docs / "b.py").write_text('def f():\n    """Return one."""\n    return 1\n')
    (docs / "c.jsonl").write_text(json.dumps({"text": "epsilon zeta", "lang": "en"}) + "\n")
    kb = EmbeddedKnowledgeBase(tmp_path / "kb")
    col = kb.create_collection("docs", 384)
    embedder = HashingEmbedder()
    files = sorted(docs.iterdir())
    first = ingest_files(col, files, embedder, chunk_tokens=32, chunk_overlap=4)
    assert (first.files, first.skipped) == (3, 0) and col.count() == first.chunks
    second = ingest_files(col, files, embedder, chunk_tokens=32, chunk_overlap=4)
    assert (second.files, second.skipped, second.chunks) == (0, 3, 0)
    (docs / "a.md").write_text("# A\n\nonly omega now")
    third = ingest_files(col, files, embedder, chunk_tokens=32, chunk_overlap=4)
    assert (third.files, third.skipped) == (1, 2)
    assert not col.search(text="delta", mode="lexical") and col.search(text="omega", mode="lexical")
    hit = col.search(text="epsilon", mode="lexical", k=1)[0]
    assert hit.metadata["source"].endswith("c.jsonl:1") and hit.metadata["lang"] == "en"
    (docs / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(IngestError, match=r"bad\.jsonl:2"):
        ingest_files(col, [docs / "bad.jsonl"], embedder)


def test_cli_ingest_and_search(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "cats.md").write_text("Cats purr when they are content.")
    (docs / "dogs.txt").write_text("Dogs bark at strangers.")
    runner = CliRunner()
    common = ["--path", str(tmp_path / "kb"), "--embedding-model", "hashing"]
    result = runner.invoke(app, ["kb", "ingest", "pets", str(docs), *common])
    assert result.exit_code == 0, result.output
    assert "2 file(s) ingested" in result.output
    result = runner.invoke(app, ["kb", "search", "pets", "why do dogs bark", "-k", "1", *common])
    assert result.exit_code == 0 and "dogs.txt" in result.output and "cats.md" not in result.output
    result = runner.invoke(app, ["kb", "search", "pets", "x", "--filter", "type ==", *common])
    assert result.exit_code == 2 and "ends too early" in result.output
    result = runner.invoke(app, ["kb", "ingest", "pets", str(tmp_path / "missing.md"), *common])
    assert result.exit_code == 2 and "missing.md" in result.output


def test_http_api(tmp_path):
    kb = EmbeddedKnowledgeBase(tmp_path)
    auth = HttpAuth.with_keys({"sk-writer": Principal("wendy", frozenset({"writer"})), "sk-eve": Principal("eve")})
    app = create_kb_app(kb, auth, embedder=HashingEmbedder)
    client = TestClient(app, headers={"Authorization": "Bearer sk-writer"})
    eve = {"Authorization": "Bearer sk-eve"}
    assert client.post("/collections", json={"name": "c", "dim": 384}).status_code == 201
    assert client.post("/collections", json={"name": "c", "dim": 384}).status_code == 400
    body = {"records": [{"id": "a", "text": "red apples"}, {"id": "b", "text": "green pears", "readers": ["eve"]}]}
    assert client.post("/collections/c/records", json=body).json()["count"] == 2
    hits = client.post("/collections/c/search", json={"text": "pears", "mode": "hybrid", "k": 2}).json()["hits"]
    assert [h["id"] for h in hits] == ["a"]  # the writer is not among b's readers
    as_eve = client.post("/collections/c/search", json={"text": "pears", "mode": "hybrid", "k": 2}, headers=eve)
    assert as_eve.json()["hits"][0]["id"] == "b"
    wrong_dim = client.post("/collections/c/search", json={"vector": [0.1, 0.2]})
    assert wrong_dim.status_code == 400 and "dimension 2" in wrong_dim.json()["error"]
    unknown = client.post("/collections/nope/search", json={"text": "x"})
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]
    bad_filter = client.post("/collections/c/search", json={"text": "x", "filter": "a =="})
    assert bad_filter.status_code == 400 and "filter" in bad_filter.json()["error"]
    assert client.post("/collections/c/search", json={"text": "x", "k": 0}).status_code == 422
    bare = client.post("/collections/c/search", json={"text": "apples", "k": 1, "output_fields": []}).json()["hits"]
    assert bare[0]["id"] == "a" and bare[0]["text"] == "" and bare[0]["metadata"] == {}
    bad_field = client.post("/collections/c/search", json={"text": "x", "output_fields": ["vector"]})
    assert bad_field.status_code == 400 and "output_fields" in bad_field.json()["error"]
    assert client.get("/collections/c/records/a").json()["text"] == "red apples"
    assert client.post("/collections/c/delete", json={"ids": ["a"]}).json() == {"deleted": 1}
    assert client.get("/collections/c/records/a").status_code == 404
    assert client.get("/collections").json()["collections"][0]["count"] == 1
    assert "/collections/{name}/search" in client.get("/openapi.json").json()["paths"]
    assert client.delete("/collections/c").status_code == 200


@pytest.mark.model
def test_minilm_ranks_by_meaning(tmp_path):
    embedder = load_embedder("all-MiniLM-L6-v2")
    assert embedder.dim == 384
    texts = ["The cat sleeps on the sofa.", "Interest rates rose again this quarter.", "A tutorial on Python lists."]
    col = EmbeddedKnowledgeBase(tmp_path).create_collection("c", embedder.dim)
    from jijian.kb.store import Record

    col.insert([Record(str(i), v, t) for i, (v, t) in enumerate(zip(embedder.embed(texts), texts, strict=True))])
    query = embedder.embed(["the central bank and monetary policy"])[0]
    assert col.search(query, k=1)[0].id == "1"
    assert np.isclose(np.linalg.norm(query), 1.0, atol=1e-4)
