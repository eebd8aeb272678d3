"""Chaos: ranks SIGKILLed at random steps three times; torchrun restarts the job, which resumes from its
last checkpoint and ends with weights bitwise identical to an uninterrupted run. Then the 4-rank
checkpoint is loaded on 2 ranks with another layout and must give the same full model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from torchrun_env import start_torchrun, stop

from jijian.files import read_json_lines
from jijian.files.rundir import summarize_goodput

STEPS = 60
KILLS = 3

pytestmark = pytest.mark.multiprocess


def write_config(root: Path, name: str, parallel: dict, checkpoint: dict) -> Path:
    config = {
        "model": {
            "dim": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_dim": 128,
            "vocab_size": 512,
            "max_seq_len": 32,
            "tie_embeddings": False,
        },
        "tokenizer": {"path": str(root / "tokenizer")},
        "data": {"sources": [str(root / "corpus.jsonl")], "validation_fraction": 0},
        "train": {
            "output_dir": str(root / name),
            "steps": STEPS,
            "batch_size": 8,
            "seq_len": 16,
            "lr": 3e-3,
            "warmup_steps": 5,
            "log_every": 10,
            "device": "cpu",
            "seed": 7,
        },
        "parallel": parallel,
        "checkpoint": {"enabled": True, "interval": 10, "keep_last": 2, **checkpoint},
    }
    path = root / f"{name}.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def torchrun(root: Path, config: Path, world: int, max_restarts: int = 0, *more: Path) -> subprocess.Popen:
    """torchrun on `config` with jijian's worker (or, given `more` configs, with the test helper running all)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.1",
        *(["-m", "jijian.train.worker"] if not more else [str(Path(__file__).with_name("run_layouts.py"))]),
        str(config),
        *map(str, more),
    ]
    with (root / f"{config.stem}.log").open("a") as log:
        return start_torchrun(cmd, root, stdout=log, stderr=subprocess.STDOUT)


def wait_ok(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """The job's exit code is 0 within `timeout` seconds (else it is stopped and its log's tail shown)."""
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop(proc)
    assert code == 0, log.read_text()[-3000:]


def worker_pids(launcher: int) -> dict[int, int]:
    """RANK -> PID of the launcher's child processes (the ranks), read from /proc."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(entry.name)
    return ranks


def wait_for_step(ledger: Path, attempt: int, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until attempt number `attempt` (1-based) of the run has logged optimiser step >= `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before the kill"
        if ledger.exists():
            seen, reached = 0, 0
            for event in read_json_lines(ledger):
                if event["event"] == "attempt":
                    seen += 1
                elif event["event"] == "step" and seen == attempt:
                    reached = max(reached, event["step"])
            if seen == attempt and reached >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"attempt {attempt} did not reach step {step} in {timeout} s")


def run_with_kills(root: Path, config: Path, world: int, seed: int) -> subprocess.Popen:
    rng = random.Random(seed)
    kill_steps = sorted(rng.sample(range(3, STEPS - 10), KILLS))  # well before the end: the job must still run
    proc = torchrun(root, config, world, max_restarts=KILLS)
    ledger = root / config.stem / "goodput.jsonl"
    try:
        for attempt, step in enumerate(kill_steps, start=1):
            wait_for_step(ledger, attempt, step, proc)
            rank = rng.randrange(world)
            pids = worker_pids(proc.pid)
            assert rank in pids, pids
            os.kill(pids[rank], signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        stop(proc)
    return proc


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer, corpus_texts):
    root = tmp_path_factory.mktemp("chaos")
    tokenizer.save(root / "tokenizer")
    with (root / "corpus.jsonl").open("w") as f:
        for text in corpus_texts[:6]:
            f.write(json.dumps({"text": text[:6000]}) + "\n")
    return root


CASES = {
    "dp_shard2": (2, {"dp_shard": 2}, {"async_mode": "off"}),
    "dp_shard2_tp2": (4, {"dp_shard": 2, "tp": 2}, {"async_mode": "thread"}),
}


@pytest.fixture(scope="module")
def reference_run(root):
    """f(case) -> the directory of that case's uninterrupted run, trained once by whichever test asks first."""
    finished: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in finished:
            world, parallel, checkpoint = CASES[name]
            config = write_config(root, f"{name}_reference", parallel, checkpoint)
            wait_ok(torchrun(root, config, world), root / f"{config.stem}.log")
            finished[name] = root / config.stem
        return finished[name]

    return run


@pytest.mark.parametrize("name", list(CASES))
def test_killed_ranks_restart_and_end_bitwise_identical(root, reference_run, name):
    world, parallel, checkpoint = CASES[name]
    reference = reference_run(name)
    chaos = write_config(root, f"{name}_chaos", parallel, checkpoint)
    proc = run_with_kills(root, chaos, world, seed=sum(map(ord, name)))
    assert proc.returncode == 0, (root / f"{chaos.stem}.log").read_text()[-3000:]
    assert_bitwise_equal(final_weights(root / chaos.stem), final_weights(reference))

    ledger = summarize_goodput(read_json_lines(root / chaos.stem / "goodput.jsonl"))
    assert ledger["attempts"] == KILLS + 1
    assert ledger["restart_lost_s"] > 0
    clean = summarize_goodput(read_json_lines(reference / "goodput.jsonl"))
    assert clean["attempts"] == 1 and clean["restart_lost_s"] == 0 and clean["recomputed_s"] == 0
    accounted = ledger["productive_s"] + ledger["recomputed_s"] + ledger["restart_lost_s"]
    assert accounted <= ledger["wall_s"] + 1e-6
    # Time lost to the restarts is out of the productive share (not compared with the clean run's timing,
    # which another load on the machine can change either way).
    assert ledger["goodput"] == pytest.approx(ledger["productive_s"] / ledger["wall_s"])
    assert ledger["goodput"] <= 1 - ledger["restart_lost_s"] / ledger["wall_s"] + 1e-9
    records = [json.loads(line) for line in (root / chaos.stem / "metrics.jsonl").read_text().splitlines() if line]
    assert len([r for r in records if r.get("event") == "resumed"]) >= 1


def test_a_four_rank_checkpoint_loads_on_two_ranks_with_another_layout(root, reference_run):
    source = reference_run("dp_shard2_tp2")
    saved = {"dir": str(source / "checkpoints")}
    tp = write_config(root, "resharded_tp2", {"dp_shard": 1, "tp": 2}, saved)
    pp = write_config(root, "resharded_pp2", {"dp_shard": 1, "pp": 2, "pp_microbatches": 2}, saved)
    wait_ok(torchrun(root, tp, 2, 0, pp), root / f"{tp.stem}.log")
    for name in ("resharded_tp2", "resharded_pp2"):
        records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r.get("event") == "resumed"] == [STEPS]
        # Gathered from 2 tensor-parallel ranks or 2 pipeline stages: exactly what 2 x 2 ranks saved.
        assert_bitwise_equal(final_weights(root / name), final_weights(source))
