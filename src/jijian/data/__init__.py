"""Training data: sources, cleaning, dedup, packing into shards, and the loader that feeds the trainer."""

from jijian.data.build import BuildResult, build_dataset
from jijian.data.loader import PackedLoader, PackedTokens
from jijian.data.pii import redact_contacts
from jijian.data.shards import DatasetError, read_manifest
from jijian.data.sources import python_stdlib_files, read_documents, resolve_inputs, resolve_sources
from jijian.data.tokens import TokenWindows, tokenize_documents
from jijian.data.training import TrainingData, open_train_loader

__all__ = [
    "BuildResult",
    "DatasetError",
    "PackedLoader",
    "PackedTokens",
    "TokenWindows",
    "TrainingData",
    "build_dataset",
    "open_train_loader",
    "python_stdlib_files",
    "read_documents",
    "read_manifest",
    "redact_contacts",
    "resolve_inputs",
    "resolve_sources",
    "tokenize_documents",
]
