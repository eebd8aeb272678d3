"""A single-process training run from a DeployConfig: data, model, loop, HF export."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from jijian.config import DeployConfig, UserInputError, dump_config
from jijian.data import open_train_loader
from jijian.model import CausalLM, build_model
from jijian.model.hf import load_hf, save_hf
from jijian.model.tokenizer import Tokenizer
from jijian.train.metrics import MetricsLogger
from jijian.train.trainer import Trainer, TrainResult, resolve_device


class TrainSetupError(UserInputError):
    """The config asks for a run that cannot start (no data, no tokenizer, shapes that disagree)."""


@dataclass
class TrainRun:
    """Where a finished run put its outputs, and what it measured."""

    output_dir: Path
    model_dir: Path
    metrics_path: Path
    result: TrainResult


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tokenizer(config: DeployConfig) -> Tokenizer:
    """The tokenizer named by [tokenizer].path, else the one inside [model].hf_path."""
    if config.tokenizer.path is not None:
        return Tokenizer.load(config.tokenizer.path)
    hf_path = config.model.hf_path
    if hf_path is not None and (hf_path / "tokenizer.json").is_file():
        return Tokenizer.load(hf_path)
    raise TrainSetupError(
        "tokenizer.path is not set and model.hf_path has no tokenizer.json: "
        "train one with `jijian tokenizer train` and set [tokenizer] path"
    )


def build_or_load_model(config: DeployConfig, device: torch.device) -> CausalLM:
    """Start from [model].hf_path when given, else a freshly initialised model of [model]'s shape."""
    if config.model.hf_path is not None:
        model, _ = load_hf(config.model.hf_path, device=device)
        return model
    return build_model(config.model, device=device)


def split_documents(documents: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Every k-th document goes to validation (deterministic, spread over the whole corpus)."""
    if fraction <= 0 or len(documents) < 2:
        return documents, []
    every = max(2, round(1 / fraction))
    val = documents[::every]
    train = [doc for i, doc in enumerate(documents) if i % every]
    return train, val


def run_training(config: DeployConfig, *, console: Console | None = None) -> TrainRun:
    """Train [model] on [data].sources per [train]; write metrics, the resolved config and the HF model."""
    tcfg = config.train
    device = resolve_device(tcfg.device)
    seed_everything(tcfg.seed)
    tokenizer = load_tokenizer(config)
    model = build_or_load_model(config, device)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise TrainSetupError(
            f"tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {model.cfg.vocab_size}"
        )
    if tcfg.seq_len > model.cfg.max_seq_len:
        raise TrainSetupError(f"train.seq_len ({tcfg.seq_len}) exceeds model.max_seq_len ({model.cfg.max_seq_len})")

    # The data pipeline builds (or reuses) packed shards of [data] and serves this rank's batches.
    data = open_train_loader(config, tokenizer, console=console)
    batches, eval_batches = data.loader, data.eval_batches or None

    output_dir = tcfg.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "deploy.toml").write_text(dump_config(config), encoding="utf-8")
    metrics_path = output_dir / "metrics.jsonl"
    if tcfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    with MetricsLogger(metrics_path, tcfg.steps, console=console) as logger:
        logger.log(
            {
                "step": 0,
                "event": "start",
                "device": str(device),
                "parameters": model.num_parameters(),
                "train_tokens": data.train_tokens,
                "data_dir": str(data.directory),
            }
        )
        result = Trainer(model, tcfg, batches, device=device, eval_batches=eval_batches, logger=logger).fit()
    model_dir = save_hf(getattr(model, "_orig_mod", model), tokenizer, output_dir / "model")
    summary = {k: v for k, v in asdict(result).items() if k != "losses"}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainRun(output_dir=output_dir, model_dir=model_dir, metrics_path=metrics_path, result=result)
