"""LoRA: adapters in PEFT's format (checked with the `peft` library), a frozen base, training, export, merge."""

from __future__ import annotations

import json

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import ConfigError, parse_config
from jijian.model import build_model
from jijian.model.hf import load_hf
from jijian.model.lora import (
    LINEAR_NAMES,
    LoRAError,
    add_lora,
    frozen_base_bytes,
    lora_state,
    merge_lora_state,
    quantize_frozen_base,
    save_peft_adapter,
)
from jijian.model.quantized import FrozenInt8Linear, quantize_int8_weight
from jijian.train import run_training
from jijian.train.run import TrainSetupError

transformers.logging.set_verbosity_error()
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def qwen2_base(tmp_path, vocab: int = 512):
    """A random small Qwen2 (biases, tied embeddings) written by transformers."""
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    reference = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.2)
    reference.save_pretrained(tmp_path / "base")
    return reference, tmp_path / "base"


def test_adapters_saved_by_jijian_load_into_peft_with_equal_logits(tmp_path):
    reference, base_dir = qwen2_base(tmp_path)
    model, _ = load_hf(base_dir)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    with torch.no_grad():  # a trained adapter: B is no longer zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    adapters = lora_state(model.state_dict())
    assert len(adapters) == 2 * len(TARGETS) * 2  # A and B, per target, per layer
    save_peft_adapter(adapters, tmp_path / "adapter", rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["target_modules"] == sorted(TARGETS)

    theirs = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    tokens = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ours = model(tokens)
        torch.testing.assert_close(ours, theirs(tokens).logits, atol=1e-5, rtol=1e-5)
        with theirs.disable_adapter():
            assert (ours - theirs(tokens).logits).abs().max() > 1e-3  # the adapter matters
        # Folding the adapters into the weights gives the same model without them.
        merged = build_model(model.cfg, init=False).eval()
        merged.load_state_dict(merge_lora_state(model.state_dict(), 8.0 / 4))
        torch.testing.assert_close(merged(tokens), ours, atol=1e-5, rtol=1e-5)


def test_the_adapter_changes_the_output_and_a_fresh_one_does_not(tmp_path):
    _, base_dir = qwen2_base(tmp_path)
    base, _ = load_hf(base_dir)
    adapted, _ = load_hf(base_dir)
    add_lora(adapted, rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    tokens = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted(tokens), base(tokens))  # B starts at zero
        adapted.model.layers["0"].self_attn.q_proj.lora_B.weight.fill_(0.1)
        assert (adapted(tokens) - base(tokens)).abs().max() > 1e-3
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_targets_naming_no_module_are_refused(tmp_path, tiny_config):
    with pytest.raises(LoRAError, match=r"targets.*qkv_proj.*q_proj"):
        add_lora(build_model(tiny_config, device="meta"), 4, 8.0, 0.0, ["qkv_proj"])
    with pytest.raises(ConfigError, match=r"train\.lora.*qkv_proj.*names no module"):
        parse_config({"train": {"lora": {"targets": ["qkv_proj"]}}}, base_dir=tmp_path)


def lora_run_config(tmp_path, base_dir, corpus, tokenizer_dir, **parallel):
    return parse_config(
        {
            "model": {"hf_path": str(base_dir)},
            "tokenizer": {"path": str(tokenizer_dir)},
            "data": {"sources": [str(corpus)], "validation_fraction": 0.1},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "steps": 30,
                "batch_size": 8,
                "seq_len": 64,
                "lr": 1e-2,
                "warmup_steps": 2,
                "log_every": 5,
                "eval_batches": 2,
                "device": "cpu",
                "lora": {"rank": 8, "alpha": 16.0, "targets": TARGETS},
            },
            "checkpoint": {"enabled": True, "interval": 30},
            "parallel": {"dp_shard": 1, **parallel},
        },
        base_dir=tmp_path,
    )


def test_a_lora_run_trains_only_the_adapters_and_exports_them_or_the_merged_model(tmp_path, tokenizer, corpus_texts):
    _, base_dir = qwen2_base(tmp_path, vocab=tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts), encoding="utf-8")
    run = run_training(lora_run_config(tmp_path, base_dir, corpus, tmp_path / "tokenizer"))
    # A random base predicts nearly uniformly; adapters alone move it a little in 30 steps.
    assert run.result.final_loss < run.result.loss_at(1) - 0.03
    start = json.loads(run.metrics_path.read_text().splitlines()[0])
    # Rank 8 per layer: q (64 -> 64), v (64 -> 2 KV heads x 16), o (64 -> 64), down (160 -> 64); A is 8 x in, B out x 8.
    per_layer = 8 * (64 + 64) + 8 * (64 + 32) + 8 * (64 + 64) + 8 * (160 + 64)
    assert start["trainable_parameters"] == 2 * per_layer

    # The base weights did not move: the merged model minus the adapters' product is the base.
    base = load_file(base_dir / "model.safetensors")
    adapter = load_file(run.output_dir / "adapter" / "adapter_model.safetensors")
    merged = load_file(run.model_dir / "model.safetensors")
    for name, weight in base.items():
        layer = name.removesuffix(".weight")
        a_key = f"base_model.model.{layer}.lora_A.weight"
        if a_key in adapter:
            delta = 2.0 * adapter[f"base_model.model.{layer}.lora_B.weight"] @ adapter[a_key]
            assert delta.abs().max() > 0, name
            torch.testing.assert_close(merged[name] - delta, weight, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(merged[name], weight, atol=0, rtol=0)

    # `jijian train export` writes the adapter (PEFT) by default and the merged model with --merge.
    runner = CliRunner()
    result = runner.invoke(app, ["train", "export", str(run.output_dir), "--to", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    exported = load_file(tmp_path / "exported" / "adapter_model.safetensors")
    assert exported.keys() == adapter.keys()
    result = runner.invoke(app, ["train", "export", str(run.output_dir), "--to", str(tmp_path / "m"), "--merge"])
    assert result.exit_code == 0, result.output
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ours, _ = load_hf(run.model_dir)
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), atol=1e-5, rtol=1e-5)


def test_export_merge_of_a_run_without_lora_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "deploy.toml").write_text('[train]\noutput_dir = "."\n')
    result = CliRunner().invoke(app, ["train", "export", str(tmp_path / "run"), "--to", str(tmp_path / "m"), "--merge"])
    assert result.exit_code != 0 and "lora" in result.output
    assert not (tmp_path / "m").exists()


# --- QLoRA-style frozen base: train.lora.base_weights = "int8" ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_int8_base_layer_multiplies_and_back_propagates_by_its_dequantised_weight(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=True)
    frozen = FrozenInt8Linear.from_linear(linear).requires_grad_(False)
    assert frozen.weight.dtype == torch.int8 and frozen.scale.dtype == torch.float32
    reference = frozen.dequantized()  # codes * scale, fp32
    assert (reference - linear.weight).abs().max() <= linear.weight.abs().max() / 127  # absmax rounding bound
    x = torch.randn(3, 7, 96, dtype=dtype, requires_grad=True)
    out = frozen(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    x_ref = x.detach().float().requires_grad_()
    out_ref = torch.nn.functional.linear(x_ref, reference, linear.bias.detach())
    (out_ref * upstream.float()).sum().backward()
    assert out.dtype == dtype and x.grad is not None and x.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: activations and products rounded to 8 bits
    torch.testing.assert_close(out.float(), out_ref, atol=tol * out_ref.abs().max().item(), rtol=0)
    torch.testing.assert_close(x.grad.float(), x_ref.grad, atol=tol * x_ref.grad.abs().max().item(), rtol=0)
    assert not frozen.weight.requires_grad and frozen.weight.grad is None


def test_the_int8_base_stores_a_quarter_of_the_fp32_bytes_and_keeps_the_adapters(tmp_path):
    _, base_dir = qwen2_base(tmp_path)
    model, _ = load_hf(base_dir)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    fp32_bytes = frozen_base_bytes(model)
    tokens = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
        before = model(tokens)
    adapters = lora_state(model.state_dict())
    quantized = quantize_frozen_base(model)
    assert len(quantized) == 2 * len(LINEAR_NAMES)  # all seven projections of both layers, adapted or not
    ratio = frozen_base_bytes(model) / fp32_bytes
    # int8 codes (1/4) plus one fp32 scale per output row; q/k/v keep their fp32 biases.
    assert 0.25 < ratio < 0.27, ratio
    torch.testing.assert_close(lora_state(model.state_dict()), adapters, atol=0, rtol=0)  # moved, not copied
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        after = model(tokens)
    assert (after - before).abs().max() < 0.05 * before.abs().max()  # the same model, up to int8 rounding
    assert [n for n, p in model.named_parameters() if p.requires_grad] == list(adapters)


def test_a_qlora_run_tracks_the_float_base_run_resumes_and_exports(tmp_path, tokenizer, corpus_texts):
    _, base_dir = qwen2_base(tmp_path, vocab=tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts), encoding="utf-8")

    def config(name, steps, base_weights):
        cfg = lora_run_config(tmp_path, base_dir, corpus, tmp_path / "tokenizer").model_dump(mode="json")
        # A constant schedule, so a 15-step run is the first half of the 30-step one.
        cfg["train"].update(output_dir=str(tmp_path / name), steps=steps, lr_schedule="constant")
        cfg["train"]["lora"]["base_weights"] = base_weights
        cfg["checkpoint"]["interval"] = 15
        return parse_config(cfg, base_dir=tmp_path)

    fp32 = run_training(config("fp32", 30, "auto"))
    int8 = run_training(config("int8", 30, "int8"))
    assert int8.result.final_loss < int8.result.loss_at(1) - 0.03
    gaps = [abs(int8.result.losses[s] - fp32.result.losses[s]) for s in fp32.result.losses]
    assert max(gaps) < 2e-3, gaps  # measured 2.3e-4 at most (losses 6.15 to 6.23)
    start = json.loads(int8.metrics_path.read_text().splitlines()[0])
    assert start["trainable_parameters"] == json.loads(fp32.metrics_path.read_text().splitlines()[0])[
        "trainable_parameters"
    ]

    # Stopped at step 15 and started again: the int8 codes, scales and adapters come back from the checkpoint.
    run_training(config("split", 15, "int8"))
    split = run_training(config("split", 30, "int8"))
    assert split.result.losses == {s: v for s, v in int8.result.losses.items() if s > 15}

    # model/ holds dequant(base) + scaling * B A: the model the run trained; adapter/ holds A and B.
    base = load_file(base_dir / "model.safetensors")
    adapter = load_file(int8.output_dir / "adapter" / "adapter_model.safetensors")
    merged = load_file(int8.model_dir / "model.safetensors")
    assert merged.keys() == base.keys()
    for name, weight in base.items():
        layer = name.removesuffix(".weight")
        expected = weight
        if name.endswith(".weight") and layer.rsplit(".", 1)[-1] in LINEAR_NAMES:
            codes, scale = quantize_int8_weight(weight)
            expected = codes.float() * scale[:, None]
            assert (expected - weight).abs().max() > 0, name  # rounding happened
        a_key = f"base_model.model.{layer}.lora_A.weight"
        if a_key in adapter:
            expected = expected + 2.0 * adapter[f"base_model.model.{layer}.lora_B.weight"] @ adapter[a_key]
        assert merged[name].dtype == weight.dtype, name
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0)
    # `jijian train export --merge` from the checkpoint writes the same merged model.
    result = CliRunner().invoke(app, ["train", "export", str(int8.output_dir), "--to", str(tmp_path / "m"), "--merge"])
    assert result.exit_code == 0, result.output
    exported = load_file(tmp_path / "m" / "model.safetensors")
    assert all(torch.equal(exported[k], merged[k]) for k in merged)


def test_an_int8_base_is_refused_with_a_bad_value_or_a_parallel_layout(tmp_path, tokenizer, monkeypatch):
    with pytest.raises(ConfigError, match=r"train\.lora\.base_weights"):
        parse_config({"train": {"lora": {"base_weights": "int4"}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"train\.base_weights|base_weights"):
        parse_config({"train": {"base_weights": "int8"}}, base_dir=tmp_path)  # only under [train.lora]
    _, base_dir = qwen2_base(tmp_path, vocab=tokenizer.vocab_size)
    tokenizer.save(tmp_path / "tokenizer")
    cfg = lora_run_config(tmp_path, base_dir, tmp_path / "absent.jsonl", tmp_path / "tokenizer", dp_shard=2)
    cfg.train.lora.base_weights = "int8"
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: each rank refuses before joining a process group
    with pytest.raises(TrainSetupError, match=r'train\.lora\.base_weights = "int8".*parallel\.dp_shard = 2'):
        run_training(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
