"""The knowledge base over HTTP: a FastAPI router the inference server can mount, or `jijian kb serve` alone.

The caller is the principal of its API key (the guard key ring, through `HttpAuth`), never a name in
the body. Reads are filtered by the records' ACLs; creating, inserting, upserting, deleting and
dropping need the `writer` or `admin` role, since the knowledge base is what RAG puts in prompts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jijian.config.errors import UserInputError
from jijian.guard.http_auth import AuthError, HttpAuth
from jijian.guard.http_limits import BodySizeLimit, HostAndOriginCheck
from jijian.guard.principals import Principal, can_read
from jijian.kb.backend import CollectionNotFound, KnowledgeBase, Record
from jijian.kb.embed import Embedder


class CollectionIn(BaseModel):
    """A collection to create."""

    name: str
    dim: int = Field(ge=1)
    metric: Literal["cosine", "ip", "l2"] | None = None
    index: Literal["flat", "hnsw", "ivf_flat", "ivf_pq"] | None = None


class RecordIn(BaseModel):
    """A record to insert; without a vector its text is embedded by the server's embedder."""

    model_config = ConfigDict(allow_inf_nan=False)

    id: str | None = Field(default=None, max_length=512)
    vector: list[float] | None = Field(default=None, max_length=65536)
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    readers: list[str] | None = None


class InsertIn(BaseModel):
    """Records to insert or upsert."""

    records: list[RecordIn] = Field(min_length=1, max_length=10_000)
    upsert: bool = False


class DeleteIn(BaseModel):
    """Ids to delete."""

    ids: list[str] = Field(min_length=1, max_length=10_000)


class SearchIn(BaseModel):
    """A search request: a vector, a text (embedded, and used for lexical ranking), or both.

    Unknown fields are refused: a `principal` in the body is an error, the caller comes from its key.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    vector: list[float] | None = Field(default=None, max_length=65536)
    text: str | None = Field(default=None, max_length=100_000)
    k: int = Field(default=10, ge=1, le=1000)
    filter: str | None = Field(default=None, max_length=10_000)
    mode: Literal["vector", "lexical", "hybrid"] = "vector"
    output_fields: list[str] | None = None  # what hits carry besides id and score; [] for ids and scores only


def _error(exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, CollectionNotFound) else 400
    return JSONResponse(status_code=status, content={"error": str(exc)})


def _writer(principal: Principal) -> None:
    if not principal.can_write:
        raise AuthError(403, f"{principal.user!r} may not change the knowledge base (needs the writer or admin role)",
                        "permission_denied")  # fmt: skip


def create_kb_router(kb: KnowledgeBase, auth: HttpAuth, embedder: Callable[[], Embedder] | None = None) -> APIRouter:
    """Routes under /collections, callers authenticated by `auth`; `embedder` (loaded on first use) embeds texts
    sent without vectors."""
    router = APIRouter(tags=["knowledge base"])
    caller = Depends(auth)
    # The knowledge base locks each collection itself. This lock loads the embedder once and runs one
    # embedding at a time: each already uses every core (torch's intra-op threads).
    embed_lock = threading.Lock()
    loaded: dict[str, Embedder] = {}

    def embed(texts: list[str]) -> list[list[float]]:
        if embedder is None:
            raise UserInputError("this server has no embedder: send vectors")
        with embed_lock:
            if "model" not in loaded:
                loaded["model"] = embedder()
            vectors: list[list[float]] = loaded["model"].embed(texts).tolist()
            return vectors

    def guarded(work: Callable[[], Any]) -> Any:
        try:
            return work()
        except UserInputError as exc:
            return _error(exc)

    @router.get("/collections")
    def list_collections(principal: Principal = caller) -> Any:
        """Every collection with its dimension, metric, index and size."""
        return guarded(lambda: {"collections": kb.list_collections()})

    @router.post("/collections", status_code=201)
    def create_collection(body: CollectionIn, principal: Principal = caller) -> Any:
        """Create a collection (writers and admins)."""
        _writer(principal)
        return guarded(
            lambda: {"name": kb.create_collection(body.name, body.dim, metric=body.metric, index=body.index).name}
        )

    @router.delete("/collections/{name}")
    def drop_collection(name: str, principal: Principal = caller) -> Any:
        """Drop a collection and its files (writers and admins)."""
        _writer(principal)
        def drop() -> dict[str, str]:
            kb.drop_collection(name)
            return {"dropped": name}

        return guarded(drop)

    @router.post("/collections/{name}/records")
    def insert(name: str, body: InsertIn, principal: Principal = caller) -> Any:
        """Insert (or upsert) records (writers and admins); returns their ids once they are durable."""
        _writer(principal)

        def work() -> Any:
            collection = kb.collection(name)
            missing = [i for i, r in enumerate(body.records) if r.vector is None]
            vectors = embed([body.records[i].text for i in missing]) if missing else []
            filled = dict(zip(missing, vectors, strict=True))
            records = [
                Record(r.id, r.vector if r.vector is not None else filled[i], r.text, r.metadata, r.readers)
                for i, r in enumerate(body.records)
            ]
            ids = collection.upsert(records) if body.upsert else collection.insert(records)
            return {"ids": ids, "count": collection.count()}

        return guarded(work)

    @router.get("/collections/{name}/records/{record_id}")
    def get(name: str, record_id: str, principal: Principal = caller) -> Any:
        """One record by id, if the caller may read it (otherwise it does not exist for them)."""

        def work() -> Any:
            record = kb.collection(name).get(record_id)
            if record is None or not can_read(principal, record.readers):
                return JSONResponse(status_code=404, content={"error": f"id {record_id!r} not in collection {name!r}"})
            return {"id": record.id, "vector": np.asarray(record.vector).tolist(), "text": record.text,
                    "metadata": record.metadata, "readers": record.readers}  # fmt: skip

        return guarded(work)

    @router.post("/collections/{name}/delete")
    def delete(name: str, body: DeleteIn, principal: Principal = caller) -> Any:
        """Delete records by id (writers and admins)."""
        _writer(principal)
        return guarded(lambda: {"deleted": kb.collection(name).delete(body.ids)})

    @router.post("/collections/{name}/search")
    def search(name: str, body: SearchIn, principal: Principal = caller) -> Any:
        """Top-k hits by vector, lexical or hybrid ranking, within the filter and the principal's ACL."""

        def work() -> Any:
            collection = kb.collection(name)
            vector = body.vector
            if vector is None and body.mode != "lexical" and body.text:
                vector = embed([body.text])[0]
            hits = collection.search(
                vector, body.k, filter=body.filter, principal=principal, mode=body.mode, text=body.text,
                output_fields=body.output_fields,
            )  # fmt: skip
            return {"hits": [hit.to_dict() for hit in hits]}

        return guarded(work)

    return router


def create_kb_app(
    kb: KnowledgeBase,
    auth: HttpAuth,
    embedder: Callable[[], Embedder] | None = None,
    *,
    max_body_bytes: int = 16 * 2**20,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """A standalone app serving only the knowledge base (OpenAPI docs at /docs), callers authenticated by `auth`."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        kb.close()  # checkpoint the indexes so the next start replays nothing

    app = FastAPI(title="jijian knowledge base", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if allowed_hosts is not None:
        app.add_middleware(HostAndOriginCheck, allowed_hosts=allowed_hosts)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"error": exc.message, "code": exc.code})

    app.include_router(create_kb_router(kb, auth, embedder))
    return app
