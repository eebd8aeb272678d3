"""The GPU figures of `scripts/gpu-check`: training throughput and MFU, and serving throughput vs transformers.

- train: the `llama-1b` preset (1.2B parameters) built by the trainer's own `build_model_parts`,
  `torch.compile` per block, AdamW, on random tokens; tokens/s over the timed steps after warm-up, and
  MFU = tokens/s x FLOPs per token / the device's dense bf16 peak. Measured twice: the one-device path
  (bf16 autocast, no process group) and the multi-GPU path on a one-rank process group (FSDP2 with
  bf16 parameters and fp32 reduction over `cpu:gloo,cuda:nccl`); the RESULT line is the FSDP2 one.
- serve: the same shape with random weights (no 1B model ships offline; throughput does not depend on
  the weights' values) served by jijian's engine (continuous batching, paged KV cache) with
  32 requests of 128 output tokens each (EOS ignored), and one request alone, against `transformers`
  `generate` on the same weights, one request at a time, on the same GPU. The engine runs twice: decode
  steps replayed as CUDA graphs (the default, `compile_decode = "auto"`) and the eager dynamic path.

    python3 benchmarks/gpu_check.py                       # on a CUDA machine (scripts/gpu-check runs it)
    python3 benchmarks/gpu_check.py --device cpu --preset llama-tiny --quick   # the same code, on a CPU

Ends with `RESULT gpu_serve_graphs_vs_eager <x> target >= 1.5`, `RESULT gpu_single_stream_graphs_vs_eager <x>
target >= 1.5`, `RESULT gpu_train_mfu <x> target >= 0.4` and `RESULT gpu_serve_vs_hf_generate <x> target >= 5`;
`--serve-only` skips training.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from jijian.config import ModelConfig, TrainConfig
from jijian.model.device import process_group_backend, resolve_device
from jijian.spec.shape import ModelShape, training_flops_per_token
from jijian.train.flops import peak_flops
from jijian.train.layout import Layout
from jijian.train.optim import build_optimizer
from jijian.train.parallel import ParallelDims, build_model_parts

MFU_TARGET = 0.4
SERVE_TARGET = 5.0
GRAPHS_TARGET = 1.5  # decode replayed as CUDA graphs over the eager engine: launch overhead dominates at 1B


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def release(device: torch.device) -> None:
    """Hand the caching allocator's free blocks back, so the next measurement starts with the memory free."""
    gc.collect()
    if device.type != "cpu":
        torch.accelerator.empty_cache()


class OneRankFsdpDims(ParallelDims):
    """A one-rank mesh that still shards with FSDP2, so one device runs the multi-GPU code path."""

    @property
    def fsdp_mesh(self) -> DeviceMesh | None:
        return self.mesh


def one_rank_fsdp_dims(device: torch.device) -> ParallelDims:
    """Join a one-rank process group with the trainer's backends and build a `dp_shard` mesh of size 1."""
    if not dist.is_initialized():
        dist.init_process_group(process_group_backend(device), store=dist.HashStore(), rank=0, world_size=1)
    return OneRankFsdpDims(Layout(), init_device_mesh(device.type, (1,), mesh_dim_names=("dp_shard",)))


def train_figures(
    cfg: ModelConfig, device: torch.device, seq_len: int, batch: int, steps: int, *, fsdp: bool
) -> tuple[float, float]:
    """(tokens/s, MFU) of real training steps of `cfg` on one device, with or without FSDP2."""
    train_cfg = TrainConfig(seq_len=seq_len, batch_size=batch, compile=device.type != "cpu", device=device.type)
    accelerator = device.type != "cpu"
    dims = one_rank_fsdp_dims(device) if fsdp else ParallelDims(Layout(), None)
    # As the trainer does: FSDP2 keeps bf16 parameters on an accelerator; one device without it autocasts.
    param_dtype = torch.bfloat16 if fsdp and accelerator else None
    parts = build_model_parts(cfg, train_cfg, dims, device, lambda a, b: a, param_dtype=param_dtype)
    model = parts.parts[0]
    optimizer = build_optimizer(model, train_cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=accelerator and not fsdp)
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
    mfu = tokens_per_s * training_flops_per_token(ModelShape.from_config(cfg), seq_len) / peak
    precision = "bf16 parameters" if param_dtype else "bf16 autocast" if accelerator else "fp32"
    path = f"{'FSDP2 on a one-rank group' if fsdp else 'one device'}, {precision}"
    print(f"train ({path}): {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%} "
          f"(peak {peak / 1e12:.1f} TFLOP/s: {source})", flush=True)  # fmt: skip
    return tokens_per_s, mfu


def engine_tokens_per_s(engine, prompts: list[list[int]], output: int, device: torch.device) -> float:
    """Output tokens/s of `engine` running `prompts` together to `output` tokens each (EOS ignored)."""
    from jijian.serve.request import SamplingParams

    synchronize(device)
    start = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_tokens=output, ignore_eos=True))
    synchronize(device)
    return sum(len(o) for o in outs) / (time.perf_counter() - start)


def serve_figures(cfg: ModelConfig, device: torch.device, concurrency: int, prompt_len: int, output: int) -> float:
    """jijian engine output tokens/s over transformers `generate` one request at a time, same weights.

    The engine runs twice: with decode steps replayed as CUDA graphs (`compile_decode = "auto"`, the
    default) and on the eager dynamic path (`"off"`), each with `concurrency` requests and with one.
    """
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
    rates: dict[str, tuple[float, float]] = {}
    for path in ("off", "auto"):
        began = time.perf_counter()
        config = EngineConfig(num_blocks=blocks, block_size=16, max_num_seqs=concurrency,
                              max_model_len=prompt_len + output, compile_decode=path)  # fmt: skip
        engine = LLMEngine(ours, None, config)
        engine.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        ready = time.perf_counter() - began
        rates[path] = (
            engine_tokens_per_s(engine, prompts, output, device),
            engine_tokens_per_s(engine, prompts[:1], output, device),
        )
        static = engine.runner.static_decoder
        mode = static.mode if static is not None else "dynamic"
        replays = f", {static.replays} graph replays" if static is not None and static.graphs else ""
        print(f"serve: jijian engine, {mode} decode (ready in {ready:.1f} s{replays}): "
              f"{rates[path][0]:,.0f} output tokens/s at concurrency {concurrency}, "
              f"{rates[path][1]:,.1f} tokens/s single stream", flush=True)  # fmt: skip
        del engine
        release(device)
    ours_tps = rates["auto"][0]

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
    print(f"serve: transformers generate one at a time {hf_tps:,.1f} tokens/s", flush=True)
    graphs_gain, single_gain = rates["auto"][0] / rates["off"][0], rates["auto"][1] / rates["off"][1]
    print(f"RESULT gpu_serve_graphs_vs_eager {graphs_gain:.2f} target >= {GRAPHS_TARGET} "
          f"{'PASS' if graphs_gain >= GRAPHS_TARGET else 'FAIL'}")  # fmt: skip
    print(f"RESULT gpu_single_stream_graphs_vs_eager {single_gain:.2f} target >= {GRAPHS_TARGET} "
          f"{'PASS' if single_gain >= GRAPHS_TARGET else 'FAIL'}")  # fmt: skip
    return ours_tps / hf_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="llama-1b")
    parser.add_argument("--quick", action="store_true", help="fewer steps and tokens (a smoke run)")
    parser.add_argument("--serve-only", action="store_true", help="only the serving figures")
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")
    cfg = ModelConfig(preset=args.preset, max_seq_len=2048)
    seq_len, batch, steps = (64, 2, 3) if args.quick else (2048, 4, 20)
    mfu = None
    if not args.serve_only:
        train_figures(cfg, device, seq_len, batch, steps, fsdp=False)
        release(device)  # the first model and optimizer state are unreachable now
        _, mfu = train_figures(cfg, device, seq_len, batch, steps, fsdp=True)
        release(device)
    concurrency, prompt_len, output = (4, 16, 8) if args.quick else (32, 256, 128)
    ratio = serve_figures(cfg, device, concurrency, prompt_len, output)
    if mfu is not None:
        print(f"RESULT gpu_train_mfu {mfu:.3f} target >= {MFU_TARGET} {'PASS' if mfu >= MFU_TARGET else 'FAIL'}")
    verdict = "PASS" if ratio >= SERVE_TARGET else "FAIL"
    print(f"RESULT gpu_serve_vs_hf_generate {ratio:.2f} target >= {SERVE_TARGET} {verdict}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
