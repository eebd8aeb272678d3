"""What a build stage declares (upstream stages, config sections, input and output paths) and receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console

    from jijian.config import DeployConfig
    from jijian.up.manifest import StageManifest

STAGE_ORDER = ("data", "train", "export", "kb", "serve")


class StageError(Exception):
    """A stage could not finish; the build stops here and the next `jijian up` starts again from it."""


@dataclass
class StageContext:
    """What a running stage may use: the config, where to log, and its upstream stages' manifests."""

    config: DeployConfig
    config_path: Path
    console: Console
    stages: tuple[str, ...]
    upstream: dict[str, StageManifest] = field(default_factory=dict)
    fresh: bool = False  # True when an earlier build of this stage is stale: start over instead of resuming
    node_rank: int = 0  # this machine's index in a multi-node training job


class Stage(Protocol):
    """One step of `jijian up`: declared dependencies on disk and in the config, and the work itself."""

    name: str

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """Stages whose outputs this one reads (only those taking part in the build)."""
        ...

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """The config this stage depends on, by name (each is hashed separately so a change can be named)."""
        ...

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """Files or directories read by this stage that no other stage produces (`base`: the config's directory)."""
        ...

    def outputs(self, config: DeployConfig) -> list[Path]:
        """Files or directories this stage writes."""
        ...

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Do the work; returns a JSON-able summary kept in the stage's manifest."""
        ...


def section(config: DeployConfig, name: str, *keys: str) -> Any:
    """A config section (or some of its keys) as JSON data, for hashing."""
    data = getattr(config, name).model_dump(mode="json")
    return {k: data[k] for k in keys} if keys else data
