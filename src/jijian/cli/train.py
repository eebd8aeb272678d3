"""`jijian train`: run training (in-process or through torchrun) and report on finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jijian.cli.common import DefaultCommandGroup, err_console, fail, reports_errors

train_app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Train a model (`jijian train deploy.toml`), or report on a run (`jijian train report RUN_DIR`).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@train_app.command("run")
@reports_errors
def train_run(
    config: Annotated[Path, typer.Argument(help="deploy.toml describing the run")],
    nproc_per_node: Annotated[
        int | None, typer.Option(help="ranks on this node; default: the GPU count, or the layout's world size on CPU")
    ] = None,
    nnodes: Annotated[int, typer.Option(help="nodes taking part (multi-node needs --rdzv-endpoint)")] = 1,
    node_rank: Annotated[int, typer.Option(help="this node's index, 0 .. nnodes-1")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="HOST:PORT of the rendezvous (multi-node)")] = None,
    max_restarts: Annotated[int, typer.Option(help="restart the job this many times when a rank dies")] = 0,
) -> None:
    """Train [model] on [data] as [train] and [parallel] say; saves the model in Hugging Face format."""
    import os

    from jijian.config import load_config
    from jijian.train.launch import launch, plan_launch

    cfg = load_config(config)
    if "LOCAL_RANK" not in os.environ:
        plan = plan_launch(cfg, nproc_per_node, nnodes)  # an impossible layout fails here, before any rank starts
        if plan.world_size > 1:
            err_console.print(f"launching {plan.world_size} ranks: {plan.layout.describe()}")
            code = launch(config, plan, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts)
            if code:
                raise fail(f"training failed (torchrun exit code {code}); see the rank logs above", code=code)
            _print_outcome(cfg.train.output_dir)
            return
    from jijian.train import run_training

    run_training(cfg, console=err_console)
    _print_outcome(cfg.train.output_dir)


def _print_outcome(output_dir: Path) -> None:
    import json

    summary_path = output_dir / "summary.json"
    if not summary_path.is_file():
        return
    s = json.loads(summary_path.read_text(encoding="utf-8"))
    val = f", validation loss {s['val_loss']:.3f}" if s.get("val_loss") is not None else ""
    err_console.print(f"trained {s['steps']} steps ({s['tokens']:,} tokens) in {s['elapsed_s']:.0f} s{val}")
    err_console.print(f"model: {output_dir / 'model'}\nmetrics: {output_dir / 'metrics.jsonl'}")


@train_app.command("report")
@reports_errors
def train_report(
    run_dir: Annotated[Path, typer.Argument(help="a run's output directory (holds metrics.jsonl)")],
    out: Annotated[Path | None, typer.Option(help="where to write the PNG plots; default: RUN_DIR/report")] = None,
) -> None:
    """Plot loss, throughput and MFU as PNG files and print a summary table."""
    from rich.table import Table

    from jijian.train.report import build_report

    report = build_report(run_dir, out or run_dir / "report")
    table = Table(title=f"run {run_dir}", show_header=False)
    for key, value in report.summary.items():
        table.add_row(key, value)
    from jijian.cli.common import out_console

    out_console.print(table)
    for plot in report.plots:
        err_console.print(f"wrote {plot}")


@train_app.command("export")
@reports_errors
def train_export(
    run_dir: Annotated[Path, typer.Argument(help="a run's output directory (holds deploy.toml)")],
    to: Annotated[Path, typer.Option(help="the Hugging Face model directory to write")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="a checkpoint directory; default: the newest valid one of the run")
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="LoRA run: fold the adapters into the base weights (default: PEFT adapter)")
    ] = False,
) -> None:
    """Consolidate a sharded checkpoint into HF format (config.json + safetensors + tokenizer).

    A LoRA run exports its adapter (adapter_config.json + adapter_model.safetensors, PEFT's format),
    or with --merge a whole model with the adapters folded in.

    With `[guard] encrypt_at_rest = true` in the run's deploy.toml, every exported file is then encrypted.
    """
    from jijian.config import load_config
    from jijian.guard.crypto import exported_model_writer
    from jijian.train.export import describe, export_checkpoint

    run_config = run_dir / "deploy.toml"
    writer = exported_model_writer(load_config(run_config).guard) if run_config.is_file() else None
    model_dir, source = export_checkpoint(run_dir, to, checkpoint, write_bytes=writer, merge=merge)
    sealed = " (every file encrypted with AES-256-GCM: [guard] encrypt_at_rest)" if writer is not None else ""
    err_console.print(f"exported {describe(source)} to {model_dir}{sealed}")
