"""Encryption at rest of one collection: sealed row fields, blinded lexical tokens, a sealed index file.

With `[guard] encrypt_at_rest`, no document text, metadata or vector is on disk in clear:

* a row's text, metadata and vector are each sealed with AES-256-GCM (random 96-bit nonce), with the
  collection, record id and field name as associated data: a ciphertext copied to another row or
  field does not open;
* the FTS5 lexical index holds blinded terms: a truncated HMAC-SHA256 of each lower-cased word (and
  of each CJK bigram, `jijian.kb.lexical`) under a key of its own. BM25 still ranks, because term and
  document frequencies survive blinding; queries are blinded the same way. What stays visible is
  which rows share a (blinded) term and term counts;
* the vector index snapshot goes through the chunked file format of `jijian.guard.crypto`;
* source paths in the ingestion bookkeeping are stored blinded.

Record ids and ACL reader lists stay in clear: id lookups and the ACL condition run in SQL on them.
Metadata filters are evaluated in Python on the decrypted metadata (`jijian.kb.filters.matches`).

Keys are derived from the master key with HKDF-SHA256, one per purpose, salted with the collection
name. `collection.json` holds a sealed check value, so a wrong key fails on open, before any read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jijian.config.errors import UserInputError
from jijian.kb.lexical import index_terms, query_terms

SCHEME = "aes-256-gcm+hmac-sha256-tokens/1"
_CHECK = b"jijian knowledge-base key check"
_NONCE = 12


class CollectionKeyError(UserInputError):
    """An encrypted collection opened without its key, with the wrong key, or with damaged rows."""


class RowCipher:
    """The keys of one encrypted collection and what is done with them."""

    def __init__(self, master_key: bytes, collection: str) -> None:
        self.collection = collection

        def derive(purpose: bytes) -> bytes:
            return HKDF(SHA256(), 32, salt=collection.encode("utf-8"), info=purpose).derive(master_key)

        self._rows = AESGCM(derive(b"jijian kb rows"))
        self._tokens = derive(b"jijian kb lexical tokens")
        self.file_key = derive(b"jijian kb index file")

    @classmethod
    def new_spec(cls, master_key: bytes, collection: str) -> dict[str, str]:
        """The `encryption` entry of a new collection's collection.json (scheme and key check)."""
        check = cls(master_key, collection).seal("", "key-check", _CHECK)
        return {"scheme": SCHEME, "check": base64.b64encode(check).decode("ascii")}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], master_key: bytes | None, where: Path) -> RowCipher | None:
        """The cipher of the collection `spec` describes (None if it is not encrypted); checks the key."""
        entry = spec.get("encryption")
        name = spec["name"]
        if entry is None:
            return None
        if entry.get("scheme") != SCHEME:
            raise CollectionKeyError(f"{where}: collection {name!r} uses unknown encryption {entry.get('scheme')!r}")
        if master_key is None:
            raise CollectionKeyError(
                f"{where}: collection {name!r} is encrypted: set [guard] encrypt_at_rest = true and provide the key "
                f"(key_env or key_file)"
            )
        cipher = cls(master_key, name)
        try:
            cipher._rows.decrypt(*_split(base64.b64decode(entry["check"])), cipher._aad("", "key-check"))
        except InvalidTag:
            raise CollectionKeyError(f"{where}: wrong encryption key for collection {name!r}") from None
        return cipher

    def _aad(self, record_id: str, field: str) -> bytes:
        return "\0".join((self.collection, record_id, field)).encode("utf-8")

    def seal(self, record_id: str, field: str, data: bytes) -> bytes:
        """Nonce + ciphertext of one field of one row."""
        nonce = os.urandom(_NONCE)
        return nonce + self._rows.encrypt(nonce, data, self._aad(record_id, field))

    def open(self, record_id: str, field: str, blob: bytes) -> bytes:
        """The plaintext of a sealed field; a damaged or moved value is a `CollectionKeyError`."""
        try:
            return self._rows.decrypt(*_split(blob), self._aad(record_id, field))
        except (InvalidTag, ValueError):
            raise CollectionKeyError(
                f"collection {self.collection!r}: the {field} of record {record_id!r} does not authenticate "
                f"(damaged or moved)"
            ) from None

    def _blind(self, word: str) -> str:
        return "b" + hmac.new(self._tokens, word.encode("utf-8"), hashlib.sha256).hexdigest()[:24]

    def blind_text(self, text: str) -> str:
        """The text as the lexical index stores it: one blinded token per term (`jijian.kb.lexical`), in order."""
        return " ".join(self._blind(term) for term in index_terms(text))

    def fts_query(self, text: str) -> str:
        """A user's words as an FTS5 query over blinded tokens: any may match (BM25 ranks them).

        A lone CJK character matches only where it is stored as a term of its own (the last character
        of a run): prefix queries cannot see through the hash.
        """
        return " OR ".join(f'"{self._blind(term)}"' for term, _ in query_terms(text))

    def blind_name(self, name: str) -> str:
        """A name (a source path) as stored: its full keyed hash."""
        return hmac.new(self._tokens, b"name\0" + name.encode("utf-8"), hashlib.sha256).hexdigest()


def _split(blob: bytes) -> tuple[bytes, bytes]:
    if len(blob) < _NONCE + 16:
        raise ValueError("sealed value too short")
    return blob[:_NONCE], blob[_NONCE:]
