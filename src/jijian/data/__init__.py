"""Training data: sources, cleaning, dedup, packing into shards, and the loader that feeds the trainer.

Names are imported on first use (PEP 562): build worker processes import only the build stages,
never the loader, whose torch import would cost them seconds of start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BuildResult": "jijian.data.build",
    "build_dataset": "jijian.data.build",
    "PackedLoader": "jijian.data.loader",
    "PackedTokens": "jijian.data.loader",
    "redact_pii": "jijian.data.pii",
    "DatasetError": "jijian.data.shards",
    "read_manifest": "jijian.data.shards",
    "python_stdlib_files": "jijian.data.sources",
    "read_documents": "jijian.data.sources",
    "resolve_inputs": "jijian.data.sources",
    "resolve_sources": "jijian.data.sources",
    "TokenWindows": "jijian.data.tokens",
    "tokenize_documents": "jijian.data.tokens",
    "TrainingData": "jijian.data.training",
    "open_train_loader": "jijian.data.training",
}

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
    "redact_pii",
    "resolve_inputs",
    "resolve_sources",
    "tokenize_documents",
]

if TYPE_CHECKING:
    from jijian.data.build import BuildResult, build_dataset
    from jijian.data.loader import PackedLoader, PackedTokens
    from jijian.data.pii import redact_pii
    from jijian.data.shards import DatasetError, read_manifest
    from jijian.data.sources import python_stdlib_files, read_documents, resolve_inputs, resolve_sources
    from jijian.data.tokens import TokenWindows, tokenize_documents
    from jijian.data.training import TrainingData, open_train_loader


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jijian.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
