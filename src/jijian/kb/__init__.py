"""The knowledge base: durable collections of vectors, text and metadata with filtered and hybrid search."""

from jijian.kb.backend import Collection, CollectionNotFound, Hit, KBError, KnowledgeBase, Record, open_knowledge_base
from jijian.kb.store import EmbeddedCollection, EmbeddedKnowledgeBase, SearchOptions
from jijian.kb.vector_index import IndexParams

__all__ = [
    "Collection",
    "CollectionNotFound",
    "EmbeddedCollection",
    "EmbeddedKnowledgeBase",
    "Hit",
    "IndexParams",
    "KBError",
    "KnowledgeBase",
    "Record",
    "SearchOptions",
    "open_knowledge_base",
]
