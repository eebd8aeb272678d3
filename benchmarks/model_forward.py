"""Training-step speed of the jijian Llama model against `transformers.LlamaForCausalLM` on CPU.

Measures forward + backward throughput (tokens/s) of one training step: logits from the model's own
forward, the same cross-entropy of logits against the shifted tokens computed outside the model for
both, then `loss.backward()`. Both models get the same config, the same weights (HF's state dict
copied into jijian), fp32, the same inputs, eager mode (no torch.compile) and HF's "sdpa" attention;
before timing, the script checks that the two produce the same logits (max abs diff < 1e-4).

Repetitions alternate between the two models (with warmups first) and each side's median
per-iteration time is reported, so that noise on a shared machine hits both alike.

Run from the repository root:

    .venv/bin/python benchmarks/model_forward.py --quick   # llama-tiny, 8 x 256, about a minute
    .venv/bin/python benchmarks/model_forward.py           # llama-tiny and llama-125m (4 layers), 4 x 512

The last lines are `RESULT model_forward_backward_speedup_vs_hf_<shape> <ratio> target >= 1.0 PASS|FAIL`,
ratio = jijian tokens/s / HF tokens/s. The exit code is 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from jijian.config import ModelConfig
from jijian.model.hf import hf_config_dict
from jijian.model.llama import build_model

transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")

LOGITS_TOLERANCE = 1e-4
TARGET = 1.0


@dataclass(frozen=True)
class Case:
    """One benchmarked shape: a model config and the batch fed to it."""

    name: str  # used in the RESULT line
    label: str  # shown in the table
    cfg: ModelConfig
    batch: int
    seq: int


@dataclass(frozen=True)
class Outcome:
    case: Case
    jijian_s: float  # median seconds per training step
    hf_s: float

    @property
    def tokens(self) -> int:
        return self.case.batch * self.case.seq

    @property
    def ratio(self) -> float:
        return self.hf_s / self.jijian_s  # = jijian tokens/s / HF tokens/s


def cases(quick: bool) -> list[Case]:
    tiny = ModelConfig(preset="llama-tiny")
    if quick:
        return [Case("llama_tiny", "llama-tiny", tiny, 8, 256)]
    small = ModelConfig(preset="llama-125m", n_layers=4)
    return [
        Case("llama_tiny", "llama-tiny", tiny, 4, 512),
        Case("llama_125m_4l", "llama-125m (4 layers)", small, 4, 512),
    ]


def build_pair(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The HF reference with its own initialisation, and a jijian model holding the same weights."""
    torch.manual_seed(0)
    hf_config = LlamaConfig(**hf_config_dict(cfg), attn_implementation="sdpa")
    hf_model = LlamaForCausalLM(hf_config).to(torch.float32)
    attn = hf_model.config._attn_implementation
    if attn != "sdpa":
        raise RuntimeError(f"transformers picked attention {attn!r}, not 'sdpa'")
    model = build_model(cfg, device="cpu", dtype=torch.float32, init=False)
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model.train(), hf_model.train()


def loss_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; the same code for both models."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def step_fn(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor):
    def step() -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = loss_of(forward(tokens), tokens)
        loss.backward()
        return time.perf_counter() - start

    return step


def check_logits(model: torch.nn.Module, hf_model: torch.nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        diff = (model(tokens) - hf_model(input_ids=tokens, use_cache=False).logits).abs().max().item()
    if not diff < LOGITS_TOLERANCE:
        raise AssertionError(f"logits differ by {diff:.3g} (tolerance {LOGITS_TOLERANCE}): not the same model")
    return diff


def run_case(case: Case, reps: int, warmup: int) -> Outcome:
    model, hf_model = build_pair(case.cfg)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, case.cfg.vocab_size, (case.batch, case.seq), generator=generator)
    diff = check_logits(model, hf_model, tokens)
    print(f"  {case.label}: max |logits diff| = {diff:.2e}", flush=True)

    steps = {
        "jijian": step_fn(model, model, tokens),
        "hf": step_fn(hf_model, lambda t: hf_model(input_ids=t, use_cache=False).logits, tokens),
    }
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for rep in range(reps):
        # Alternate who goes first, so neither side always runs right after the other.
        for name in order if rep % 2 == 0 else order[::-1]:
            times[name].append(steps[name]())
    model.zero_grad(set_to_none=True)
    hf_model.zero_grad(set_to_none=True)
    spread = ", ".join(f"{name} {min(t) * 1e3:.0f}..{max(t) * 1e3:.0f} ms" for name, t in times.items())
    print(f"  {case.label}: per-step time range over {reps} reps: {spread}", flush=True)
    return Outcome(case, statistics.median(times["jijian"]), statistics.median(times["hf"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="llama-tiny only, batch 8 x seq 256, fewer reps")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per model (default 12, quick 24)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()

    # Many short interleaved repetitions: the two models run the same kernels, so the ratio is close
    # to 1 and only a median over many reps separates a real difference from a neighbour's noise.
    reps = args.reps if args.reps is not None else (24 if args.quick else 12)
    warmup = 3
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"fp32, forward+backward, median of {reps} interleaved reps after {warmup} warmups"
    )

    outcomes = [run_case(case, reps, warmup) for case in cases(args.quick)]

    header = f"{'config':<24} {'batch x seq':>12} {'jijian tok/s':>13} {'HF tok/s':>10} {'ratio':>7}"
    print()
    print(header)
    print("-" * len(header))
    for o in outcomes:
        shape = f"{o.case.batch} x {o.case.seq}"
        print(
            f"{o.case.label:<24} {shape:>12} {o.tokens / o.jijian_s:>13.0f} {o.tokens / o.hf_s:>10.0f} {o.ratio:>7.3f}"
        )
    print()
    for o in outcomes:
        verdict = "PASS" if round(o.ratio, 3) >= TARGET else "FAIL"
        print(f"RESULT model_forward_backward_speedup_vs_hf_{o.case.name} {o.ratio:.3f} target >= {TARGET} {verdict}")


if __name__ == "__main__":
    main()
