"""Feeding the trainer from many small files: jijian's packed loader against a naive loader and raw memmap.

The corpus is generated: the interpreter's standard-library .py files cut into pieces of 30 lines,
written as >= 20,000 small files into a temporary directory that the script removes at the end.
A byte-level BPE tokenizer (vocab 4096) is trained on 2 MB of them. Then, in one run:

1. build: `jijian data build` over all the files with 1 worker process and with 2 (MB/s of input
   by the build's own clock, worker start-up included; both outputs must be byte-identical);
2. naive: a `torch.utils.data.Dataset` whose `__getitem__` opens one small file and tokenises it,
   read in shuffled order through a `DataLoader` and cut into (batch, seq_len) batches — what a
   training script does without a data pipeline. Tokens/s delivered;
3. jijian: `PackedLoader` over the built shards (shuffled, prefetching), tokens/s delivered;
4. raw: `numpy.memmap` of the same shard files reading the same windows in the same order into
   int64 arrays, with the window offsets precomputed (the floor no loader can beat by much).

Run from the repository root:

    .venv/bin/python benchmarks/data_loader.py --quick   # about a minute
    .venv/bin/python benchmarks/data_loader.py

The last lines are `RESULT data_packed_vs_small_files_tokens_per_s <ratio> target >= 50`,
`RESULT data_packed_vs_raw_memmap <ratio> target >= 0.8` and
`RESULT data_build_2_vs_1_workers <ratio> target >= 1.2` with PASS or FAIL. The exit code is 0 whatever
the verdict. On a machine shared with other jobs, every number (the build ratio above all) is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from jijian.data import PackedLoader, PackedTokens
from jijian.model.tokenizer import Tokenizer, train_tokenizer

LINES_PER_FILE = 30
SEQ_LEN = 2048
BATCH = 8
TARGET_VS_NAIVE = 50.0
TARGET_VS_MEMMAP = 0.8
TARGET_BUILD = 1.2


def write_small_files(root: Path, count: int) -> list[Path]:
    """Cut stdlib .py files into LINES_PER_FILE-line pieces until `count` files exist."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    files: list[Path] = []
    for source in sources:
        lines = source.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        for start in range(0, len(lines), LINES_PER_FILE):
            piece = "".join(lines[start : start + LINES_PER_FILE])
            path = root / f"{len(files) // 1000:03d}" / f"{len(files):06d}.py"
            if len(files) % 1000 == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(piece, encoding="utf-8")
            files.append(path)
            if len(files) == count:
                return files
    raise SystemExit(f"the standard library yields only {len(files)} pieces; need {count}")


class SmallFiles(Dataset):
    """The naive competitor: one item per small file, opened and tokenised on access."""

    def __init__(self, files: list[Path], tokenizer: Tokenizer) -> None:
        self.files = files
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        text = self.files[index].read_text(encoding="utf-8", errors="replace")
        return torch.tensor(self.tokenizer.encode(text, add_eos=True), dtype=torch.int64)


def naive_tokens_per_s(files: list[Path], tokenizer: Tokenizer, n_batches: int) -> float:
    """Batches of (BATCH, SEQ_LEN) cut from the shuffled small files, tokenised on the fly."""
    loader = DataLoader(SmallFiles(files, tokenizer), batch_size=None, shuffle=True, num_workers=0)
    buffer: list[torch.Tensor] = []
    buffered = delivered = 0
    need = BATCH * (SEQ_LEN + 1)
    start = time.perf_counter()
    for tokens in loader:
        buffer.append(tokens)
        buffered += len(tokens)
        if buffered >= need:
            flat = torch.cat(buffer)
            batch = flat[:need].view(BATCH, SEQ_LEN + 1)
            inputs, _targets = batch[:, :-1], batch[:, 1:]
            delivered += inputs.numel()
            buffer, buffered = [flat[need:]], len(flat) - need
            if delivered >= n_batches * BATCH * SEQ_LEN:
                break
    return delivered / (time.perf_counter() - start)


def packed_tokens_per_s(tokens: PackedTokens, n_batches: int) -> float:
    """jijian's loader, shuffled, with its prefetch thread."""
    loader = PackedLoader(tokens, seq_len=SEQ_LEN, batch_size=BATCH, seed=0)
    next(loader)  # starts the prefetch thread; the steady state is what training sees
    start = time.perf_counter()
    for _ in range(n_batches):
        inputs, _targets = next(loader)
    elapsed = time.perf_counter() - start
    loader.close()
    return n_batches * inputs.numel() / elapsed


def raw_memmap_tokens_per_s(tokens: PackedTokens, n_batches: int) -> float:
    """The same windows, in the same order, read straight from np.memmap (offsets computed beforehand)."""
    reference = PackedLoader(tokens, seq_len=SEQ_LEN, batch_size=BATCH, seed=0, prefetch=0)
    starts = [reference.sequence_indices(b) * SEQ_LEN for b in range(1, n_batches + 1)]
    dtype = np.dtype(tokens.manifest["dtype"])
    shards = [
        np.memmap(tokens.directory / s["file"], dtype=dtype, mode="r")
        for s in tokens.manifest["splits"]["train"]["shards"]
    ]
    if len(shards) != 1:
        raise SystemExit("the raw reader assumes one shard; raise --shard-mb")
    memmap = shards[0]
    start = time.perf_counter()
    for batch_starts in starts:
        batch = np.stack([memmap[s : s + SEQ_LEN + 1] for s in batch_starts]).astype(np.int64)
        inputs, _targets = batch[:, :-1], batch[:, 1:]
    return n_batches * inputs.size / (time.perf_counter() - start)


def timed_build(root: Path, sources: Path, out: Path, workers: int) -> tuple[float, dict]:
    """MB/s of input for one full `jijian data build` (its own clock: pool start-up included)."""
    # Through the CLI in a fresh process, as users run it: worker processes then start from the light
    # `jijian` entry point instead of re-importing this script (and torch) as their __main__.
    command = [sys.executable, "-m", "jijian", "data", "build", "-s", str(sources), "--out", str(out)]
    command += ["--tokenizer", str(root / "tokenizer"), "--workers", str(workers), "--force"]
    command += ["--validation-fraction", "0", "--shard-size-mb", "1024"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    stats = manifest["stats"]
    return stats["input_bytes"] / 1e6 / stats["build_seconds"], manifest


def verdict(name: str, value: float, target: float) -> str:
    return f"RESULT {name} {value:.2f} target >= {target:g} {'PASS' if value >= target else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches timed (still 20,000 files)")
    parser.add_argument("--files", type=int, default=20_000, help="small files to generate")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the generated files (removed after)")
    args = parser.parse_args()
    naive_batches, packed_batches = (20, 2000) if args.quick else (60, 6000)

    root = Path(tempfile.mkdtemp(prefix="jijian-data-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        files = write_small_files(root / "files", args.files)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"corpus: {len(files):,} files, {total_mb:.1f} MB (written in {time.perf_counter() - t0:.0f} s)")
        sample, size = [], 0
        for path in files[:: max(1, len(files) // 2000)]:
            sample.append(path.read_text(encoding="utf-8"))
            size += len(sample[-1])
        tokenizer = train_tokenizer(sample, vocab_size=4096)

        tokenizer.save(root / "tokenizer")
        one_mb_s, manifest_1 = timed_build(root, root / "files", root / "one", workers=1)
        two_mb_s, manifest_2 = timed_build(root, root / "files", root / "two", workers=2)
        if manifest_1["splits"] != manifest_2["splits"]:
            raise SystemExit("1-worker and 2-worker builds differ: the build is not deterministic")
        totals = manifest_2["stats"]["totals"]
        print(
            f"build: {totals['kept_documents']:,} documents kept, {totals['exact_duplicates']} exact + "
            f"{totals['near_duplicates']} near duplicates, {totals['filtered']} filtered, "
            f"{totals['train_tokens']:,} tokens"
        )
        print(
            f"build: 1 worker {one_mb_s:.2f} MB/s, 2 workers {two_mb_s:.2f} MB/s (machine has {os.cpu_count()} cores)"
        )

        tokens = PackedTokens(root / "two")
        naive = naive_tokens_per_s(files, tokenizer, naive_batches)
        raw = raw_memmap_tokens_per_s(tokens, packed_batches)
        packed = packed_tokens_per_s(tokens, packed_batches)
        print(f"loader ({BATCH} x {SEQ_LEN}): naive small files {naive:,.0f} tokens/s")
        print(f"loader ({BATCH} x {SEQ_LEN}): raw numpy.memmap   {raw:,.0f} tokens/s")
        print(f"loader ({BATCH} x {SEQ_LEN}): jijian PackedLoader {packed:,.0f} tokens/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(verdict("data_packed_vs_small_files_tokens_per_s", packed / naive, TARGET_VS_NAIVE))
    print(verdict("data_packed_vs_raw_memmap", packed / raw, TARGET_VS_MEMMAP))
    print(verdict("data_build_2_vs_1_workers", two_mb_s / one_mb_s, TARGET_BUILD))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
