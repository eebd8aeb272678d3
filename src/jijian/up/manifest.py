"""A stage's manifest: what it was built from and what it produced, written atomically after its outputs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1


@dataclass
class StageManifest:
    """The record that makes a stage 'up to date': hashes of its config, inputs, upstream and outputs."""

    stage: str
    config: dict[str, str]
    inputs: dict[str, str]
    upstream: dict[str, str]
    outputs: dict[str, str]
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: str = ""
    format: int = FORMAT

    @property
    def outputs_hash(self) -> str:
        """One hash of every output, which downstream stages record as their upstream input."""
        from jijian.up.hashing import json_hash

        return json_hash(self.outputs)


def manifest_path(state_dir: Path, stage: str) -> Path:
    """Where stage `stage` keeps its manifest."""
    return state_dir / f"{stage}.json"


def read_manifest(state_dir: Path, stage: str) -> StageManifest | str | None:
    """The stage's manifest; None when there is none; a reason string when it cannot be used."""
    path = manifest_path(state_dir, stage)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("stage") != stage:
            return f"manifest {path} is from another version or stage"
        return StageManifest(**data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return f"manifest {path} is unreadable ({exc.__class__.__name__})"


def write_manifest(state_dir: Path, manifest: StageManifest) -> Path:
    """Write the manifest atomically (temporary file, fsync, rename): it is there whole or not at all."""
    from jijian.files import write_json_atomic

    state_dir.mkdir(parents=True, exist_ok=True)
    path = manifest_path(state_dir, manifest.stage)
    write_json_atomic(path, asdict(manifest))
    return path


def remove_manifest(state_dir: Path, stage: str) -> None:
    """Forget a stage's last build (before it runs again, so a half-written output is never trusted)."""
    manifest_path(state_dir, stage).unlink(missing_ok=True)
