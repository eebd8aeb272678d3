"""Stage `export`: the training run's newest valid checkpoint as a Hugging Face model directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jijian.config import DeployConfig
from jijian.up.paths import export_dir
from jijian.up.stage import StageContext, section

SAMPLE_TOKENS = 80


class ExportStage:
    """Consolidate the checkpoint into config.json + safetensors + tokenizer, then sample from it."""

    name = "export"

    def upstream(self, config: DeployConfig, stages: tuple[str, ...]) -> list[str]:
        """The train stage, when it is part of the build."""
        return ["train"] if "train" in stages else []

    def config_sections(self, config: DeployConfig) -> dict[str, Any]:
        """Where the export goes, the sample prompt, and the guard's encryption-at-rest switch."""
        return {
            "up.export_dir": str(export_dir(config)),
            "up.sample_prompt": config.up.sample_prompt,
            "guard.encrypt_at_rest": section(config, "guard", "encrypt_at_rest", "key_env", "key_file"),
        }

    def inputs(self, config: DeployConfig, base: Path) -> list[Path]:
        """Nothing beyond the train stage's outputs."""
        return []

    def outputs(self, config: DeployConfig) -> list[Path]:
        """The Hugging Face model directory."""
        return [export_dir(config)]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        """Export, then continue the sample prompt with the exported model (it must stand on its own)."""
        from jijian.guard.crypto import exported_model_writer, file_reader, key_from_config
        from jijian.train.export import describe, export_checkpoint

        config = ctx.config
        # [guard] encrypt_at_rest: each exported file is sealed in memory, so no plaintext reaches the disk;
        # the key is loaded before anything is written, so a missing key fails the stage up front.
        writer = exported_model_writer(config.guard)
        model_dir, checkpoint = export_checkpoint(config.train.output_dir, export_dir(config), write_bytes=writer)
        sealed = " (encrypted at rest)" if writer is not None else ""
        ctx.console.print(f"exported {describe(checkpoint)} to {model_dir}{sealed}")
        result: dict[str, Any] = {"model_dir": str(model_dir), "checkpoint": str(checkpoint)}
        if writer is not None:
            result["encrypted"] = True
        if config.up.sample_prompt is not None:
            reader = file_reader(key_from_config(config.guard)) if writer is not None else None
            result["sample"] = sample(model_dir, config.up.sample_prompt, reader)
            ctx.console.print(result["sample"], markup=False, highlight=False)
        return result


def sample(model_dir: Path, prompt: str, read_bytes: Callable[[Path], bytes] | None = None) -> str:
    """The prompt and a sampled continuation (temperature 0.7, top-k 40, seed 0) from a saved model."""
    from jijian.model import generate
    from jijian.model.hf import load_hf

    model, tokenizer = load_hf(model_dir, read_bytes=read_bytes)
    if tokenizer is None:
        from jijian.up.stage import StageError

        raise StageError(f"{model_dir} has no tokenizer.json")
    ids = tokenizer.encode(prompt, add_bos=True)
    new = generate(model, ids, SAMPLE_TOKENS, temperature=0.7, top_k=40, eos_id=tokenizer.eos_id, seed=0)
    return prompt + tokenizer.decode(new)
