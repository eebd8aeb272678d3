"""The knowledge base over HTTP: a FastAPI router the inference server can mount, or `jijian kb serve` alone."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from jijian.config.errors import UserInputError
from jijian.guard.principals import Principal
from jijian.kb.embed import Embedder
from jijian.kb.store import CollectionNotFound, KnowledgeBase, Record


class CollectionIn(BaseModel):
    """A collection to create."""

    name: str
    dim: int = Field(ge=1)
    metric: Literal["cosine", "ip", "l2"] | None = None
    index: Literal["flat", "hnsw", "ivf_flat", "ivf_pq"] | None = None


class RecordIn(BaseModel):
    """A record to insert; without a vector its text is embedded by the server's embedder."""

    id: str | None = None
    vector: list[float] | None = None
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    readers: list[str] | None = None


class InsertIn(BaseModel):
    """Records to insert or upsert."""

    records: list[RecordIn] = Field(min_length=1)
    upsert: bool = False


class DeleteIn(BaseModel):
    """Ids to delete."""

    ids: list[str] = Field(min_length=1)


class PrincipalIn(BaseModel):
    """Who is searching (a server mounting the router should set this from authentication)."""

    user: str
    roles: list[str] = Field(default_factory=list)


class SearchIn(BaseModel):
    """A search request: a vector, a text (embedded, and used for lexical ranking), or both."""

    vector: list[float] | None = None
    text: str | None = None
    k: int = Field(default=10, ge=1, le=1000)
    filter: str | None = None
    mode: Literal["vector", "lexical", "hybrid"] = "vector"
    principal: PrincipalIn | None = None
    output_fields: list[str] | None = None  # what hits carry besides id and score; [] for ids and scores only


def _error(exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, CollectionNotFound) else 400
    return JSONResponse(status_code=status, content={"error": str(exc)})


def create_kb_router(kb: KnowledgeBase, embedder: Callable[[], Embedder] | None = None) -> APIRouter:
    """Routes under /collections; `embedder` (loaded on first use) embeds texts sent without vectors."""
    router = APIRouter(tags=["knowledge base"])
    lock = threading.Lock()  # one SQLite connection per collection: serialise requests
    loaded: dict[str, Embedder] = {}

    def embed(texts: list[str]) -> list[list[float]]:
        if embedder is None:
            raise UserInputError("this server has no embedder: send vectors")
        if "model" not in loaded:
            loaded["model"] = embedder()
        return loaded["model"].embed(texts).tolist()

    def guarded(work: Callable[[], Any]) -> Any:
        try:
            with lock:
                return work()
        except UserInputError as exc:
            return _error(exc)

    @router.get("/collections")
    def list_collections() -> Any:
        """Every collection with its dimension, metric, index and size."""
        return guarded(lambda: {"collections": kb.list_collections()})

    @router.post("/collections", status_code=201)
    def create_collection(body: CollectionIn) -> Any:
        """Create a collection."""
        return guarded(
            lambda: {"name": kb.create_collection(body.name, body.dim, metric=body.metric, index=body.index).name}
        )

    @router.delete("/collections/{name}")
    def drop_collection(name: str) -> Any:
        """Drop a collection and its files."""
        return guarded(lambda: kb.drop_collection(name) or {"dropped": name})

    @router.post("/collections/{name}/records")
    def insert(name: str, body: InsertIn) -> Any:
        """Insert (or upsert) records; returns their ids once they are durable."""

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
    def get(name: str, record_id: str) -> Any:
        """One record by id."""

        def work() -> Any:
            record = kb.collection(name).get(record_id)
            if record is None:
                return JSONResponse(status_code=404, content={"error": f"id {record_id!r} not in collection {name!r}"})
            return {"id": record.id, "vector": record.vector.tolist(), "text": record.text,
                    "metadata": record.metadata, "readers": record.readers}  # fmt: skip

        return guarded(work)

    @router.post("/collections/{name}/delete")
    def delete(name: str, body: DeleteIn) -> Any:
        """Delete records by id."""
        return guarded(lambda: {"deleted": kb.collection(name).delete(body.ids)})

    @router.post("/collections/{name}/search")
    def search(name: str, body: SearchIn) -> Any:
        """Top-k hits by vector, lexical or hybrid ranking, within the filter and the principal's ACL."""

        def work() -> Any:
            collection = kb.collection(name)
            vector = body.vector
            if vector is None and body.mode != "lexical" and body.text:
                vector = embed([body.text])[0]
            principal = Principal(body.principal.user, frozenset(body.principal.roles)) if body.principal else None
            hits = collection.search(
                vector, body.k, filter=body.filter, principal=principal, mode=body.mode, text=body.text,
                output_fields=body.output_fields,
            )  # fmt: skip
            return {"hits": [hit.to_dict() for hit in hits]}

        return guarded(work)

    return router


def create_kb_app(kb: KnowledgeBase, embedder: Callable[[], Embedder] | None = None) -> FastAPI:
    """A standalone app serving only the knowledge base (OpenAPI docs at /docs)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        kb.close()  # checkpoint the indexes so the next start replays nothing

    app = FastAPI(title="jijian knowledge base", version="0.1.0", lifespan=lifespan)
    app.include_router(create_kb_router(kb, embedder))
    return app
