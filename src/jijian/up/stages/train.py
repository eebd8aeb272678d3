"""Stage `train`: `run_training` in this process for one rank, through torchrun for more; checkpoints on."""

from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

from jijian.config import DeployConfig
from jijian.up.paths import given_tokenizer, tokenizer_dir
from jijian.up.stage import StageContext, section

TRAIN_CONFIG = "train.toml"


class TrainStage:
    """Train [model] on the data stage's shards; the export stage reads the checkpoints it leaves."""

    name = "train"

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """The data stage, when it is part of the build."""
        return ["data"] if "data" in stages else []

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """Everything that shapes the trained weights."""
        return {
            "model": section(config, "model"),
            "tokenizer": section(config, "tokenizer"),
            "train": section(config, "train"),
            "parallel": section(config, "parallel"),
            "checkpoint": section(config, "checkpoint"),
            "up.train_minutes": config.up.train_minutes,
        }

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """A given tokenizer, the HF model training starts from, and chat data (read by the trainer itself)."""
        chat = [base / s for s in config.data.sources] if config.data.format == "chat" else []
        return [p for p in (config.tokenizer.path, config.model.hf_path) if p is not None] + chat

    def outputs(self, config: DeployConfig) -> list[Path]:
        """The final model, the run summary and the checkpoints."""
        from jijian.train.run import checkpoint_dir

        out = config.train.output_dir
        return [out / "model", out / "summary.json", checkpoint_dir(config)]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Train (resuming from the run's checkpoints unless an earlier build of this stage is stale)."""
        from jijian.config import dump_config
        from jijian.train.launch import launch, plan_launch
        from jijian.train.run import checkpoint_dir
        from jijian.up.stage import StageError

        config = training_config(ctx)
        if ctx.fresh:
            # The checkpoints belong to a run of another config or other data: resuming them would mix the two.
            shutil.rmtree(checkpoint_dir(config), ignore_errors=True)
        up = config.up
        plan = plan_launch(config, up.nproc_per_node, up.nnodes)
        if plan.world_size > 1:
            path = up.state_dir / TRAIN_CONFIG
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dump_config(config), encoding="utf-8")
            ctx.console.print(f"launching {plan.world_size} ranks: {plan.layout.describe()}")
            code = launch(
                path, plan, node_rank=ctx.node_rank, rdzv_endpoint=up.rdzv_endpoint, max_restarts=up.max_restarts
            )
            if code:
                raise StageError(f"torchrun exited with code {code}; see the rank logs above")
            if ctx.node_rank > 0:
                return {"node_rank": ctx.node_rank}  # rank 0's node writes the summary and the model
            losses = _logged_losses(config.train.output_dir / "metrics.jsonl")
        else:
            from jijian.train import run_training

            ran = run_training(config, console=ctx.console).result.losses
            # A resumed run returns only the steps it ran itself: the log holds the steps before the resume too.
            losses = {**_logged_losses(config.train.output_dir / "metrics.jsonl"), **ran}
        summary = json.loads((config.train.output_dir / "summary.json").read_text(encoding="utf-8"))
        return {**loss_summary(losses), **{k: summary.get(k) for k in ("steps", "tokens", "elapsed_s", "val_loss")}}


def training_config(ctx: StageContext) -> DeployConfig:
    """The config the trainer gets: the data stage's shards and tokenizer, checkpoints on, steps calibrated."""
    config = ctx.config
    train = config.train
    updates: dict[str, Any] = {"checkpoint": config.checkpoint.model_copy(update={"enabled": True})}
    if given_tokenizer(config) is None:
        updates["tokenizer"] = config.tokenizer.model_copy(update={"path": tokenizer_dir(config)})
    if "data" in ctx.stages:
        # The data stage built the shards from the expanded sources; the trainer opens them as they are.
        updates["data"] = config.data.model_copy(update={"sources": []})
    elif config.data.format == "chat":
        # Chat data is read by the trainer itself: its sources are relative to the config file, like all paths.
        base = ctx.config_path.resolve().parent
        updates["data"] = config.data.model_copy(update={"sources": [str(base / s) for s in config.data.sources]})
    if config.up.train_minutes is not None:
        minutes = config.up.train_minutes
        model_section = config.model.model_dump(exclude_none=True)
        seconds = seconds_per_step(model_section, train.batch_size, train.seq_len)
        steps = max(50, int(minutes * 60 / seconds))
        ctx.console.print(
            f"calibrated: {seconds:.2f} s per step of {train.batch_size}x{train.seq_len} tokens -> {steps} steps "
            f"in about {minutes:g} minutes"
        )
        # max_minutes is a safety net only (a machine that slows down mid-run); calibration should end well inside.
        train = train.model_copy(
            update={
                "steps": steps,
                "warmup_steps": min(train.warmup_steps, steps),
                "max_minutes": train.max_minutes or minutes + 1.5,
            }
        )
    updates["train"] = train
    return config.model_copy(update=updates)


def seconds_per_step(
    model_section: dict[str, Any], batch_size: int, seq_len: int, timed_steps: int = 8, settle_steps: int = 8
) -> float:
    """Wall time of one real training step (the trainer's own, clipping included) on this machine."""
    import torch

    from jijian.config import ModelConfig, TrainConfig
    from jijian.model import build_model
    from jijian.train import Trainer

    model = build_model(ModelConfig.model_validate(model_section))
    tokens = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len + 1))
    batches = itertools.repeat((tokens[:, :-1], tokens[:, 1:]))
    config = TrainConfig(steps=settle_steps + timed_steps, warmup_steps=0, batch_size=batch_size, seq_len=seq_len)
    trainer = Trainer(model, config, batches, device=torch.device("cpu"))
    # The first steps run about 40% slower (allocator and optimizer state settling, measured on 2 cores);
    # timing them would undercount the steps that fit.
    for _ in range(settle_steps):
        trainer.train_step()
    started = time.perf_counter()
    for _ in range(timed_steps):
        trainer.train_step()
    return (time.perf_counter() - started) / timed_steps


def loss_summary(losses: dict[int, float]) -> dict[str, float | None]:
    """Loss at step 10 (or the first), the mean of the last 10 steps, and their ratio."""
    if not losses:
        return {"loss_step_10": None, "final_loss": None, "final_over_step_10": None}
    first = losses.get(10, losses[min(losses)])
    # Single-step losses jitter by about ±0.2 on the quick start; the mean of the last 10 steps does not.
    last_steps = sorted(losses)[-10:]
    final = sum(losses[s] for s in last_steps) / len(last_steps)
    return {
        "loss_step_10": round(first, 4),
        "final_loss": round(final, 4),
        "last_step_loss": round(losses[max(losses)], 4),
        "final_over_step_10": round(final / first, 4),
    }


def _logged_losses(metrics: Path) -> dict[int, float]:
    from jijian.files import read_json_lines

    return {int(r["step"]): float(r["loss"]) for r in read_json_lines(metrics) if "loss" in r and "step" in r}
