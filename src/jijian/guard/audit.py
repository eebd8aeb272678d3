"""Tamper-evident audit log: append-only JSON lines, each entry hash-chained to the one before.

Line i (1-based) holds `{"seq": i, "ts": ..., "event": {...}, "prev": <hash of line i-1>, "hash": ...}`
where `hash = sha256(prev + canonical JSON of the entry without "hash")`. Editing, deleting or
reordering lines breaks the chain at the first affected line. Deleting lines from the END leaves a
valid chain, so the tip (last seq and hash) is also kept in `<log>.tip`, replaced atomically after
every append; `verify_audit` compares the two and so catches truncation too. Appends are serialised
by a thread lock and an exclusive `flock`, so threads and processes can share one log, and each
append is fsynced before it returns.

A plain hash chain only shows that nobody edited the log *without recomputing the hashes*; someone
who can write the file can rewrite it and its tip consistently. With an HMAC key (`[guard]
audit_key_env` / `audit_key_file`), each entry is marked `"keyed": true` and its hash is
HMAC-SHA256(key, prev + canonical JSON): without the key nobody can produce a chain that verifies.
`verify_audit(path, key)` then demands that every entry is keyed; without the key it can check only
the links and sequence of a keyed log, and says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jijian.config.errors import UserInputError
from jijian.files import write_json_atomic

GENESIS = "0" * 64
MIN_KEY_BYTES = 16


class AuditLogError(UserInputError):
    """The audit log cannot be appended to (its tip is damaged) or read."""


def _entry_hash(entry: dict[str, Any], key: bytes | None = None) -> str:
    body = {k: value for k, value in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    message = (str(entry.get("prev", "")) + canonical).encode("utf-8")
    if key is not None:
        return hmac.new(key, message, hashlib.sha256).hexdigest()
    return hashlib.sha256(message).hexdigest()


def load_audit_key(key_file: str | os.PathLike[str] | None, key_env: str | None) -> bytes | None:
    """The audit HMAC key: the environment variable `key_env` if set, else the file's contents, else None."""
    value = os.environ.get(key_env, "") if key_env else ""
    source = f"environment variable {key_env}"
    if not value and key_file is not None:
        try:
            value = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise AuditLogError(f"{key_file}: cannot read the audit key ({e})") from None
        source = str(key_file)
        if not value:
            raise AuditLogError(f"{key_file}: the audit key file is empty")
    if not value:
        return None
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise AuditLogError(f"{source}: the audit key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def _tip_path(path: Path) -> Path:
    return path.with_name(path.name + ".tip")




def _last_line(path: Path) -> bytes | None:
    """The last complete line of a file, read backwards from the end (logs grow large)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block, data = 4096, b""
        while size > 0:
            step = min(block, size)
            size -= step
            f.seek(size)
            data = f.read(step) + data
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or size == 0:
                return lines[-1] if lines[-1] else None
    return None


class AuditLog:
    """An append-only, hash-chained audit log file, safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike[str], key: bytes | None = None) -> None:
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise AuditLogError(f"the audit key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self.key = key
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _read_tip(self) -> tuple[int, str]:
        tip = _tip_path(self.path)
        if tip.exists():
            try:
                data = json.loads(tip.read_text(encoding="utf-8"))
                return int(data["seq"]), str(data["hash"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditLogError(f"{tip}: damaged audit tip ({exc}); run `jijian guard verify-audit`") from None
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        # A log written before tips existed, or whose tip was lost: continue from its last line.
        line = _last_line(self.path)
        try:
            last = json.loads(line or b"")
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(
                f"{self.path}: last line is not an audit entry; run `jijian guard verify-audit`"
            ) from None

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event (a JSON-serialisable dict) durably and return the written entry."""
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev = self._read_tip()
                entry: dict[str, Any] = {"seq": seq + 1, "ts": round(time.time(), 6), "event": event, "prev": prev}
                if self.key is not None:
                    entry["keyed"] = True
                entry["hash"] = _entry_hash(entry, self.key)
                f.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
                self._write_tip(entry["seq"], entry["hash"])
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return entry

    def _write_tip(self, seq: int, digest: str) -> None:
        write_json_atomic(_tip_path(self.path), {"seq": seq, "hash": digest}, indent=None)


@dataclass(frozen=True)
class AuditVerdict:
    """Result of verifying a log: ok, how many entries are good, and the first bad line with why."""

    ok: bool
    entries: int
    bad_line: int | None = None
    reason: str = ""


def verify_audit(path: str | os.PathLike[str], key: bytes | None = None) -> AuditVerdict:
    """Check every line's chain link and hash (HMAC with `key`), and the end of the log against its tip file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audit log not found: {path}")
    prev, count, unchecked = GENESIS, 0, 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                return AuditVerdict(False, count, lineno, "incomplete last line (truncated write)")
            try:
                entry = json.loads(raw)
            except ValueError:
                return AuditVerdict(False, count, lineno, "not valid JSON")
            if not isinstance(entry, dict) or not {"seq", "prev", "hash", "event"} <= entry.keys():
                return AuditVerdict(False, count, lineno, "not an audit entry (seq, event, prev, hash missing)")
            if entry["seq"] != lineno:
                return AuditVerdict(False, count, lineno, f"seq {entry['seq']} where {lineno} was expected "
                                    "(a line was deleted, inserted or moved)")  # fmt: skip
            if entry["prev"] != prev:
                return AuditVerdict(False, count, lineno, "prev does not match the previous line's hash")
            keyed = entry.get("keyed") is True
            if key is not None and not keyed:
                return AuditVerdict(False, count, lineno, "entry is not authenticated with the audit key (HMAC)")
            if keyed and key is None:
                unchecked += 1  # links and sequence still checked; the HMAC needs the key
            elif not hmac.compare_digest(_entry_hash(entry, key if keyed else None), str(entry["hash"])):
                what = (
                    "HMAC does not match the entry (it was edited, or the key differs)"
                    if keyed
                    else "hash does not match the entry (it was edited)"
                )
                return AuditVerdict(False, count, lineno, what)
            prev, count = entry["hash"], lineno
    tip = _tip_path(path)
    if tip.exists():
        try:
            data = json.loads(tip.read_text(encoding="utf-8"))
            tip_seq, tip_hash = int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError):
            return AuditVerdict(False, count, count + 1, f"tip file {tip.name} is damaged")
        if tip_seq != count or tip_hash != prev:
            if tip_seq > count:
                return AuditVerdict(False, count, count + 1, f"log ends at entry {count} but {tip.name} "
                                    f"records {tip_seq} entries (lines were removed from the end)")  # fmt: skip
            return AuditVerdict(False, count, tip_seq + 1, f"{tip.name} does not match the log's last entry")
    if unchecked:
        return AuditVerdict(True, count, None, f"{unchecked} HMAC-keyed entries: links checked, HMACs need the key")
    return AuditVerdict(True, count)
