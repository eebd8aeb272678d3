"""Training data: reading sources, tokenising, and serving batches to the trainer."""

from jijian.data.sources import python_stdlib_files, read_documents, resolve_sources
from jijian.data.tokens import TokenWindows, tokenize_documents

__all__ = ["TokenWindows", "python_stdlib_files", "read_documents", "resolve_sources", "tokenize_documents"]
