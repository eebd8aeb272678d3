"""The standard-library docs collection: every module's docstring first, so the quick start's question finds gzip."""

from __future__ import annotations

import pytest

from jijian.data import python_stdlib_files
from jijian.kb.embed import HashingEmbedder
from jijian.kb.stdlib_docs import build_stdlib_docs, select_docstrings
from jijian.kb.store import EmbeddedKnowledgeBase


@pytest.fixture(scope="module")
def module_docs():
    return select_docstrings(python_stdlib_files(), 700)


def test_module_docstrings_come_first_c_modules_and_thin_wrappers_included(module_docs):
    names = {d.qualname for d in module_docs}
    assert {"gzip", "zipfile", "tarfile", "json", "asyncio", "sqlite3"} <= names
    assert {"zlib", "math", "itertools", "sys"} <= names  # written in C: read from the imported module
    assert {"struct", "decimal"} <= names  # `from _struct import *` wrappers: their C module's docstring
    kinds = [d.kind for d in module_docs]
    first_api = next(i for i, kind in enumerate(kinds) if kind != "module")
    assert all(kind != "module" for kind in kinds[first_api:])
    assert not any(d.qualname.startswith("test.") for d in module_docs)


def test_the_quick_start_question_retrieves_gzip(tmp_path):
    # Lexical search: the hashing embedder stands in for MiniLM (fast), so only BM25 ranks by meaning here;
    # benchmarks/retrieval_quality.py measures the hybrid search with the real model.
    embedder = HashingEmbedder()
    kb = EmbeddedKnowledgeBase(tmp_path)
    count, _ = build_stdlib_docs(kb, python_stdlib_files(), embedder, max_docs=1000)
    assert count == 1000
    query = "How do I read a file compressed with gzip in Python?"
    hits = kb.collection("stdlib-docs").search(None, 5, mode="lexical", text=query)
    assert hits[0].id == "gzip"
