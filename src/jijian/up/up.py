"""`jijian up` as a function: load the config, plan the build, print the plan, run what is stale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jijian.config import DeployConfig, load_config
from jijian.up.plan import RUN, UP_TO_DATE, Decision, StageSelectionError, plan_build
from jijian.up.runner import BuildReport, hash_cache, run_build
from jijian.up.stages import STAGES


@dataclass
class UpOptions:
    """The command line of `jijian up`."""

    only: str | None = None
    start: str | None = None
    force: bool = False
    dry_run: bool = False
    node_rank: int = 0
    overrides: dict[str, Any] | None = None


@dataclass
class UpOutcome:
    """The loaded config, the plan, and (unless a dry run) what the build did."""

    config: DeployConfig
    decisions: list[Decision]
    report: BuildReport | None


def up(config_path: Path, options: UpOptions, console: Console) -> UpOutcome:
    """Plan the build, print the plan (and the train estimate), then run the stale stages unless dry."""
    config = load_config(config_path, options.overrides)
    if options.node_rank > 0 and options.only != "train":
        raise StageSelectionError("--node-rank N > 0 joins a multi-node training job: use it with --only train")
    base = config_path.resolve().parent
    cache = hash_cache(config)
    decisions = plan_build(config, STAGES, base, cache, only=options.only, start=options.start, force=options.force)
    print_plan(config_path, decisions, console)
    train = next(d for d in decisions if d.stage == "train")
    if train.action == RUN or (options.dry_run and train.action == UP_TO_DATE):
        print_estimate(config, console)
    if options.dry_run:
        console.print("dry run: nothing was built or written")
        return UpOutcome(config, decisions, None)
    if not any(d.action == RUN for d in decisions):
        console.print("[green]everything up to date[/]: nothing to run")
    report = run_build(config, config_path, STAGES, decisions, cache, console, node_rank=options.node_rank)
    cache.save()  # hashes of files touched but unchanged: the next build need not read them again
    if report.ran:
        console.print(f"[green]built[/] {', '.join(report.ran)}")
    return UpOutcome(config, decisions, report)


def print_plan(config_path: Path, decisions: list[Decision], console: Console) -> None:
    """One row per stage: will run / up to date / not selected, and why."""
    table = Table(title=f"jijian up {config_path}", title_justify="left")
    table.add_column("stage")
    table.add_column("plan")
    table.add_column("why")
    styles = {RUN: "bold yellow", UP_TO_DATE: "green"}
    for d in decisions:
        style = styles.get(d.action, "dim")
        table.add_row(d.stage, f"[{style}]{d.action}[/]", escape(d.reason))
    console.print(table)


def print_estimate(config: DeployConfig, console: Console) -> None:
    """The planner's estimate for the train stage (a config the planner cannot place is reported, not fatal)."""
    from jijian.plan import PlanError
    from jijian.up.estimate import estimate_training

    try:
        estimate = estimate_training(config)
    except (PlanError, IndexError) as exc:
        console.print(f"train estimate: the planner found no layout that fits ({exc or 'none fits in memory'})")
        return
    console.print(f"train estimate (jijian.plan): {escape(estimate.describe())}", soft_wrap=True)
    if config.up.train_minutes is not None:
        note = (
            f"  (the train stage sizes [train] steps to [up] train_minutes = {config.up.train_minutes:g} from a "
            "step it measures; the estimate sizes them from the predicted step"
            + ("" if estimate.accelerator.startswith("local") else "; `jijian plan calibrate` profiles this machine")
            + ")"
        )
        console.print(escape(note), soft_wrap=True)
