"""Run the stages a plan marks, each followed by its manifest, stopping at the first that fails."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from jijian.config import DeployConfig, UserInputError
from jijian.up.hashing import HashCache
from jijian.up.manifest import StageManifest, remove_manifest, write_manifest
from jijian.up.plan import RUN, Decision, build_stages, output_hashes
from jijian.up.stage import Stage, StageContext

HASH_CACHE = "hash-cache.json"


class StageFailed(Exception):
    """A stage raised; the build stopped there. Stages finished before it keep their manifests."""

    def __init__(self, stage: str, message: str, user_error: bool) -> None:
        self.stage = stage
        self.user_error = user_error
        super().__init__(f"stage {stage} failed: {message}")


@dataclass
class BuildReport:
    """What a build ran, and every stage's latest result."""

    ran: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def hash_cache(config: DeployConfig) -> HashCache:
    """The build's (size, mtime_ns) -> sha256 cache, kept with the manifests."""
    return HashCache(config.up.state_dir / HASH_CACHE)


def run_build(
    config: DeployConfig,
    config_path: Path,
    stages_by_name: dict[str, Stage],
    decisions: list[Decision],
    cache: HashCache,
    console: Console,
    node_rank: int = 0,
) -> BuildReport:
    """Run each stage marked to run, in order; write its manifest after its outputs are complete."""
    stages = build_stages(config)
    manifests: dict[str, StageManifest] = {d.stage: d.previous for d in decisions if d.previous is not None}
    report = BuildReport(results={name: m.result for name, m in manifests.items()})
    for decision in decisions:
        if decision.action != RUN:
            continue
        name = decision.stage
        stage = stages_by_name[name]
        assert decision.fingerprint is not None
        console.rule(f"[bold]{name}[/]: {escape(decision.reason)}")
        # Forget the old build first: if this run dies half-way, the stage is not mistaken for up to date.
        remove_manifest(config.up.state_dir, name)
        upstream = {up: manifests[up] for up in stage.upstream(config, stages) if up in manifests}
        ctx = StageContext(
            config, config_path, console, stages, upstream, fresh=decision.stale_build, node_rank=node_rank
        )
        started = time.perf_counter()
        try:
            result = stage.run(ctx)
        except Exception as exc:
            cache.save()
            user_error = isinstance(exc, UserInputError)
            if not user_error and not _is_stage_error(exc):
                console.print(traceback.format_exc(), markup=False, highlight=False)
            raise StageFailed(name, str(exc) or exc.__class__.__name__, user_error) from exc
        seconds = time.perf_counter() - started
        report.ran.append(name)
        report.seconds[name] = seconds
        report.results[name] = result
        if node_rank > 0:
            continue  # node 0 records the build; other nodes of a training job only lend their ranks
        manifest = StageManifest(
            stage=name,
            config=decision.fingerprint.config,
            inputs=decision.fingerprint.inputs,
            upstream={up: m.outputs_hash for up, m in upstream.items()},
            outputs=output_hashes(stage, config, cache),
            result=result,
            seconds=round(seconds, 1),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_manifest(config.up.state_dir, manifest)
        cache.save()
        manifests[name] = manifest
        console.print(f"[green]{name} done[/] in {seconds:.0f} s")
    return report


def _is_stage_error(exc: BaseException) -> bool:
    from jijian.up.stage import StageError

    return isinstance(exc, StageError)
