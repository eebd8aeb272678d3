"""How a collection's fields are stored: in clear, or sealed (`[guard] encrypt_at_rest`).

This is the one place that decides between the two. The row store, the index file and the search
call the codec and never ask whether the collection is encrypted: `PlainCodec` stores values as
they are and indexes words, `SealedCodec` seals values with the collection's `RowCipher` and indexes
blinded terms (`jijian.kb.sealing` says what stays visible).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from jijian.files import write_atomic
from jijian.guard.crypto import decrypt_bytes, encrypt_bytes_to_file
from jijian.kb.lexical import fts_query, index_text
from jijian.kb.sealing import CollectionKeyError, RowCipher


class RowCodec(Protocol):
    """Stored form of a collection's row fields, lexical terms, source names and index file."""

    filters_in_sql: bool  # metadata stored in clear can be filtered by SQLite's JSON functions

    def store(self, record_id: str, field: str, value: bytes) -> bytes | str:
        """The stored form of one field (text and metadata arrive UTF-8 encoded)."""
        ...

    def load(self, record_id: str, field: str, stored: Any) -> Any:
        """The field in clear: bytes for a vector, str for text and metadata; None stays None."""
        ...

    def load_hit_rows(self, found: Iterable[tuple[Any, ...]], ids: dict[int, str]) -> dict[int, tuple[Any, ...]]:
        """rowid -> (text, metadata, readers) in clear, from rows read as (rowid, text, metadata, readers)."""
        ...

    def lexical(self, text: str) -> str:
        """The text as the FTS5 index stores it."""
        ...

    def fts_query(self, text: str) -> str:
        """A user's words as an FTS5 query over what `lexical` stored ('' when nothing is searchable)."""
        ...

    def source_name(self, path: str) -> str:
        """A source path as the ingestion bookkeeping stores it."""
        ...

    def read_file(self, path: Path) -> bytes:
        """The contents of a file written by `write_file`."""
        ...

    def write_file(self, path: Path, payload: bytes) -> None:
        """Replace `path` durably (temporary file, fsync, rename, fsync of the directory) with `payload`."""
        ...


class PlainCodec:
    """A collection stored in clear."""

    filters_in_sql = True

    def store(self, record_id: str, field: str, value: bytes) -> bytes | str:
        """Text and metadata as str, a vector as its bytes."""
        return value if field == "vector" else value.decode("utf-8")

    def load(self, record_id: str, field: str, stored: Any) -> Any:
        """As stored."""
        return stored

    def load_hit_rows(self, found: Iterable[tuple[Any, ...]], ids: dict[int, str]) -> dict[int, tuple[Any, ...]]:
        """As stored (a search's hot path: no call per field)."""
        return {row[0]: row[1:] for row in found}

    def lexical(self, text: str) -> str:
        """The indexed terms (`jijian.kb.lexical`)."""
        return index_text(text)

    def fts_query(self, text: str) -> str:
        """The terms of the query as an FTS5 expression."""
        return fts_query(text)

    def source_name(self, path: str) -> str:
        """The path itself."""
        return path

    def read_file(self, path: Path) -> bytes:
        """The file's bytes."""
        return path.read_bytes()

    def write_file(self, path: Path, payload: bytes) -> None:
        """The payload, written durably (`jijian.files.write_atomic`)."""
        write_atomic(path, payload)


class SealedCodec:
    """A collection encrypted at rest with one `RowCipher`."""

    filters_in_sql = False  # sealed metadata is filtered in Python after opening it

    def __init__(self, cipher: RowCipher) -> None:
        self.cipher = cipher

    def store(self, record_id: str, field: str, value: bytes) -> bytes | str:
        """Sealed, bound to the record id and field name."""
        return self.cipher.seal(record_id, field, value)

    def load(self, record_id: str, field: str, stored: Any) -> Any:
        """Opened; a damaged or moved value is a `CollectionKeyError`."""
        if stored is None:
            return None
        opened = self.cipher.open(record_id, field, stored)
        return opened if field == "vector" else opened.decode("utf-8")

    def load_hit_rows(self, found: Iterable[tuple[Any, ...]], ids: dict[int, str]) -> dict[int, tuple[Any, ...]]:
        """Text and metadata opened (readers are stored in clear)."""
        load = self.load
        return {
            rowid: (load(ids[rowid], "text", text), load(ids[rowid], "metadata", metadata), readers)
            for rowid, text, metadata, readers in found
        }

    def lexical(self, text: str) -> str:
        """Blinded terms."""
        return self.cipher.blind_text(text)

    def fts_query(self, text: str) -> str:
        """The blinded terms of the query."""
        return self.cipher.fts_query(text)

    def source_name(self, path: str) -> str:
        """Its keyed hash: source paths are not kept in clear."""
        return self.cipher.blind_name(path)

    def read_file(self, path: Path) -> bytes:
        """Decrypted (`jijian.guard.crypto`'s chunked format)."""
        return decrypt_bytes(path, self.cipher.file_key)

    def write_file(self, path: Path, payload: bytes) -> None:
        """Encrypted, through the same durable write (`jijian.guard.crypto`)."""
        encrypt_bytes_to_file(payload, path, self.cipher.file_key)


def open_codec(spec: dict[str, Any], key: bytes | None, where: Path) -> RowCodec:
    """The codec of the collection `spec` describes; a missing or wrong key fails here, before any read."""
    cipher = RowCipher.from_spec(spec, key, where)
    if cipher is not None:
        return SealedCodec(cipher)
    if key is not None:
        # With encryption at rest on, a plaintext collection is refused rather than served (and added to).
        raise CollectionKeyError(
            f"{where}: collection {spec['name']!r} is stored in plaintext but "
            "[guard] encrypt_at_rest is on; rebuild it with the key (jijian up, or jijian kb ingest into a "
            "new collection) and delete the plaintext copy"
        )
    return PlainCodec()
