"""The server's view of the knowledge base: a `Retriever` for RAG and an `Embedder` for /v1/embeddings.

Access control happens inside retrieval (the knowledge base filters by the caller's principal before
ranking); the API then has the guard scan every passage before it reaches the prompt: a passage
judged to be an injection is dropped and audited with the request id, so the model never sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

from jijian.guard.policy import GuardPolicy
from jijian.guard.principals import Principal
from jijian.kb import KnowledgeBase
from jijian.kb.backend import CollectionNotFound
from jijian.kb.embed import Embedder as KBEmbedder
from jijian.kb.embed import hybrid_vector_weight
from jijian.serve.rag import Passage


class KnowledgeBaseRetriever:
    """Hybrid (BM25 + vector) search of a collection on behalf of a principal, passages vetted by the guard."""

    def __init__(
        self, kb: KnowledgeBase, embedder: KBEmbedder, policy: GuardPolicy | None = None, mode: str = "hybrid"
    ) -> None:
        self.kb = kb
        self.embedder = embedder
        self.policy = policy
        self.mode = mode

    def retrieve(self, query: str, collection: str, top_k: int, principal: Principal | None) -> list[Passage]:
        """The top_k passages `principal` may read; unknown collections raise KeyError."""
        if self.policy is not None:
            self.policy.allowlists.check_collection(principal, collection)
        try:
            target = self.kb.collection(collection)
        except CollectionNotFound:
            raise KeyError(collection) from None
        vector = self.embedder.embed([query])[0]
        weight = hybrid_vector_weight(self.embedder, query)
        hits = target.search(vector, top_k, principal=principal, mode=self.mode, text=query, vector_weight=weight)
        # The guard's passage screening runs in the API, where the request id is known for the audit.
        return [
            Passage(id=hit.id, source=str(hit.metadata.get("source", hit.id)), text=hit.text, score=hit.score)
            for hit in hits
        ]


class KnowledgeBaseEmbedder:
    """The knowledge base's embedding model behind the server's `/v1/embeddings`."""

    def __init__(self, embedder: KBEmbedder) -> None:
        self.embedder = embedder
        self.name = embedder.name

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, as lists of floats."""
        vectors: list[list[float]] = self.embedder.embed(list(texts)).tolist()
        return vectors


def protect_restricted_documents(kb: KnowledgeBase, policy: GuardPolicy) -> int:
    """Register every record that has an ACL with the guard's output leak check; returns how many.

    Retrieval already keeps them from non-readers; this stops an answer that repeats one verbatim
    (from a model trained on it, a cached answer, a tool) from reaching a non-reader, streamed or not.
    """
    count = 0
    for spec in kb.list_collections():
        collection = kb.collection(spec["name"])
        for record_id, text, readers in collection.restricted_records():
            policy.protect_document(f"{spec['name']}/{record_id}", text, readers)
            count += 1
    return count
