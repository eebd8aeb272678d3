"""Where the dashboard finds each part of the deployment, taken from `deploy.toml`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jijian.config import DeployConfig
from jijian.guard.audit import load_audit_key

if TYPE_CHECKING:
    from jijian.kb import KnowledgeBase


@dataclass
class DashboardSources:
    """The deployment's parts the dashboard reads; any of them may be missing (an empty state is shown)."""

    name: str = "jijian"
    train_dir: Path | None = None  # `[train] output_dir`: a run directory, or a directory of runs
    checkpoint_dir: Path | None = None  # `[checkpoint] dir` when set (else each run's checkpoints/)
    kb: KnowledgeBase | None = None
    audit_log: Path | None = None  # `[guard] audit_log`
    audit_key: bytes | None = field(default=None, repr=False)  # `[guard] audit_key_env` / `audit_key_file`
    currency: str = "CNY"

    @classmethod
    def from_config(cls, config: DeployConfig, kb: KnowledgeBase | None = None) -> DashboardSources:
        """The sources one deployment config names."""
        return cls(
            name=config.name,
            train_dir=config.train.output_dir,
            checkpoint_dir=config.checkpoint.dir,
            kb=kb,
            audit_log=config.guard.audit_log,
            audit_key=load_audit_key(config.guard.audit_key_file, config.guard.audit_key_env),
            currency=config.hardware.currency,
        )
