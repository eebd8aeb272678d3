"""A ready-made knowledge base: docstrings of the Python standard library (offline, real, small)."""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jijian.kb.embed import Embedder, hybrid_vector_weight
from jijian.kb.store import Hit, KnowledgeBase, Record

COLLECTION = "stdlib-docs"
SAMPLE_QUERY = "read and write compressed archive files"


@dataclass(frozen=True)
class Docstring:
    """One module, class or function docstring and where it is."""

    qualname: str
    kind: str
    text: str
    source: str
    line: int


def docstrings(path: Path, module: str) -> Iterator[Docstring]:
    """Module, class and function docstrings of one Python file (files that do not parse are skipped)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return

    def visit(node: ast.AST, prefix: str) -> Iterator[Docstring]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= 40 and not child.name.startswith("_"):
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    yield Docstring(name, kind, doc, str(path), child.lineno)
                if isinstance(child, ast.ClassDef):
                    yield from visit(child, name)

    doc = ast.get_docstring(tree)
    if doc:
        yield Docstring(module, "module", doc, str(path), 1)
    yield from visit(tree, module)


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    # The stdlib root is the folder holding os.py; keep the dotted path below it.
    for i in range(len(parts) - 1, -1, -1):
        if (Path(*parts[: i + 1]).parent / "os.py").exists():
            parts = parts[i:]
            break
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or path.stem


def build_stdlib_docs(
    kb: KnowledgeBase, files: Sequence[Path], embedder: Embedder, max_docs: int = 800, collection: str = COLLECTION
) -> tuple[int, float]:
    """(Re)create the `collection` from up to `max_docs` docstrings; returns (docs, seconds)."""
    started = time.perf_counter()
    if collection in {c["name"] for c in kb.list_collections()}:
        kb.drop_collection(collection)
    target = kb.create_collection(collection, embedder.dim)
    docs: dict[str, Docstring] = {}
    for path in files:
        if "test" in path.parts or path.name.startswith("test_"):
            continue  # test suites document tests, not the library
        for doc in docstrings(path, _module_name(path)):
            docs.setdefault(doc.qualname, doc)  # a name defined twice (platform branches) keeps its first docstring
        if len(docs) >= max_docs:
            break
    docs = list(docs.values())[:max_docs]
    # Embed the name with the text: "zipfile.ZipFile: Class with methods to open..." retrieves better.
    texts = [f"{d.qualname}: {d.text[:1000]}" for d in docs]
    vectors = embedder.embed(texts)
    target.insert(
        [
            Record(d.qualname, vector, text, {"kind": d.kind, "source": d.source, "line": d.line})
            for d, vector, text in zip(docs, vectors, texts, strict=True)
        ]
    )
    target.checkpoint()
    return len(docs), time.perf_counter() - started


def sample_search(kb: KnowledgeBase, embedder: Embedder, query: str = SAMPLE_QUERY, k: int = 3) -> list[Hit]:
    """Hybrid search of the stdlib docs for `query`."""
    vector, weight = embedder.embed([query])[0], hybrid_vector_weight(embedder, query)
    return kb.collection(COLLECTION).search(vector, k, mode="hybrid", text=query, vector_weight=weight)
