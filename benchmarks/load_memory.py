"""Peak host memory of loading a >= 1B-parameter Hugging Face model: 4 sharded ranks vs one full load.

Writes a random Llama (1.1B parameters; `--quick`: 0.37B) with `transformers` in bf16 safetensors,
then in one run measures each process's peak resident memory (ru_maxrss):

- full:    one process loads the whole model with `load_hf` (fp32), which is what every rank of a
           fine-tune did before sharded loading;
- sharded: 4 CPU ranks under torchrun with `[parallel] dp_shard = 4` build the model on the meta
           device, apply FSDP2, and read only their own slices through DCP's Hugging Face reader.

- serving: each rank of `[serve] tensor_parallel = 4` loads its shard (`load_shard`: the meta model
           cut first, then only its rows and columns of the split tensors read from the memory-mapped
           files), one process per rank.

Also printed: the resident memory of a process that has only imported torch and jijian, which every
figure includes. Run from the repository root:

    .venv/bin/python benchmarks/load_memory.py --quick   # ~1 minute
    .venv/bin/python benchmarks/load_memory.py           # 1.1B parameters, a few minutes

The last lines are `RESULT load_peak_rss_per_rank_vs_full <ratio> target <= 0.4 PASS|FAIL` (the largest
training rank's peak over the full load's peak) and `RESULT serve_tp_rank_peak_rss_vs_full <ratio>
target < 1.0` (the largest serving rank's). A serving rank that loaded the whole model and then cut it,
as before, is at 1.0 or above; its floor is its share of the parameters, printed beside it, which
is larger than 1/4 because serving replicates the embedding and the output head (45 % of the quick
0.37B model with its 128k vocabulary, 3 % of llama3-70b). Scratch files go under --dir and are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET = 0.4
RANKS = 4


def peak_rss() -> int:
    """This process's peak resident set size in bytes.

    VmHWM belongs to the process's own address space; ru_maxrss would also carry the parent's peak
    across fork and exec, which is why the model is written by a child process too.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_write(directory: Path, quick: bool, out: Path) -> None:
    """A random Llama written by transformers (bf16, 2 GB safetensors files); records its parameter count."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=4 if quick else 16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="2GB")
    out.write_text(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}), encoding="utf-8")


def worker_full(hf_dir: Path, out: Path) -> None:
    """One process, the whole model in fp32."""
    from jijian.model.hf import load_hf

    model, _ = load_hf(hf_dir)
    record = {"peak_rss": peak_rss(), "parameter_bytes": sum(p.numel() * 4 for p in model.parameters())}
    out.write_text(json.dumps(record), encoding="utf-8")


def worker_baseline(out: Path) -> None:
    """Only the imports every loader pays for."""
    import jijian.model.hf
    import jijian.train.run  # noqa: F401

    out.write_text(json.dumps({"peak_rss": peak_rss()}), encoding="utf-8")


def worker_sharded(hf_dir: Path, out_dir: Path) -> None:
    """One rank of the dp_shard = 4 load (run under torchrun)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from jijian.config import DeployConfig
    from jijian.train.distributed import init_distributed, shutdown
    from jijian.train.layout import resolve_layout
    from jijian.train.parallel import build_model_parts, build_parallel_dims
    from jijian.train.run import model_shape

    config = DeployConfig.model_validate(
        {"model": {"hf_path": str(hf_dir)}, "train": {"device": "cpu", "seq_len": 16}, "parallel": {"dp_shard": RANKS}}
    )
    device = init_distributed(torch.device("cpu"), 600)
    dims = build_parallel_dims(resolve_layout(config, dist.get_world_size()), "cpu")
    parts = build_model_parts(model_shape(config), config.train, dims, device, lambda a, b: a, initial_hf_dir=hf_dir)
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * 4 for p in parts.parameters())
    record = {"peak_rss": peak_rss(), "parameter_bytes": local}
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(record), encoding="utf-8")
    shutdown()


def worker_serve_shard(hf_dir: Path, rank: int, out: Path) -> None:
    """One tensor-parallel serving rank's shard (fp32), read in slices."""
    import torch

    from jijian.serve.tensor_parallel import load_shard

    model = load_shard(hf_dir, rank, RANKS, torch.float32)
    record = {"peak_rss": peak_rss(), "parameter_bytes": sum(p.numel() * 4 for p in model.parameters())}
    out.write_text(json.dumps(record), encoding="utf-8")


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.37B parameters instead of 1.1B")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument(
        "--worker", choices=["write", "full", "baseline", "sharded", "serve_shard"], help=argparse.SUPPRESS
    )
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "write":
        return worker_write(args.hf_dir, args.quick, args.out)
    if args.worker == "full":
        return worker_full(args.hf_dir, args.out)
    if args.worker == "baseline":
        return worker_baseline(args.out)
    if args.worker == "sharded":
        return worker_sharded(args.hf_dir, args.out)
    if args.worker == "serve_shard":
        return worker_serve_shard(args.hf_dir, args.rank, args.out)

    scratch = Path(tempfile.mkdtemp(prefix="load-memory-", dir=args.dir))
    try:
        hf_dir = scratch / "hf"
        me = [sys.executable, __file__]
        size = ["--quick"] if args.quick else []
        run([*me, "--worker", "write", *size, "--hf-dir", str(hf_dir), "--out", str(scratch / "written.json")])
        n_params = json.loads((scratch / "written.json").read_text())["parameters"]
        disk = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors"))
        print(f"model: {n_params / 1e9:.2f}B parameters, {disk / 2**30:.2f} GiB of bf16 safetensors", flush=True)
        run([*me, "--worker", "baseline", "--out", str(scratch / "baseline.json")])
        run([*me, "--worker", "full", "--hf-dir", str(hf_dir), "--out", str(scratch / "full.json")])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={RANKS}"]
        run([*torchrun, __file__, "--worker", "sharded", "--hf-dir", str(hf_dir), "--out", str(scratch)])
        for r in range(RANKS):
            out = scratch / f"serve{r}.json"
            run([*me, "--worker", "serve_shard", "--rank", str(r), "--hf-dir", str(hf_dir), "--out", str(out)])

        baseline = json.loads((scratch / "baseline.json").read_text())["peak_rss"]
        full = json.loads((scratch / "full.json").read_text())
        ranks = [json.loads((scratch / f"rank{r}.json").read_text()) for r in range(RANKS)]
        gib = 2**30
        print(f"{'process':<24}{'peak RSS GiB':>14}{'parameters GiB':>16}")
        print(f"{'imports only':<24}{baseline / gib:>14.2f}{0:>16.2f}")
        print(f"{'full load (1 process)':<24}{full['peak_rss'] / gib:>14.2f}{full['parameter_bytes'] / gib:>16.2f}")
        for r, rec in enumerate(ranks):
            print(f"{f'dp_shard=4 rank {r}':<24}{rec['peak_rss'] / gib:>14.2f}{rec['parameter_bytes'] / gib:>16.2f}")
        serving = [json.loads((scratch / f"serve{r}.json").read_text()) for r in range(RANKS)]
        for r, rec in enumerate(serving):
            print(f"{f'serve tp=4 rank {r}':<24}{rec['peak_rss'] / gib:>14.2f}{rec['parameter_bytes'] / gib:>16.2f}")
        ratio = max(rec["peak_rss"] for rec in ranks) / full["peak_rss"]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(f"RESULT load_peak_rss_per_rank_vs_full {ratio:.3f} target <= {TARGET} {verdict}")
        share = max(rec["parameter_bytes"] for rec in serving) / full["parameter_bytes"]
        serve_ratio = max(rec["peak_rss"] for rec in serving) / full["peak_rss"]
        print(f"serving rank's share of the parameters: {share:.3f} (the floor of the ratio below)")
        verdict = "PASS" if serve_ratio < 1.0 else "FAIL"
        print(f"RESULT serve_tp_rank_peak_rss_vs_full {serve_ratio:.3f} target < 1.0 {verdict}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
