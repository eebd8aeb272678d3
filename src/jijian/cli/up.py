"""`jijian up deploy.toml`: build the deployment (data → train → export → kb → serve) like make builds a program."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jijian.cli.common import DefaultCommandGroup, err_console, fail, reports_errors

up_app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Build the deployment a deploy.toml describes (`jijian up deploy.toml`): run the stages whose outputs "
    "are missing or stale. Options (--dry-run, --from, --only, --force, --serve): `jijian up run --help`.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@up_app.command("run")
@reports_errors
def up_run(
    config: Annotated[Path, typer.Argument(help="deploy.toml describing the deployment")],
    start: Annotated[
        str | None, typer.Option("--from", help="run this stage and every later one, even if up to date")
    ] = None,
    only: Annotated[str | None, typer.Option("--only", help="run just this stage, even if up to date")] = None,
    force: Annotated[bool, typer.Option("--force", help="run every stage of the build, even if up to date")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan and the training estimate; build and write nothing")
    ] = False,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="this node's index in a multi-node training job (with --only train)")
    ] = 0,
    serve: Annotated[
        bool, typer.Option("--serve", help="after the build, keep serving ([serve] host:port) until interrupted")
    ] = False,
) -> None:
    """Run the stages whose outputs are missing or whose inputs or config changed; then exit (or --serve)."""
    from jijian.up.runner import StageFailed
    from jijian.up.up import UpOptions, up

    options = UpOptions(only=only, start=start, force=force, dry_run=dry_run, node_rank=node_rank)
    try:
        outcome = up(config, options, err_console)
    except StageFailed as exc:
        raise fail(
            f"{exc}\nthe stages before it are built and kept; run `jijian up {config}` again to continue from "
            f"{exc.stage}",
            code=2 if exc.user_error else 1,
        ) from None
    if serve and not dry_run:
        from jijian.serve.server import run_server
        from jijian.up.stages.serve import served_config

        served = served_config(outcome.config)
        err_console.print(f"serving on http://{served.serve.host}:{served.serve.port} (Ctrl-C stops)")
        run_server(served)
