"""Duplicate removal: exact copies by content hash, near copies by MinHash LSH over 5-gram shingles.

A shingle is five consecutive tokens, and a token is a word in space-separated scripts but a single
character in Chinese and Japanese, which put no spaces between words: a Chinese document is shingled
by character 5-grams, an English one by word 5-grams, and a mixed one by both, decided by its text.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

SHINGLE_WORDS = 5
# One fixed seed: signatures computed in different worker processes must be comparable.
MINHASH_SEED = 1
# The permutation scheme travels apart from the hash values (they cross process boundaries as arrays).
MINHASH_SCHEME = "affine32"
# Hiragana, katakana and CJK ideographs (Hangul is left out: Korean puts spaces between words).
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_ANY = re.compile(f"[{_CJK_CHARS}]")
_WORD = re.compile(r"\w+")
_TOKEN = re.compile(rf"[{_CJK_CHARS}]|(?:(?![{_CJK_CHARS}])\w)+")
# An odd 64-bit multiplier (from splitmix64) that spreads word hashes across the window.
_MIX = 0x9E3779B97F4A7C15


def content_hash(text: str) -> str:
    """Hex digest identifying a document's exact content."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def shingle_hashes(text: str) -> np.ndarray:
    """Distinct 32-bit hashes of the document's lower-cased token 5-grams (of all its tokens when shorter)."""
    lowered = text.lower()
    # Word regex first (C speed); only text holding CJK pays for the per-character tokenizer.
    words = _TOKEN.findall(lowered) if _CJK_ANY.search(lowered) else _WORD.findall(lowered)
    # Hash each word once (C speed), then combine windows of words with numpy: no Python string per shingle.
    word_hashes = np.array([zlib.crc32(w.encode("utf-8")) for w in words] or [0], dtype=np.uint64)
    width = min(SHINGLE_WORDS, len(word_hashes))
    count = len(word_hashes) - width + 1
    combined = np.zeros(count, dtype=np.uint64)
    for k in range(width):
        combined = combined * np.uint64(_MIX) + word_hashes[k : k + count]
    folded = (combined >> np.uint64(32)) ^ (combined & np.uint64(0xFFFFFFFF))
    return np.unique(folded.astype(np.uint32))


def minhash_signature(text: str, num_perm: int) -> np.ndarray:
    """MinHash signature of the document's token 5-gram set."""
    # The shingles arrive already hashed, so the hash function is the identity (`int`).
    minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME, hashfunc=int)
    minhash.update_batch(shingle_hashes(text).tolist())
    signature: np.ndarray = minhash.hashvalues
    return signature


class Deduplicator:
    """Remembers every kept document; says whether a new one is an exact or a near copy of one of them."""

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.exact = exact
        self.near = near
        self.threshold = threshold
        self.num_perm = num_perm
        self._hashes: set[str] = set()
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
        # The kept documents' signatures, so that the index can be saved as plain arrays (no pickle) and rebuilt.
        self._signatures: list[np.ndarray] = []
        self._count = 0

    def check(self, digest: str, signature: np.ndarray | None) -> str | None:
        """'exact_duplicate', 'near_duplicate' or None (new: remembered from now on)."""
        if self.exact and digest in self._hashes:
            return "exact_duplicate"
        minhash = None
        if self._lsh is not None and signature is not None:
            minhash = LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)
            if self._lsh.query(minhash):
                return "near_duplicate"
        self._hashes.add(digest)
        if minhash is not None and self._lsh is not None:
            self._lsh.insert(self._count, minhash, check_duplication=False)
            self._signatures.append(np.asarray(signature, dtype=np.uint64))
        self._count += 1
        return None

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Settings (JSON) and remembered documents (arrays) from which `from_state` rebuilds this index."""
        settings = {
            "exact": self.exact, "near": self.near, "threshold": self.threshold,
            "num_perm": self.num_perm, "count": self._count,
        }  # fmt: skip
        signatures = np.stack(self._signatures) if self._signatures else np.zeros((0, self.num_perm), np.uint64)
        return settings, {"hashes": np.array(sorted(self._hashes), dtype=str), "signatures": signatures}

    @classmethod
    def from_state(cls, settings: dict[str, Any], arrays: dict[str, np.ndarray]) -> Deduplicator:
        """The index `to_state` described: the same answers for every later document."""
        dedup = cls(
            exact=bool(settings["exact"]), near=bool(settings["near"]),
            threshold=float(settings["threshold"]), num_perm=int(settings["num_perm"]),
        )  # fmt: skip
        dedup._hashes = {str(h) for h in arrays["hashes"]}
        dedup._count = int(settings["count"])
        for key, signature in enumerate(arrays["signatures"]):
            # Keys only need to be unique within the index; the original keys were never exposed.
            minhash = LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)
            if dedup._lsh is not None:
                dedup._lsh.insert(key, minhash, check_duplication=False)
                dedup._signatures.append(np.asarray(signature, dtype=np.uint64))
        return dedup
