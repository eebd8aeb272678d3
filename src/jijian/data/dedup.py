"""Duplicate removal: exact copies by content hash, near copies by MinHash LSH over word 5-grams."""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

SHINGLE_WORDS = 5
# One fixed seed: signatures computed in different worker processes must be comparable.
MINHASH_SEED = 1
# The permutation scheme travels apart from the hash values (they cross process boundaries as arrays).
MINHASH_SCHEME = "affine32"
_WORD = re.compile(r"\w+")


def content_hash(text: str) -> str:
    """Hex digest identifying a document's exact content."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def minhash_signature(text: str, num_perm: int) -> np.ndarray:
    """MinHash of the document's lower-cased word 5-grams (the whole word set for shorter documents)."""
    words = _WORD.findall(text.lower())
    if len(words) <= SHINGLE_WORDS:
        shingles = {" ".join(words)}
    else:
        shingles = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}
    minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
    minhash.update_batch([s.encode("utf-8") for s in shingles])
    return minhash.hashvalues


class Deduplicator:
    """Remembers every kept document; says whether a new one is an exact or a near copy of one of them."""

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.exact = exact
        self.near = near
        self.num_perm = num_perm
        self._hashes: set[str] = set()
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
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
        self._count += 1
        return None
