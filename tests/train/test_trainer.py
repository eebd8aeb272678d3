"""The single-process trainer: schedule, accumulation, clipping, stopping, and a real run end to end."""

from __future__ import annotations

import copy
import itertools
import json
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from jijian.config import ModelConfig, TrainConfig, parse_config
from jijian.model import build_model, generate
from jijian.model.hf import load_hf
from jijian.train import Trainer, TrainSetupError, build_optimizer, lr_multiplier, run_training


def fixed_batches(count: int, batch: int = 4, seq: int = 16, vocab: int = 512, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (count, batch, seq + 1), generator=generator)
    return [(d[:, :-1], d[:, 1:]) for d in data]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    values = [lr_multiplier(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(values[:10]))
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    assert lr_multiplier(100, cfg) == pytest.approx(0.1)
    assert lr_multiplier(55, cfg) == pytest.approx(0.55)  # cosine midpoint


def test_weight_decay_skips_vectors(tiny_config):
    model = build_model(tiny_config)
    decayed, plain = build_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])


def test_gradient_accumulation_equals_one_large_batch(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    twin = copy.deepcopy(model)
    (big,) = fixed_batches(1, batch=4)
    halves = [(big[0][:2], big[1][:2]), (big[0][2:], big[1][2:])]
    cfg = dict(steps=1, warmup_steps=0, lr=1e-2, grad_clip=0.0)
    Trainer(model, TrainConfig(batch_size=4, **cfg), iter([big]), device=torch.device("cpu")).train_step()
    accumulated = Trainer(
        twin, TrainConfig(batch_size=2, grad_accum_steps=2, **cfg), iter(halves), device=torch.device("cpu")
    )
    accumulated.train_step()
    # Compare gradients (still held after the step): Adam's first update is about lr * sign(grad), which
    # would turn rounding-level differences in near-zero gradients into lr-sized ones.
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)
    assert accumulated.tokens_seen == 4 * 16


def test_gradients_are_clipped_to_the_global_norm(tiny_config):
    model = build_model(tiny_config)
    trainer = Trainer(
        model, TrainConfig(grad_clip=0.05, warmup_steps=0), iter(fixed_batches(1)), device=torch.device("cpu")
    )
    _, norm_before = trainer.train_step()
    norm_after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(norm_before) > 0.05
    assert float(norm_after) == pytest.approx(0.05, rel=1e-4)


@pytest.mark.slow
def test_loss_falls_when_the_data_can_be_learned(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    batches = fixed_batches(2)
    cfg = TrainConfig(steps=40, warmup_steps=2, lr=3e-3, log_every=5)
    result = Trainer(model, cfg, itertools.cycle(batches), device=torch.device("cpu")).fit()
    assert result.steps == 40 and result.tokens == 40 * 4 * 16
    assert result.final_loss < 0.5 * result.loss_at(1)


def test_max_minutes_stops_the_run_early(tiny_config):
    model = build_model(tiny_config)
    cfg = TrainConfig(steps=50, warmup_steps=0, max_minutes=1e-9)
    result = Trainer(model, cfg, itertools.cycle(fixed_batches(1)), device=torch.device("cpu")).fit()
    assert result.stopped_early and result.steps == 1


def test_non_finite_loss_stops_with_the_step_number(tiny_config):
    model = build_model(tiny_config)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    trainer = Trainer(
        model, TrainConfig(steps=5, warmup_steps=0), itertools.cycle(fixed_batches(1)), device=torch.device("cpu")
    )
    with pytest.raises(FloatingPointError, match="step 1"):
        trainer.fit()


def write_corpus(tmp_path, corpus_texts):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts), encoding="utf-8")
    return corpus


def small_run_config(tmp_path, corpus, tokenizer_dir, **train):
    return parse_config(
        {
            "model": {
                "dim": 64,
                "n_layers": 2,
                "n_heads": 4,
                "n_kv_heads": 2,
                "ffn_dim": 160,
                "vocab_size": 512,
                "max_seq_len": 128,
            },
            "tokenizer": {"path": str(tokenizer_dir)},
            "data": {"sources": [str(corpus)], "validation_fraction": 0.1},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "steps": 40,
                "batch_size": 8,
                "seq_len": 64,
                "lr": 3e-3,
                "warmup_steps": 4,
                "log_every": 10,
                "eval_batches": 2,
                "device": "cpu",
                **train,
            },
        },
        base_dir=tmp_path,
    )


@pytest.mark.model
def test_a_trained_model_continues_a_prompt_exactly_like_transformers(tmp_path, tokenizer, corpus_texts):
    tokenizer.save(tmp_path / "tokenizer")
    config = small_run_config(tmp_path, write_corpus(tmp_path, corpus_texts), tmp_path / "tokenizer")
    run = run_training(config)
    # The batch-prefetch thread is stopped, not left to die with the interpreter (a rank abort at exit).
    assert not [t for t in threading.enumerate() if t.name == "jijian-prefetch"]

    records = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    logged_steps = [r["step"] for r in records if "loss" in r]
    assert logged_steps == [1, 10, 20, 30, 40]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[1])
    assert run.result.final_loss < run.result.loss_at(1)
    assert run.result.val_loss is not None
    assert (run.output_dir / "deploy.toml").is_file() and (run.output_dir / "summary.json").is_file()

    model, saved_tokenizer = load_hf(run.model_dir)
    prompt = saved_tokenizer.encode("def main():\n    ", add_bos=True)
    ours = generate(model, prompt, 24, eos_id=saved_tokenizer.eos_id)
    reference = AutoModelForCausalLM.from_pretrained(run.model_dir).eval()
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt) :]
    assert ours == theirs.tolist()


def test_run_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path, tokenizer, corpus_texts):
    tokenizer.save(tmp_path / "tokenizer")
    config = small_run_config(tmp_path, write_corpus(tmp_path, corpus_texts), tmp_path / "tokenizer")
    config.model = ModelConfig(**{**config.model.model_dump(), "vocab_size": 300})
    with pytest.raises(TrainSetupError, match="vocab_size is 300"):
        run_training(config)


def test_run_without_a_tokenizer_says_how_to_get_one(tmp_path, corpus_texts):
    config = parse_config({"data": {"sources": [str(write_corpus(tmp_path, corpus_texts))]}}, base_dir=tmp_path)
    with pytest.raises(TrainSetupError, match="jijian tokenizer train"):
        run_training(config)
