"""The environment the train tests start torchrun with: ranks meet through a file store, never a released port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from jijian.train.launch import RENDEZVOUS_DIR_ENV


def torchrun_env(root: Path) -> dict[str, str]:
    """os.environ plus one thread per rank, temporary files under `root`, and a file-based rendezvous there.

    torchrun's `--standalone` agent holds its own store's port, but the ranks' MASTER_PORT is one it found
    free and released; another process can take it before rank 0 binds it. The file store needs no port.
    """
    rendezvous = root / "rendezvous"
    rendezvous.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "TMPDIR": str(root),
        RENDEZVOUS_DIR_ENV: str(rendezvous),
    }


def start_torchrun(cmd: list[str], root: Path, **popen: Any) -> subprocess.Popen:
    """Start `cmd` (a torchrun command line) in its own session, so that stop() reaches its ranks too."""
    return subprocess.Popen(cmd, env=torchrun_env(root), start_new_session=True, **popen)


def stop(proc: subprocess.Popen) -> None:
    """Kill the torchrun agent and every rank it started that still runs, and reap the agent."""
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_torchrun(cmd: list[str], root: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` to its end with output captured; past `timeout` seconds its whole process group is killed."""
    proc = start_torchrun(cmd, root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
