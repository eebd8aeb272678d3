"""The knowledge base: durable collections of vectors, text and metadata with filtered and hybrid search."""

from jijian.kb.store import CollectionNotFound, Hit, KBError, KnowledgeBase, Record, SearchOptions
from jijian.kb.vector_index import IndexParams

__all__ = ["CollectionNotFound", "Hit", "IndexParams", "KBError", "KnowledgeBase", "Record", "SearchOptions"]
