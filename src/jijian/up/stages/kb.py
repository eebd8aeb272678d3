"""Stage `kb`: [up] kb_sources chunked, embedded and indexed into one collection of [kb]."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jijian.config import DeployConfig
from jijian.up.paths import PYTHON_STDLIB_DOCS, config_dir, expand_sources
from jijian.up.stage import StageContext, StageError, section


def _stdlib_recall(collection: Any, embedder: Any) -> dict[str, Any]:
    """Hybrid recall@5 and MRR of the standard-library docs on the shipped English questions.

    Every question counts: one whose module the budget left out is a miss, not skipped.
    """
    from jijian.eval.questions import load_questions, shipped_path
    from jijian.eval.retrieval import evaluate_retrieval

    questions = load_questions(shipped_path("stdlib-en"))
    modes = evaluate_retrieval(collection, embedder, questions, modes=("hybrid",))["modes"]
    return {"questions": len(questions), "recall@5": modes["hybrid"]["recall@5"], "mrr": modes["hybrid"]["mrr"]}


class KnowledgeBaseStage:
    """(Re)build the collection from its sources, so edits and deletions in them are always reflected."""

    name = "kb"

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """Reads nothing another stage writes."""
        return []

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """[kb] and the collection's name, sources and docstring budget."""
        return {
            "kb": section(config, "kb"),
            "up.kb": section(config, "up", "kb_collection", "kb_sources", "kb_max_docs"),
            "guard.encryption": section(config, "guard", "encrypt_at_rest", "key_env", "key_file"),
        }

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """The source files and directories (the standard library's files for python-stdlib-docs)."""
        paths, stdlib = expand_sources(config.up.kb_sources, base, PYTHON_STDLIB_DOCS)
        inputs = [Path(p) for p in paths]
        if stdlib:
            from jijian.data import python_stdlib_files

            inputs += python_stdlib_files()
        return inputs

    def outputs(self, config: DeployConfig) -> list[Path]:
        """The collection's directory."""
        return [config.kb.path / config.up.kb_collection]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Drop and rebuild the collection; run one sample search."""
        from jijian.guard.crypto import key_from_config
        from jijian.kb.backend import open_knowledge_base
        from jijian.kb.embed import load_embedder
        from jijian.kb.ingest import expand_paths, ingest_files
        from jijian.kb.stdlib_docs import build_stdlib_docs

        config = ctx.config
        if config.kb.backend != "embedded":
            raise StageError("[kb] backend: jijian up builds embedded knowledge bases only (its output is a directory)")
        name = config.up.kb_collection
        if not config.up.kb_sources:
            raise StageError("[up] kb_sources is empty: name what to ingest, or leave 'kb' out of [up] stages")
        started = time.perf_counter()
        paths, stdlib = expand_sources(config.up.kb_sources, config_dir(ctx.config_path), PYTHON_STDLIB_DOCS)
        files = expand_paths([Path(p) for p in paths])
        kb_config = config.kb
        embedder = load_embedder(
            kb_config.embedding_model, kb_config.embed_batch_size, kb_config.embedding_multilingual
        )
        # With [guard] encrypt_at_rest the collection is written encrypted, like every other kb writer.
        kb = open_knowledge_base(config.kb, key_from_config(config.guard))
        try:
            if (config.kb.path / name / "collection.json").is_file():
                kb.drop_collection(name)  # (without opening it: a plaintext one is refused when encryption is on)
            docstrings = 0
            if stdlib:
                from jijian.data import python_stdlib_files

                docstrings, _ = build_stdlib_docs(
                    kb, python_stdlib_files(), embedder, max_docs=config.up.kb_max_docs, collection=name
                )
                collection = kb.collection(name)
            else:
                collection = kb.create_collection(name, embedder.dim)
            report = ingest_files(
                collection, files, embedder, chunk_tokens=config.kb.chunk_tokens, chunk_overlap=config.kb.chunk_overlap
            )
            collection.checkpoint()
            count = collection.count()
            quality = _stdlib_recall(collection, embedder) if stdlib else None
        finally:
            kb.close()
        seconds = time.perf_counter() - started
        ctx.console.print(
            f"collection {name!r}: {count} entries ({docstrings} docstrings, {report.files} files in "
            f"{report.chunks} chunks) in {seconds:.0f} s -> {config.kb.path / name}"
        )
        if quality is not None:
            ctx.console.print(
                f"retrieval: hybrid recall@5 {quality['recall@5']:.3f} on {quality['questions']} labelled English "
                "questions (jijian eval retrieval)"
            )
        return {
            "retrieval": quality,
            "collection": name,
            "path": str(config.kb.path),
            "count": count,
            "docstrings": docstrings,
            "files": report.files,
            "chunks": report.chunks,
        }
