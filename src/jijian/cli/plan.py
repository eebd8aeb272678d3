"""`jijian plan`: capacity and cost planning for training (the default), serving, and scaling.

`jijian plan deploy.toml` and `jijian plan --model llama3-70b --gpus 1024 ...` both run `plan train`:
the group routes any first argument that is not a sub-command name to `train`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jijian.cli.common import DefaultCommandGroup, err_console, out_console, reports_errors
from jijian.files import write_text_atomic
from jijian.plan.deploy import cluster_for, device_count, model_config_for, shape_for, workload_for

if TYPE_CHECKING:
    from jijian.config import DeployConfig, ModelConfig
    from jijian.plan import Cluster, Estimate, Workload


class _TrainByDefault(DefaultCommandGroup):
    """A group whose sub-command defaults to `train`, so a config path or flags can follow `plan` directly."""

    default_command = "train"


plan_app = typer.Typer(
    cls=_TrainByDefault,
    help="Plan training and serving: memory, FLOPs, step time, MFU, days, energy, cost and the best layout. "
    "`jijian plan deploy.toml` or `jijian plan --model llama3-70b --gpus 1024 --gpu H800 --tokens 2T` runs `train`.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ConfigArg = Annotated[Path | None, typer.Argument(help="deploy.toml giving [model], [hardware] and [train]")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model preset, e.g. llama3-70b")]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="number of layers")]
HiddenOpt = Annotated[int | None, typer.Option("--hidden", help="hidden size")]
HeadsOpt = Annotated[int | None, typer.Option("--heads", help="attention heads")]
KvHeadsOpt = Annotated[int | None, typer.Option("--kv-heads", help="key/value heads (grouped-query attention)")]
FfnOpt = Annotated[int | None, typer.Option("--ffn", help="MLP inner size")]
VocabOpt = Annotated[int | None, typer.Option("--vocab", help="vocabulary size")]
GpuOpt = Annotated[str | None, typer.Option("--gpu", help="accelerator from the catalogue, e.g. H800, A100-80GB")]
PerNodeOpt = Annotated[int | None, typer.Option("--devices-per-node", help="devices per server (catalogue default)")]
GpusOpt = Annotated[int | None, typer.Option("--gpus", help="number of devices")]
SeqOpt = Annotated[int | None, typer.Option("--seq", help="sequence length in tokens")]
BatchOpt = Annotated[int | None, typer.Option("--global-batch", help="sequences per optimiser step")]
TokensOpt = Annotated[str | None, typer.Option("--tokens", help="training tokens, e.g. 2T or 300B")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the results as JSON instead of a table")]


def _load(config: Path | None) -> DeployConfig | None:
    from jijian.config import load_config

    return load_config(config) if config else None


def _show(table: Table) -> None:
    # Off a terminal (pipes, logs, CI) Rich assumes 80 columns; these tables need more to stay readable.
    console = out_console if out_console.is_terminal else Console(width=max(out_console.width, 170))
    console.print(table)


def _num(value: float) -> str:
    """Readable at any scale: 1,234,567 / 12.3 / 0.0123."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def _bytes(value: float) -> str:
    for suffix, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f} B"


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:,.1f} d"
    hours = days * 24
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.2g} min"


def _money(value: float, currency: str) -> str:
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:,.2f}{suffix} {currency}"
    return f"{value:,.2f} {currency}" if value >= 0.01 else f"{value:.2g} {currency}"


def _layout_mismatch(text: str, degrees: dict[str, int], count: int) -> str:
    """Say that a layout does not use --gpus devices, and which data-parallel degree would."""
    from jijian.plan.search import layout_gpus

    message = f"--layout {text!r} uses {layout_gpus(degrees)} devices but --gpus is {count}"
    key = "fsdp" if "fsdp" in degrees or "dp" not in degrees else "dp"  # the data-parallel degree to adjust
    others = layout_gpus({k: v for k, v in degrees.items() if k != key})
    if count % others == 0:
        fixed = {**degrees, key: count // others}
        message += "; nearest: --layout " + ",".join(f"{k}={v}" for k, v in fixed.items() if k != "mb" or v > 1)
    return message


def _results_table(results: list[Estimate], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    columns: tuple[str, ...] = ("#", "layout", "jijian", "MFU", "step s", "tokens/s", "GB/dev", "time", "GPU-hours")
    columns += ("rent", "buy", "bound")
    for column in columns:
        table.add_column(column, justify="left" if column in ("layout", "bound", "jijian") else "right")
    for rank, e in enumerate(results, 1):
        table.add_row(
            str(rank),
            e.layout.describe(),
            "runs" if e.jijian_runs else "no",
            e.mfu_text(),
            _num(e.step_time_s),
            f"{e.tokens_per_s:,.0f}",
            f"{e.memory_per_device_gb:.1f}",
            _duration(e.days),
            _num(e.gpu_hours),
            _money(e.cost_rent, e.currency),
            _money(e.cost_buy, e.currency),
            e.bottleneck,
        )
    return table


def _write_parallel(path: Path, best: Estimate, summary: str, force: bool) -> None:
    """Write the [parallel] section for `jijian train` (atomically; an existing file needs --force)."""

    import tomli_w

    from jijian.plan import PlanError, parallel_section
    from jijian.plan.train_config import train_settings

    if path.exists() and not force:
        raise PlanError(f"--emit: {path} exists; pass --force to overwrite it")
    train = train_settings(best)
    header = (
        f"# [parallel] for `jijian train`, written by `jijian plan`: {summary}\n"
        f"# predicted MFU {best.mfu:.1%}, {best.memory_per_device_gb:.1f} GB per device.\n"
        f"# Matching [train] settings: batch_size = {train['batch_size']}, "
        f'grad_accum_steps = {train["grad_accum_steps"]}, ac = "{train["ac"]}"\n'
    )
    text = header + tomli_w.dumps({"parallel": parallel_section(best)})
    write_text_atomic(path, text)


@plan_app.command("train")
@reports_errors
def plan_train(
    config: ConfigArg = None,
    model: ModelOpt = None,
    layers: LayersOpt = None,
    hidden: HiddenOpt = None,
    heads: HeadsOpt = None,
    kv_heads: KvHeadsOpt = None,
    ffn: FfnOpt = None,
    vocab: VocabOpt = None,
    gpus: GpusOpt = None,
    gpu: GpuOpt = None,
    devices_per_node: PerNodeOpt = None,
    tokens: TokensOpt = None,
    seq: SeqOpt = None,
    global_batch: BatchOpt = None,
    layout: Annotated[
        str | None, typer.Option("--layout", help="evaluate one layout instead of searching, e.g. 'fsdp=32,tp=8'")
    ] = None,
    recompute: Annotated[
        str | None, typer.Option("--recompute", help="fix activation recomputation: none | selective | full")
    ] = None,
    top: Annotated[int, typer.Option("--top", help="how many layouts to show")] = 5,
    as_json: JsonOpt = False,
    emit: Annotated[Path | None, typer.Option("--emit", help="write the best layout's [parallel] section here")] = None,
    force: Annotated[bool, typer.Option("--force", help="let --emit overwrite an existing file")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="trace the layout (--layout, a deploy.toml's [parallel], or the best found) with jijian's own "
            "parallelisation on a fake process group and compare its memory and traffic with the prediction",
        ),
    ] = False,
) -> None:
    """Find the fastest layouts that fit, with step time, MFU, days, GPU-hours, PF-days, energy and cost."""
    from jijian.plan import ModelShape, PlanError, evaluate_layout, parse_layout, search
    from jijian.plan.search import format_count, layout_gpus

    if recompute is not None and recompute not in ("none", "selective", "full"):
        raise PlanError(f"--recompute must be none, selective or full (got {recompute!r})")
    cfg = _load(config)
    shape_flags = {"n_layers": layers, "dim": hidden, "n_heads": heads, "n_kv_heads": kv_heads}
    model_cfg = model_config_for(cfg, model, {**shape_flags, "ffn_dim": ffn, "vocab_size": vocab})
    shape = ModelShape.from_config(model_cfg)
    cluster = cluster_for(cfg, gpu, devices_per_node)
    degrees = parse_layout(layout) if layout else None
    if degrees and gpus is None:
        gpus = layout_gpus(degrees)
    count = device_count(cfg, gpus, cluster)
    if degrees and layout_gpus(degrees) != count:
        raise PlanError(_layout_mismatch(layout or "", degrees, count))
    work, tokens_note = workload_for(cfg, shape, count, seq, global_batch, tokens)

    if check and not degrees and cfg is not None and cfg.parallel.model_fields_set:
        from jijian.cli.plan_check import planner_layout_of

        # The deployment's own [parallel] layout, resolved as `jijian train` would resolve it.
        own = planner_layout_of(cfg, count)
        _print_check(_trace_check(model_cfg, work, cluster, own, "[parallel] of " + str(config)), as_json)
        return

    start = time.perf_counter()
    if degrees:
        results, evaluated, feasible = [evaluate_layout(work, cluster, degrees, recompute)], 1, 1
    else:
        found = search(work, cluster, count, recompute, top=top)
        results, evaluated, feasible = found.best, found.evaluated, found.feasible
    elapsed = time.perf_counter() - start
    best = results[0]
    if (emit or check) and not degrees and not best.jijian_runs:  # the fastest layout jijian train can run
        best = search(work, cluster, count, recompute, top=1, jijian_only=True).best[0]
    if check:
        _print_check(
            _trace_check(model_cfg, work, cluster, best.layout, f"--layout {layout}" if layout else ""), as_json
        )
        return
    summary = (
        f"{format_count(shape.params)} parameters on {count} x {cluster.accelerator.name}, "
        f"{format_count(work.tokens)} tokens, seq {work.seq}, global batch {work.global_batch}"
    )
    if emit:
        _write_parallel(emit, best, summary, force)
    if as_json:
        payload = {
            "model": {"params": shape.params, "layers": shape.layers, "hidden": shape.hidden},
            "request": {
                "gpus": count,
                "accelerator": cluster.accelerator.name,
                "tokens": work.tokens,
                "tokens_source": tokens_note,
                "seq": work.seq,
                "global_batch": work.global_batch,
            },
            "evaluated": evaluated,
            "feasible": feasible,
            "search_s": elapsed,
            "results": [e.to_dict() for e in results],
        }
        print(json.dumps(payload, indent=2))
    else:
        _show(_results_table(results, f"jijian plan: {summary}"))
        line = (
            f"tokens: {tokens_note}; compute {_num(best.pf_days)} PF-days; best layout: {_duration(best.days)}, "
            f"{_num(best.energy_kwh)} kWh (PUE {cluster.prices.pue}), electricity "
            f"{_money(best.cost_electricity, best.currency)}; {evaluated} layouts evaluated, {feasible} fit, "
            f"in {elapsed:.2f} s"
        )
        out_console.print(escape(line), soft_wrap=True)
        traffic = ", ".join(f"{name} {_bytes(value)}" for name, value in best.comm_bytes_per_step.items() if value)
        out_console.print(f"sent per device per step by the best layout: {traffic or 'nothing'}", soft_wrap=True)
    if emit:
        err_console.print(f"wrote \\[parallel] for {best.layout.describe()} to {emit}")


def _trace_check(model_cfg: ModelConfig, work: Workload, cluster: Cluster, layout: Any, source: str) -> Any:
    """Trace `layout` with the engine; a layout jijian train cannot run is a PlanError naming where it came from."""
    from jijian.cli.plan_check import check_layout
    from jijian.plan import PlanError
    from jijian.plan.estimate import jijian_cannot_run

    problem = jijian_cannot_run(layout)
    if problem:
        where = f"{source}: " if source else ""
        raise PlanError(f"--check: {where}layout {layout.describe()} cannot be traced: {problem}")
    err_console.print(
        f"tracing {layout.describe()} on a fake process group of {layout.gpus} ranks (rank 0, fake tensors)..."
    )
    return check_layout(source or "best layout", model_cfg, work, cluster, layout)


def _print_check(agreement: Any, as_json: bool) -> None:
    """Planner and engine side by side; exit code 1 when they disagree beyond the benchmark's targets."""
    from jijian.cli.plan_check import COMM_CATEGORIES, COMM_TARGET, MEMORY_CATEGORIES, MEMORY_TARGET

    agree = agreement.memory_rel_err <= MEMORY_TARGET and agreement.comm_rel_err <= COMM_TARGET
    if as_json:
        print(json.dumps(agreement.to_dict(), indent=2))
    else:
        engine = agreement.engine_layout
        table = Table(
            title=f"jijian plan --check: {agreement.estimate.layout.describe()} = [parallel] {engine.describe()}; "
            f"{agreement.trace.microbatches} micro-batch(es) per step, traced in {agreement.trace_seconds:.1f} s",
            title_justify="left",
        )
        for column in ("per device", "planner", "engine", "rel. error"):
            table.add_column(column, justify="left" if column == "per device" else "right")
        rows = [(f"{k} bytes", agreement.planner_memory[k], agreement.engine_memory[k]) for k in MEMORY_CATEGORIES]
        rows.append(("memory total", sum(agreement.planner_memory.values()), sum(agreement.engine_memory.values())))
        rows += [(f"sent/step {k}", agreement.planner_comm[k], agreement.engine_comm[k]) for k in COMM_CATEGORIES]
        rows.append(("sent/step total", sum(agreement.planner_comm.values()), sum(agreement.engine_comm.values())))
        for label, planned, traced in rows:
            error = abs(planned - traced) / traced if traced else (0.0 if planned == 0 else float("inf"))
            bold = label in ("memory total", "sent/step total")
            cells = [label, _bytes(planned), _bytes(traced), f"{error:.1%}"]
            table.add_row(*(f"[bold]{c}[/bold]" for c in cells) if bold else cells)
        _show(table)
        out_console.print(
            "memory: model states plus FSDP's gathered parameters and unsharded gradients at their peak (activations "
            "not compared); the planner counts bf16 weights and gradients plus fp32 master weights and Adam moments, "
            "FSDP2 keeps fp32 weights (the master copy) and fp32 gradients: the same 16 bytes per parameter, split "
            "differently. Bytes sent: every collective of the traced step as ring traffic.",
            soft_wrap=True,
        )
        verdict = "agree" if agree else "DISAGREE"
        out_console.print(
            f"planner and engine {verdict}: memory {agreement.memory_rel_err:.1%} apart (target <= "
            f"{MEMORY_TARGET:.0%}), bytes sent per step {agreement.comm_rel_err:.1%} apart "
            f"(target <= {COMM_TARGET:.0%})",
            soft_wrap=True,
        )
    if not agree:
        raise typer.Exit(1)


@plan_app.command("serve")
@reports_errors
def plan_serve(
    config: ConfigArg = None,
    model: ModelOpt = None,
    layers: LayersOpt = None,
    hidden: HiddenOpt = None,
    heads: HeadsOpt = None,
    kv_heads: KvHeadsOpt = None,
    ffn: FfnOpt = None,
    vocab: VocabOpt = None,
    gpu: GpuOpt = None,
    devices_per_node: PerNodeOpt = None,
    rps: Annotated[float, typer.Option("--rps", help="requests per second")] = 10.0,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="average prompt length")] = 1000,
    output_tokens: Annotated[int, typer.Option("--output-tokens", help="average output length")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Replicas, KV-cache capacity and cost per million tokens for a traffic level, bf16 and int8 weights."""
    from jijian.plan import Traffic, plan_serving

    cfg = _load(config)
    shape_flags = {"n_layers": layers, "dim": hidden, "n_heads": heads, "n_kv_heads": kv_heads}
    shape = shape_for(cfg, model, {**shape_flags, "ffn_dim": ffn, "vocab_size": vocab})
    cluster = cluster_for(cfg, gpu, devices_per_node)
    traffic = Traffic(rps, prompt_tokens, output_tokens)
    plans = [plan_serving(shape, cluster, traffic, bits) for bits in (16, 8)]
    if as_json:
        print(json.dumps({"accelerator": cluster.accelerator.name, "plans": [p.to_dict() for p in plans]}, indent=2))
        return
    table = Table(
        title=f"jijian plan serve: {rps:g} req/s x ({prompt_tokens} + {output_tokens}) tokens on "
        f"{cluster.accelerator.name}",
        title_justify="left",
    )
    columns = ("weights", "GB", "tp", "replicas", "devices", "KV tokens", "batch", "ms/token", "TTFT ms", "per M tok")
    for column in columns:
        table.add_column(column, justify="left" if column == "weights" else "right")
    for p in plans:
        table.add_row(
            p.weights,
            f"{p.weight_gb:.1f}",
            str(p.tp),
            str(p.replicas),
            str(p.devices),
            f"{p.kv_capacity_tokens:,}",
            str(p.concurrent_sequences),
            f"{p.decode_step_s * 1e3:.1f}",
            f"{p.time_to_first_token_s * 1e3:.0f}",
            f"{p.cost_per_million_tokens_rent:.2f} {p.currency}",
        )
    _show(table)
    out_console.print("per M tok: rented devices, prompt + output tokens; --json adds buying and output-only costs")


@plan_app.command("scaling")
@reports_errors
def plan_scaling(
    config: ConfigArg = None,
    model: ModelOpt = None,
    layers: LayersOpt = None,
    hidden: HiddenOpt = None,
    heads: HeadsOpt = None,
    kv_heads: KvHeadsOpt = None,
    ffn: FfnOpt = None,
    vocab: VocabOpt = None,
    gpus: Annotated[int, typer.Option("--gpus", help="largest device count")] = 1024,
    gpu: GpuOpt = None,
    devices_per_node: PerNodeOpt = None,
    seq: SeqOpt = None,
    global_batch: BatchOpt = None,
    png: Annotated[Path | None, typer.Option("--png", help="also plot efficiency and MFU to this PNG")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predicted scaling efficiency of the best layout from 8 devices up to --gpus, as a table and a PNG."""
    from jijian.plan import plot_scaling, scaling_report

    cfg = _load(config)
    shape_flags = {"n_layers": layers, "dim": hidden, "n_heads": heads, "n_kv_heads": kv_heads}
    shape = shape_for(cfg, model, {**shape_flags, "ffn_dim": ffn, "vocab_size": vocab})
    cluster = cluster_for(cfg, gpu, devices_per_node)
    work, _ = workload_for(cfg, shape, gpus, seq, global_batch, "1T")
    points = scaling_report(work, cluster, gpus)
    title = f"{shape.params / 1e9:.1f}B parameters on {cluster.accelerator.name}, global batch {work.global_batch}"
    if png:
        plot_scaling(points, png, title)
    if as_json:
        rows = [{"gpus": p.gpus, "efficiency": p.efficiency, **p.best.to_dict()} for p in points]
        print(json.dumps({"title": title, "points": rows}, indent=2))
    else:
        table = Table(title=f"jijian plan scaling: {title}", title_justify="left")
        for column in ("devices", "efficiency", "MFU", "tokens/s", "best layout", "bound"):
            table.add_column(column, justify="left" if column in ("best layout", "bound") else "right")
        for p in points:
            table.add_row(
                str(p.gpus),
                f"{p.efficiency:.1%}",
                f"{p.best.mfu:.1%}",
                f"{p.best.tokens_per_s:,.0f}",
                p.best.layout.describe(),
                p.best.bottleneck,
            )
        _show(table)
        best = max(points, key=lambda p: p.efficiency)
        out_console.print(f"efficiency = tokens/s per device relative to the best per device ({best.gpus} devices)")
    if png:
        err_console.print(f"wrote {png}")


@plan_app.command("calibrate")
@reports_errors
def plan_calibrate(
    out: Annotated[
        Path | None, typer.Option("--out", help="profile path (default: $JIJIAN_HARDWARE_PROFILE or ~/.cache/jijian)")
    ] = None,
    seconds: Annotated[float, typer.Option("--seconds", help="probe time budget, 5..60 seconds")] = 45.0,
) -> None:
    """Measure this machine (matmul throughput at several sizes, memory bandwidth, per-op overhead) for the planner.

    Saves a local hardware profile that `jijian plan --gpu local` (and `--gpu cpu`) then use.
    """
    from jijian.plan import PlanError
    from jijian.plan.profile import default_profile_path, local_device, save_profile
    from jijian.train.hardware_probe import probe

    if not 5 <= seconds <= 60:
        raise PlanError(f"--seconds must be between 5 and 60 (got {seconds:g})")
    path = out or default_profile_path()
    profile = save_profile(probe(seconds), path)
    device, calib = local_device(profile)
    sizes = ", ".join(f"{r['m']}x{r['k']}x{r['n']} {r['tflops'] * 1e3:.0f}" for r in profile["matmul"])
    bandwidth = ", ".join(f"{r['bytes'] / 2**20:.2g} MiB {r['gbs']:.0f}" for r in profile["memory"])
    out_console.print(
        f"{device.name}: {profile['torch_threads']} torch threads, {profile['dtype']}, probe "
        f"{profile['probe_seconds']:.0f} s\n  matmul GFLOP/s: {sizes}\n  elementwise GB/s: {bandwidth}\n"
        f"  per-op overhead: {calib.op_overhead_us:.1f} us\n"
        f"  a whole training step of the reference model: {profile['reference_step']['seconds']:.3f} s, "
        f"{calib.step_time_scale:.2f}x what the kernel figures predict (the planner scales compute by it)",
        soft_wrap=True,
    )
    err_console.print(f"wrote {path}; use it with `jijian plan --gpu local` (or --gpu cpu)")
