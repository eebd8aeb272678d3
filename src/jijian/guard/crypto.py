"""Encryption at rest: AES-256-GCM files in authenticated chunks, so model weights need not fit in memory.

File layout: `JJENC1` magic, format version (1 byte), chunk size (4 bytes, big endian), a random
8-byte nonce prefix; then chunks of `chunk size` plaintext bytes, each sealed with nonce =
prefix + chunk index (4 bytes) and the header plus a last-chunk flag as associated data. A wrong
key, an edited byte, reordered chunks or a cut-off file all fail authentication and raise
`DecryptionError`; nothing is ever returned unauthenticated. Writes go to a temporary file that
is fsynced and renamed over the target, so a crash never leaves half a file under the real name.

The key (32 bytes) comes from an environment variable or a key file, as base64, hex or raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jijian.config.errors import UserInputError
from jijian.config.schema import GuardConfig
from jijian.files import write_atomic

MAGIC = b"JJENC1"
VERSION = 1
HEADER = struct.Struct(">6sBI8s")
CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 26
TAG_SIZE = 16
KEY_SIZE = 32
DEFAULT_KEY_ENV = "JIJIAN_GUARD_KEY"


class CryptoError(UserInputError):
    """Base of the encryption errors the user can fix (key, file)."""


class KeyMaterialError(CryptoError):
    """No key, or a key that is not 32 bytes in base64, hex or raw form."""


class DecryptionError(CryptoError):
    """The file does not authenticate under this key: wrong key, or the file was modified or cut short."""


class NotEncryptedError(CryptoError):
    """The file does not start with the jijian encryption header."""


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded (what `jijian guard keygen` writes)."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def parse_key(material: bytes | str, where: str) -> bytes:
    """Decode key material (base64, hex or 32 raw bytes) into a 32-byte key; `where` names its origin."""
    if isinstance(material, bytes) and len(material) == KEY_SIZE:
        return material
    text = material.decode("ascii", "replace") if isinstance(material, bytes) else material
    text = text.strip()
    candidates = []
    with contextlib.suppress(ValueError):
        candidates.append(bytes.fromhex(text))
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(text, validate=True))
    for key in candidates:
        if len(key) == KEY_SIZE:
            return key
    raise KeyMaterialError(
        f"{where}: not a 256-bit key (expected 32 bytes as base64 or hex; `jijian guard keygen` makes one)"
    )


def load_key(key_file: str | os.PathLike[str] | None = None, key_env: str = DEFAULT_KEY_ENV) -> bytes:
    """The encryption key from environment variable `key_env` if set, else from `key_file`."""
    value = os.environ.get(key_env)
    if value:
        return parse_key(value, f"environment variable {key_env}")
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise KeyMaterialError(f"key file not found: {path}")
        return parse_key(path.read_bytes(), f"key file {path}")
    raise KeyMaterialError(f"no encryption key: set {key_env} or configure [guard] key_file")


def key_from_config(config: GuardConfig) -> bytes | None:
    """The key `[guard]` asks for (`key_env`, then `key_file`), or None when `encrypt_at_rest` is off."""
    return load_key(config.key_file, config.key_env) if config.encrypt_at_rest else None


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _aad(header: bytes, last: bool) -> bytes:
    return header + (b"\x01" if last else b"\x00")


def _read_chunks(f: BinaryIO, size: int) -> Iterator[tuple[bytes, bool]]:
    """Yield (chunk, is_last) so the last chunk can be sealed differently (that detects truncation)."""
    current = f.read(size)
    while True:
        following = f.read(size)
        yield current, not following
        if not following:
            return
        current = following


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """True if the file starts with the jijian encryption header."""
    with Path(path).open("rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _seal(chunks: Iterator[tuple[bytes, bool]], key: bytes) -> Iterator[bytes]:
    """The encrypted file's bytes: header, then each (chunk, is_last) sealed."""
    aead = AESGCM(parse_key(key, "key"))
    header = HEADER.pack(MAGIC, VERSION, CHUNK_SIZE, secrets.token_bytes(8))
    prefix = header[-8:]
    yield header
    for index, (chunk, last) in enumerate(chunks):
        yield aead.encrypt(_nonce(prefix, index), chunk, _aad(header, last))


def encrypt_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], key: bytes) -> None:
    """Encrypt `src` into `dst` (atomically; `dst` may equal `src`)."""
    src, dst = Path(src), Path(dst)

    def plaintext() -> Iterator[tuple[bytes, bool]]:
        with src.open("rb") as f:
            yield from _read_chunks(f, CHUNK_SIZE)

    write_atomic(dst, _seal(plaintext(), key))


def encrypt_bytes_to_file(data: bytes, dst: str | os.PathLike[str], key: bytes) -> None:
    """Write `data` encrypted into `dst` atomically; the plaintext never touches the disk."""
    write_atomic(Path(dst), _seal(_read_chunks(io.BytesIO(data), CHUNK_SIZE), key))


def decrypt_chunks(src: str | os.PathLike[str], key: bytes) -> Iterator[bytes]:
    """Yield the plaintext of an encrypted file chunk by chunk, each authenticated before it is yielded."""
    src = Path(src)
    aead = AESGCM(parse_key(key, "key"))
    with src.open("rb") as f:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size or header[: len(MAGIC)] != MAGIC:
            raise NotEncryptedError(f"{src}: not a jijian-encrypted file (no {MAGIC.decode()} header)")
        _, version, chunk_size, prefix = HEADER.unpack(header)
        if version != VERSION:
            raise NotEncryptedError(f"{src}: encryption format version {version} is not supported (expected {VERSION})")
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:  # the header is not authenticated until the first chunk is
            raise DecryptionError(f"{src}: damaged header (chunk size {chunk_size})")
        for index, (sealed, last) in enumerate(_read_chunks(f, chunk_size + TAG_SIZE)):
            try:
                yield aead.decrypt(_nonce(prefix, index), sealed, _aad(header, last))
            except InvalidTag:
                raise DecryptionError(
                    f"{src}: cannot decrypt chunk {index}: wrong key, or the file was modified or truncated"
                ) from None


def decrypt_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], key: bytes) -> None:
    """Decrypt `src` into `dst` atomically; on a wrong key or damage `dst` is left untouched."""
    write_atomic(Path(dst), decrypt_chunks(src, key))


def decrypt_bytes(src: str | os.PathLike[str], key: bytes) -> bytes:
    """The whole plaintext of an encrypted file, in memory (for small files such as KB metadata)."""
    return b"".join(decrypt_chunks(src, key))


def encrypt_tree(root: str | os.PathLike[str], key: bytes) -> list[Path]:
    """Encrypt every not-yet-encrypted file under `root` (a file or a directory, e.g. an exported model) in place."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    done = []
    for path in paths:
        if not is_encrypted(path):
            encrypt_file(path, path, key)
            done.append(path)
    return done


def decrypt_tree(root: str | os.PathLike[str], key: bytes) -> list[Path]:
    """Decrypt every encrypted file under `root` in place; stops at the first file that does not authenticate."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    done = []
    for path in paths:
        if is_encrypted(path):
            decrypt_file(path, path, key)
            done.append(path)
    return done


def file_reader(key: bytes | None) -> Callable[[Path], bytes]:
    """A `read_bytes` for model loaders: encrypted files decrypted in memory with `key`, others read as is.

    Nothing decrypted touches the disk. An encrypted file and no key raises `KeyMaterialError` naming it.
    """

    def read(path: Path) -> bytes:
        if not is_encrypted(path):
            return Path(path).read_bytes()
        if key is None:
            raise KeyMaterialError(
                f"{path} is encrypted: set [guard] encrypt_at_rest = true and provide the key "
                f"(key_env or key_file) to read it"
            )
        return decrypt_bytes(path, key)

    return read


def exported_model_writer(guard: GuardConfig) -> Callable[[Path, bytes], None] | None:
    """How a model export writes its files under `[guard]`: each sealed in memory when `encrypt_at_rest`
    is on, so no plaintext reaches the disk; None (plain files) when it is off.

    The key is loaded here, before anything is written: a missing key fails the export up front.
    """
    key = key_from_config(guard)
    if key is None:
        return None

    def write(path: Path, data: bytes) -> None:
        encrypt_bytes_to_file(data, path, key)

    return write


def encrypt_exported_model(
    model_dir: str | os.PathLike[str], guard: GuardConfig, key: bytes | None = None
) -> list[Path]:
    """Encrypt an exported model directory's files in place if `[guard] encrypt_at_rest` is on; returns them.

    `key` is the already loaded key (load it with `key_from_config` before exporting, so a missing key
    fails before any weights are written); by default it is loaded here.
    """
    if not guard.encrypt_at_rest:
        return []
    return encrypt_tree(model_dir, key if key is not None else load_key(guard.key_file, guard.key_env))
