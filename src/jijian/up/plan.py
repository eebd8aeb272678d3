"""Which stages run and why: make's rule on content hashes, decided before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jijian.config import DeployConfig, UserInputError
from jijian.up.hashing import MISSING, HashCache, json_hash
from jijian.up.manifest import StageManifest, read_manifest
from jijian.up.stage import STAGE_ORDER, Stage

RUN, UP_TO_DATE, NOT_SELECTED = "will run", "up to date", "not selected"


class StageSelectionError(UserInputError):
    """A stage name that does not exist, or a --from/--only that the build does not include."""


@dataclass
class Fingerprint:
    """The hashes a stage would record if it ran now (upstream outputs are filled in at run time)."""

    config: dict[str, str]
    inputs: dict[str, str]


@dataclass
class Decision:
    """One stage's verdict in a build plan."""

    stage: str
    action: str
    reason: str
    previous: StageManifest | None = None
    fingerprint: Fingerprint | None = None
    stale_build: bool = False  # an earlier build exists but no longer matches: start over, do not resume
    notes: list[str] = field(default_factory=list)


def build_stages(config: DeployConfig) -> tuple[str, ...]:
    """[up] stages, else what the config asks for: data/train/export with [data] sources, kb with kb_sources, serve."""
    if config.up.stages is not None:
        chosen = set(config.up.stages)
    else:
        chosen = {"serve"}
        if config.data.sources:
            chosen |= {"data", "train", "export"}
        if config.up.kb_sources:
            chosen.add("kb")
    return tuple(s for s in STAGE_ORDER if s in chosen)


def check_stage_name(name: str, option: str, stages: tuple[str, ...]) -> None:
    """A clear error for an unknown stage, or one this deployment does not build."""
    if name not in STAGE_ORDER:
        raise StageSelectionError(f"{option} {name!r}: no such stage; the stages are {', '.join(STAGE_ORDER)}")
    if name not in stages:
        raise StageSelectionError(
            f"{option} {name!r}: this deployment builds only {', '.join(stages)} ([up] stages in the config)"
        )


def fingerprint(stage: Stage, config: DeployConfig, base: Path, cache: HashCache) -> Fingerprint:
    """Hash the stage's config sections one by one and its input files by content."""
    sections = {name: json_hash(value) for name, value in stage.config_sections(config).items()}
    inputs = {str(path): cache.tree_hash(path) for path in stage.inputs(config, base)}
    return Fingerprint(sections, inputs)


def output_hashes(stage: Stage, config: DeployConfig, cache: HashCache) -> dict[str, str]:
    """Content hash of each declared output (`missing` for one that is not there)."""
    return {str(path): cache.tree_hash(path, ignore=OUTPUT_NOISE) for path in stage.outputs(config)}


# SQLite's side files come and go as a database is merely opened and closed; they are not content.
OUTPUT_NOISE = ("-wal", "-shm", "-journal")


def plan_build(
    config: DeployConfig,
    stages_by_name: dict[str, Stage],
    base: Path,
    cache: HashCache,
    *,
    only: str | None = None,
    start: str | None = None,
    force: bool = False,
) -> list[Decision]:
    """Decide for each stage of the build whether it runs and why, in build order."""
    stages = build_stages(config)
    for option, name in (("--only", only), ("--from", start)):
        if name is not None:
            check_stage_name(name, option, stages)
    if only is not None and start is not None:
        raise StageSelectionError("give --only or --from, not both")
    decisions: dict[str, Decision] = {}
    for name in STAGE_ORDER:
        if name not in stages:
            decisions[name] = Decision(name, NOT_SELECTED, "not part of this deployment ([up] stages)")
            continue
        stage = stages_by_name[name]
        selected = only is None or name == only
        if start is not None and STAGE_ORDER.index(name) < STAGE_ORDER.index(start):
            selected = False
        previous = read_manifest(config.up.state_dir, name)
        upstream = stage.upstream(config, stages)
        if not selected:
            reason = f"before --from {start}" if start is not None else f"--only {only}"
            kept = previous if isinstance(previous, StageManifest) else None
            decisions[name] = Decision(name, NOT_SELECTED, reason, previous=kept)
            continue
        current = fingerprint(stage, config, base, cache)
        reason, stale = _why_run(stage, config, cache, current, previous, upstream, decisions)
        from_here = start is not None and STAGE_ORDER.index(name) >= STAGE_ORDER.index(start)
        if force or name == only or from_here:
            flag = "--force" if force else "--only" if only else "--from"
            reason = flag + (f" ({reason})" if reason else "")
            stale = True
        manifest = previous if isinstance(previous, StageManifest) else None
        action = RUN if reason else UP_TO_DATE
        decisions[name] = Decision(name, action, reason or "nothing changed", manifest, current, stale)
    for name in stages:  # a stage whose upstream is not built cannot run
        decision = decisions[name]
        if decision.action != RUN:
            continue
        for up in stages_by_name[name].upstream(config, stages):
            if decisions[up].action == NOT_SELECTED and decisions[up].previous is None:
                raise StageSelectionError(
                    f"stage {name!r} needs the outputs of stage {up!r}, which has not been built yet: "
                    f"run `jijian up` without --only/--from first"
                )
    return [decisions[name] for name in STAGE_ORDER]


def _why_run(
    stage: Stage,
    config: DeployConfig,
    cache: HashCache,
    current: Fingerprint,
    previous: StageManifest | str | None,
    upstream: list[str],
    decisions: dict[str, Decision],
) -> tuple[str, bool]:
    """The first reason the stage must run ('' when it is up to date), and whether its old build is stale."""
    if previous is None:
        return "never built (or its last build did not finish)", False
    if isinstance(previous, str):
        return previous, False
    for up in upstream:
        if decisions[up].action == RUN:
            return f"upstream stage {up} runs", True
    changed = [name for name, digest in current.config.items() if previous.config.get(name) != digest]
    if changed or previous.config.keys() != current.config.keys():
        return f"config changed: {', '.join(changed) or 'sections'}", True
    for path, digest in current.inputs.items():
        if previous.inputs.get(path) != digest:
            what = "missing" if digest == MISSING else "changed" if path in previous.inputs else "new"
            return f"input {what}: {path}", True
    removed = previous.inputs.keys() - current.inputs.keys()
    if removed:
        return f"input removed: {sorted(removed)[0]}", True
    for up in upstream:
        recorded, built = previous.upstream.get(up), decisions[up].previous
        if built is None or recorded != built.outputs_hash:
            return f"output of stage {up} changed since this stage was built", True
    # Same config and inputs: whatever of the old build survives (training checkpoints) may be resumed.
    for path, digest in output_hashes(stage, config, cache).items():
        if digest == MISSING:
            return f"output missing: {path}", False
        if previous.outputs.get(path) != digest:
            return f"output changed on disk: {path}", False
    return "", False
