"""`jijian kb ...`: ingest files into a collection, search it, serve it over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jijian.cli.common import err_console, out_console, reports_errors

if TYPE_CHECKING:
    from jijian.config import KBConfig

kb_app = typer.Typer(
    help="Knowledge base: ingest documents, search collections, serve the HTTP API.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="deploy.toml whose [kb] section to use")]
PathOption = Annotated[Path | None, typer.Option("--path", help="knowledge base directory (overrides [kb] path)")]
EmbedOption = Annotated[str | None, typer.Option("--embedding-model", help="overrides [kb] embedding_model")]


def _kb_config(config: Path | None, path: Path | None, embedding_model: str | None) -> KBConfig:
    from jijian.config import KBConfig, load_config

    section = load_config(config).kb if config else KBConfig()
    updates = {k: v for k, v in {"path": path, "embedding_model": embedding_model}.items() if v is not None}
    return section.model_copy(update=updates) if updates else section


def _kb_key(config: Path | None) -> bytes | None:
    """The encryption key `[guard]` of the same deploy.toml asks for (None when encrypt_at_rest is off)."""
    from jijian.config import load_config
    from jijian.guard.crypto import key_from_config

    return key_from_config(load_config(config).guard) if config else None


@kb_app.command("ingest")
@reports_errors
def ingest(
    collection: Annotated[str, typer.Argument(help="collection name (created on first ingest)")],
    paths: Annotated[list[Path], typer.Argument(help="files or directories (.txt .md .html .py .jsonl)")],
    config: ConfigOption = None,
    path: PathOption = None,
    embedding_model: EmbedOption = None,
    reader: Annotated[list[str] | None, typer.Option("--reader", help="ACL entry (user, role:NAME, *); repeat")] = None,
) -> None:
    """Chunk, embed and store documents; files unchanged since the last ingest are skipped."""
    from rich.progress import Progress

    from jijian.kb.backend import CollectionNotFound, open_knowledge_base
    from jijian.kb.embed import load_embedder
    from jijian.kb.ingest import expand_paths, ingest_files

    cfg = _kb_config(config, path, embedding_model)
    files = expand_paths(paths)
    embedder = load_embedder(cfg.embedding_model, cfg.embed_batch_size, cfg.embedding_multilingual)
    kb = open_knowledge_base(cfg, _kb_key(config))
    try:
        try:
            target = kb.collection(collection)
        except CollectionNotFound:
            target = kb.create_collection(collection, embedder.dim)
        on_terminal = sys.stderr.isatty()
        with Progress(console=err_console, disable=not on_terminal) as progress:
            task = progress.add_task(f"ingest → {collection}", total=len(files))

            def advance(file: Path, chunks: int) -> None:
                progress.advance(task)
                if not on_terminal:
                    print(json.dumps({"event": "ingested", "file": str(file), "chunks": chunks}), file=sys.stderr)

            report = ingest_files(
                target, files, embedder, chunk_tokens=cfg.chunk_tokens, chunk_overlap=cfg.chunk_overlap,
                readers=reader or None, on_file=advance,
            )  # fmt: skip
        out_console.print(
            f"{collection}: {report.files} file(s) ingested ({report.chunks} chunks), "
            f"{report.skipped} unchanged, {target.count()} chunks in total"
        )
    finally:
        kb.close()


@kb_app.command("search")
@reports_errors
def search(
    collection: Annotated[str, typer.Argument(help="collection name")],
    query: Annotated[str, typer.Argument(help="the query text")],
    k: Annotated[int, typer.Option("-k", min=1, help="how many hits")] = 5,
    mode: Annotated[str, typer.Option(help="vector | lexical | hybrid")] = "hybrid",
    filter: Annotated[str | None, typer.Option("--filter", help="metadata filter, e.g. \"type == 'python'\"")] = None,
    user: Annotated[str | None, typer.Option(help="search as this user (ACLs apply)")] = None,
    role: Annotated[list[str] | None, typer.Option(help="a role of --user; repeat")] = None,
    config: ConfigOption = None,
    path: PathOption = None,
    embedding_model: EmbedOption = None,
) -> None:
    """Print the ranked hits for a query, with their sources."""
    from jijian.guard.principals import Principal
    from jijian.kb.backend import open_knowledge_base
    from jijian.kb.embed import hybrid_vector_weight, load_embedder

    cfg = _kb_config(config, path, embedding_model)
    kb = open_knowledge_base(cfg, _kb_key(config))
    try:
        target = kb.collection(collection)
        vector, weight = None, 1.0
        if mode != "lexical":
            embedder = load_embedder(cfg.embedding_model, multilingual=cfg.embedding_multilingual)
            vector, weight = embedder.embed([query])[0], hybrid_vector_weight(embedder, query)
        principal = Principal(user, frozenset(role or ())) if user else None
        hits = target.search(vector, k, filter=filter, principal=principal, mode=mode, text=query, vector_weight=weight)
        if not hits:
            out_console.print("no hits")
        for rank, hit in enumerate(hits, 1):
            meta = hit.metadata
            where = f"{meta.get('source', hit.id)}" + (f" [{meta['start']}:{meta['end']}]" if "start" in meta else "")
            out_console.print(f"[bold]{rank}.[/] {hit.score:.4f}  {where}", highlight=False, markup=True)
            snippet = " ".join(hit.text.split())[:240]
            out_console.print(f"    {snippet}", highlight=False, markup=False)
    finally:
        kb.close()


@kb_app.command("list")
@reports_errors
def list_collections(config: ConfigOption = None, path: PathOption = None) -> None:
    """List collections with their dimension, index and size."""
    from jijian.kb.backend import open_knowledge_base

    kb = open_knowledge_base(_kb_config(config, path, None), _kb_key(config))
    try:
        for c in kb.list_collections():
            out_console.print(
                f"{c['name']}\t{c['count']} rows\tdim {c['dim']}\t{c['index']}/{c['metric']}", markup=False
            )
    finally:
        kb.close()


@kb_app.command("serve")
@reports_errors
def serve(
    config: ConfigOption = None,
    path: PathOption = None,
    embedding_model: EmbedOption = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8100,
) -> None:
    """Serve the knowledge-base HTTP API alone (OpenAPI docs at /docs); callers authenticate with [guard] api_keys."""
    import uvicorn

    from jijian.config import UserInputError, load_config
    from jijian.guard.http_auth import HttpAuth
    from jijian.guard.http_limits import allowed_hosts
    from jijian.kb.api import create_kb_app
    from jijian.kb.backend import open_knowledge_base
    from jijian.kb.embed import load_embedder

    if config is None:
        raise UserInputError(
            "jijian kb serve needs -c deploy.toml: its [guard] api_keys authenticates callers "
            "(or [guard] allow_anonymous = true serves public records to callers without a key)"
        )
    deploy = load_config(config)
    auth = HttpAuth.from_config(deploy.guard, deploy.serve.rate_limit_per_minute)  # refuses a missing key file
    cfg = _kb_config(config, path, embedding_model)
    kb = open_knowledge_base(cfg, _kb_key(config))
    app = create_kb_app(
        kb, auth, lambda: load_embedder(cfg.embedding_model, cfg.embed_batch_size, cfg.embedding_multilingual),
        max_body_bytes=deploy.serve.max_body_bytes, allowed_hosts=allowed_hosts(deploy.serve.allowed_hosts, host),
    )  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="info")
