"""A ready-made knowledge base: docstrings of the Python standard library (offline, real, small).

Every module's docstring comes first, then the public classes and functions of each module, then
methods and internals, as far as the budget (`[up] kb_max_docs`) goes: a question about any module
finds at least its overview.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jijian.kb.backend import KnowledgeBase, Record
from jijian.kb.embed import Embedder

COLLECTION = "stdlib-docs"
TEXT_CHARS = 1000


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
    else:
        yield from _accelerator_docstrings(tree, module, path)
    yield from visit(tree, module)


def _accelerator_docstrings(tree: ast.Module, module: str, path: Path) -> Iterator[Docstring]:
    """For a thin wrapper such as struct.py (`from _struct import *`): the C module's docstrings, as its own."""
    import importlib
    import inspect

    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("_") and node.level == 0):
            continue
        if not any(alias.name == "*" for alias in node.names) or "." in node.module:
            continue
        try:
            accelerator = importlib.import_module(node.module)
        except ImportError:
            continue
        if getattr(accelerator, "__file__", "").endswith(".py"):
            continue  # a Python module: its own file is parsed on its own
        if accelerator.__doc__:
            yield Docstring(module, "module", inspect.cleandoc(accelerator.__doc__), str(path), node.lineno)
        for name, member in sorted(vars(accelerator).items()):
            member_doc = getattr(member, "__doc__", None)
            if name.startswith("_") or not callable(member) or not isinstance(member_doc, str) or len(member_doc) < 40:
                continue
            kind = "class" if isinstance(member, type) else "function"
            yield Docstring(f"{module}.{name}", kind, inspect.cleandoc(member_doc), str(path), node.lineno)
        return


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


# Packages whose members are tooling, demos or deprecated internals rather than the library people
# ask about: their module docstrings are still taken, their functions and classes only last.
_LOW_PRIORITY = ("idlelib", "lib2to3", "turtledemo", "pydoc_data", "distutils", "ensurepip", "encodings")


def extension_docstrings() -> Iterator[Docstring]:
    """Docstrings of the standard library's modules written in C (zlib, math, itertools, sys...) and their APIs.

    They have no .py file to parse, so they are imported and read at run time (C modules do nothing
    when imported); a module that fails to import is skipped.
    """
    import importlib
    import inspect
    import sys
    import sysconfig
    import warnings

    dynload = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    names = set(sys.builtin_module_names) | {p.name.split(".")[0] for p in dynload.glob("*.so")}
    for module in sorted(n for n in names if not n.startswith(("_", "xx")) and n not in _SKIP_EXTENSIONS):
        try:
            with warnings.catch_warnings():  # deprecated modules (audioop, nis...) warn on import
                warnings.simplefilter("ignore", DeprecationWarning)
                imported = importlib.import_module(module)
        except Exception:  # an optional extension built without its library
            continue
        if imported.__doc__ and not getattr(imported, "__file__", "").endswith(".py"):
            yield Docstring(module, "module", inspect.cleandoc(imported.__doc__), f"<built-in {module}>", 0)
        for name, member in sorted(vars(imported).items()):
            doc = getattr(member, "__doc__", None)
            if name.startswith("_") or not callable(member) or not isinstance(doc, str) or len(doc) < 40:
                continue
            if getattr(member, "__module__", module) not in (module, None, "builtins"):
                continue  # re-exported from elsewhere: documented there
            kind = "class" if isinstance(member, type) else "function"
            yield Docstring(f"{module}.{name}", kind, inspect.cleandoc(doc), f"<built-in {module}>", 0)


# Interpreter internals and test helpers among the C modules.
_SKIP_EXTENSIONS = frozenset({"posix", "marshal", "faulthandler"})


def _private(qualname: str) -> bool:
    return any(part.startswith("_") for part in qualname.split("."))


def _priority(doc: Docstring, module: str) -> int:
    """0: a module's own docstring; 1: a public module-level class or function; 2: methods and the rest."""
    if doc.kind == "module":
        return 0 if not _private(doc.qualname) else 1
    top_level = doc.qualname.count(".") == module.count(".") + 1
    if top_level and not _private(doc.qualname) and module.split(".")[0] not in _LOW_PRIORITY:
        return 1
    return 2


def select_docstrings(files: Sequence[Path], max_docs: int) -> list[Docstring]:
    """Up to `max_docs` docstrings: every public module's first, then public module-level APIs, then the rest."""
    ranked: dict[str, tuple[int, Docstring]] = {}
    for path in files:
        if "test" in path.parts or "tests" in path.parts or path.name.startswith("test_"):
            continue  # test suites document tests, not the library
        module = _module_name(path)
        for doc in docstrings(path, module):
            # A name defined twice (platform branches) keeps its first docstring.
            ranked.setdefault(doc.qualname, (_priority(doc, module), doc))
    for doc in extension_docstrings():
        ranked.setdefault(doc.qualname, (0 if doc.kind == "module" else 1, doc))
    ordered = sorted(ranked.values(), key=lambda item: (item[0], item[1].qualname))
    return [doc for _, doc in ordered[:max_docs]]


def build_stdlib_docs(
    kb: KnowledgeBase, files: Sequence[Path], embedder: Embedder, max_docs: int = 3000, collection: str = COLLECTION
) -> tuple[int, float]:
    """(Re)create the `collection` from up to `max_docs` docstrings (`select_docstrings`); returns (docs, seconds)."""
    started = time.perf_counter()
    if collection in {c["name"] for c in kb.list_collections()}:
        kb.drop_collection(collection)
    target = kb.create_collection(collection, embedder.dim)
    docs = select_docstrings(files, max_docs)
    # Embed the name with the text: "zipfile.ZipFile: Class with methods to open..." retrieves better.
    # The model reads 256 word pieces at most: longer text costs time and changes nothing.
    texts = [f"{d.qualname}: {d.text[:TEXT_CHARS]}" for d in docs]
    vectors = embedder.embed(texts)
    target.insert(
        [
            Record(d.qualname, vector, text, {"kind": d.kind, "source": d.source, "line": d.line})
            for d, vector, text in zip(docs, vectors, texts, strict=True)
        ]
    )
    target.checkpoint()
    return len(docs), time.perf_counter() - started
