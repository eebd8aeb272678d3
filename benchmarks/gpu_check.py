"""The GPU figures of `scripts/gpu-check`: training throughput and MFU, and serving throughput vs transformers.

- train: the `llama-1b` preset (1.2B parameters) built by the trainer's own `build_model_parts`, bf16
  autocast, `torch.compile` per block, AdamW, on random tokens of `--seq-len`; tokens/s over the timed
  steps after warm-up, and MFU = tokens/s x FLOPs per token / the device's dense bf16 peak.
- serve: the same shape with random weights (no 1B model ships offline; throughput does not depend on
  the weights' values) served by jijian's engine (continuous batching, paged KV cache) with
  `--concurrency` requests of `--output-tokens` each (EOS ignored), against `transformers` `generate`
  on the same weights, one request at a time, on the same GPU.

    python3 benchmarks/gpu_check.py                       # on a CUDA machine (scripts/gpu-check runs it)
    python3 benchmarks/gpu_check.py --device cpu --preset llama-tiny --quick   # the same code, on a CPU

Ends with `RESULT gpu_train_mfu <x> target >= 0.4` and `RESULT gpu_serve_vs_hf_generate <x> target >= 5`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from jijian.config import ModelConfig, TrainConfig
from jijian.model.device import resolve_device
from jijian.train.flops import flops_per_token, peak_flops
from jijian.train.layout import Layout
from jijian.train.optim import build_optimizer
from jijian.train.parallel import ParallelDims, build_model_parts

MFU_TARGET = 0.4
SERVE_TARGET = 5.0


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def train_figures(cfg: ModelConfig, device: torch.device, seq_len: int, batch: int, steps: int) -> tuple[float, float]:
    """(tokens/s, MFU) of real training steps of `cfg` on one device."""
    train_cfg = TrainConfig(seq_len=seq_len, batch_size=batch, compile=device.type != "cpu", device=device.type)
    dims = ParallelDims(Layout(), None)
    parts = build_model_parts(cfg, train_cfg, dims, device, lambda a, b: a)
    model = parts.parts[0]
    optimizer = build_optimizer(model, train_cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type != "cpu")
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), device=device)

    def step() -> None:
        with autocast:
            logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # compile and allocator warm-up
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    tokens_per_s = steps * batch * seq_len / (time.perf_counter() - start)
    peak, source = peak_flops(device, None)
    mfu = tokens_per_s * flops_per_token(cfg, seq_len) / peak
    print(f"train: {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%} (peak {peak / 1e12:.0f} TFLOP/s: {source})", flush=True)
    return tokens_per_s, mfu


def serve_figures(cfg: ModelConfig, device: torch.device, concurrency: int, prompt_len: int, output: int) -> float:
    """jijian engine output tokens/s over transformers `generate` one request at a time, same weights."""
    import transformers

    from jijian.model import build_model
    from jijian.model.hf import load_hf, save_hf
    from jijian.serve.engine import EngineConfig, LLMEngine
    from jijian.serve.request import SamplingParams

    dtype = torch.bfloat16 if device.type != "cpu" else torch.float32
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        save_hf(build_model(cfg), None, Path(scratch) / "model")
        ours, _ = load_hf(Path(scratch) / "model", device=device, dtype=dtype)
        reference = transformers.AutoModelForCausalLM.from_pretrained(Path(scratch) / "model", dtype=dtype)
    reference = reference.to(device).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(0, cfg.vocab_size, (prompt_len,), generator=generator).tolist() for _ in range(concurrency)
    ]
    blocks = concurrency * ((prompt_len + output) // 16 + 2)
    engine = LLMEngine(ours, None, EngineConfig(num_blocks=blocks, block_size=16, max_num_seqs=concurrency))
    params = SamplingParams(max_tokens=output, ignore_eos=True)
    engine.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    synchronize(device)
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    synchronize(device)
    ours_tps = sum(len(o) for o in outs) / (time.perf_counter() - start)

    sample = prompts[: min(4, concurrency)]  # one at a time: a few requests give the rate
    with torch.inference_mode():
        ids = torch.tensor([sample[0]], device=device)
        reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        synchronize(device)
        start = time.perf_counter()
        produced = 0
        for prompt in sample:
            ids = torch.tensor([prompt], device=device)
            out = reference.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=output, min_new_tokens=output, do_sample=False
            )
            produced += out.shape[1] - len(prompt)
        synchronize(device)
    hf_tps = produced / (time.perf_counter() - start)
    print(f"serve: jijian {ours_tps:,.0f} output tokens/s at concurrency {concurrency}; "
          f"transformers generate one at a time {hf_tps:,.0f} tokens/s", flush=True)  # fmt: skip
    return ours_tps / hf_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="llama-1b")
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens (a smoke run)")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    cfg = ModelConfig(preset=args.preset, max_seq_len=2048)
    seq_len, batch, steps = (64, 2, 3) if args.quick else (2048, 4, 20)
    _, mfu = train_figures(cfg, device, seq_len, batch, steps)
    if device.type != "cpu":
        torch.accelerator.empty_cache()
    concurrency, prompt_len, output = (4, 16, 8) if args.quick else (32, 256, 128)
    ratio = serve_figures(cfg, device, concurrency, prompt_len, output)
    print(f"RESULT gpu_train_mfu {mfu:.3f} target >= {MFU_TARGET} {'PASS' if mfu >= MFU_TARGET else 'FAIL'}")
    verdict = "PASS" if ratio >= SERVE_TARGET else "FAIL"
    print(f"RESULT gpu_serve_vs_hf_generate {ratio:.2f} target >= {SERVE_TARGET} {verdict}")


if __name__ == "__main__":
    main()
