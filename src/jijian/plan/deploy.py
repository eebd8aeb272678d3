"""The planner's inputs from a deploy.toml and the `jijian plan` flags: model shape, cluster, device count, workload.

`jijian plan` and `jijian up`'s estimate both read a deployment through these, so they plan the same run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from jijian.config import MODEL_PRESETS, ModelConfig
from jijian.plan.errors import PlanError
from jijian.plan.estimate import Workload
from jijian.plan.hardware import Cluster, make_cluster
from jijian.plan.search import parse_count
from jijian.spec.shape import ModelShape

if TYPE_CHECKING:
    from jijian.config import DeployConfig

DEFAULT_ACCELERATOR = "H100-SXM"  # when neither --gpu nor a deploy.toml names one
DEFAULT_GLOBAL_BATCH = 1024
DEFAULT_SEQ = 4096
CHINCHILLA_TOKENS_PER_PARAM = 20


def shape_for(cfg: DeployConfig | None, preset: str | None, overrides: dict[str, int | None]) -> ModelShape:
    """The model from --model / shape flags, on top of the config's [model] when there is one."""
    return ModelShape.from_config(model_config_for(cfg, preset, overrides))


def model_config_for(cfg: DeployConfig | None, preset: str | None, overrides: dict[str, int | None]) -> ModelConfig:
    """The `[model]` section that --model / shape flags describe, on top of the config's [model] when there is one."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise PlanError(f"--model: unknown preset {preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
        fields: dict[str, Any] = {"preset": preset}
    elif cfg is not None:
        fields = cfg.model.model_dump(exclude={"hf_path"}, exclude_none=True)
        if given.keys() & {"dim", "n_heads"}:  # a new width or head count re-derives head_dim
            fields.pop("head_dim", None)
    else:
        needed = {"n_layers": "--layers", "dim": "--hidden", "n_heads": "--heads", "ffn_dim": "--ffn"}
        missing = [flag for key, flag in needed.items() if key not in given]
        if missing:
            raise PlanError(f"give a deploy.toml, --model PRESET, or the whole shape (missing {', '.join(missing)})")
        fields = {"vocab_size": 128256}
    try:
        return ModelConfig(**{**fields, **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model'}: {e['msg']}" for e in exc.errors())
        raise PlanError(f"model shape: {problems}") from None


def cluster_for(cfg: DeployConfig | None, gpu: str | None, per_node: int | None) -> Cluster:
    hardware = cfg.hardware if cfg else None
    if per_node is None and hardware is not None and "devices_per_node" in hardware.model_fields_set:
        per_node = hardware.devices_per_node
    accelerator = gpu or (hardware.accelerator if hardware else DEFAULT_ACCELERATOR)
    return make_cluster(accelerator, hardware, per_node)


def device_count(cfg: DeployConfig | None, gpus: int | None, cluster: Cluster) -> int:
    if gpus is not None:
        return gpus
    if cfg is not None and cfg.hardware.model_fields_set & {"nodes", "devices_per_node"}:
        return cfg.hardware.nodes * cluster.devices_per_node
    return cluster.devices_per_node


def workload_for(
    cfg: DeployConfig | None, shape: ModelShape, gpus: int, seq: int | None, batch: int | None, tokens: str | None
) -> tuple[Workload, str]:
    """The workload and a note on where the token count came from."""
    seq = seq or (cfg.train.seq_len if cfg else DEFAULT_SEQ)
    if batch is None and cfg is not None:
        # The run's own global batch: [train] batch_size counts all data-parallel ranks, times accumulation.
        batch = cfg.train.batch_size * cfg.train.grad_accum_steps
    batch = batch or DEFAULT_GLOBAL_BATCH
    if tokens is not None:
        total, note = parse_count(tokens), "--tokens"
    elif cfg is not None:
        total, note = float(cfg.train.steps * batch * seq), "[train] steps x global batch x seq_len"
    else:
        total = float(CHINCHILLA_TOKENS_PER_PARAM * shape.params)
        note = f"{CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter (Chinchilla); set --tokens"
    if seq < 1 or batch < 1:
        raise PlanError("--seq and --global-batch must be at least 1")
    return Workload(shape, seq, batch, total), note
