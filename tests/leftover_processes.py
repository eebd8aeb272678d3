"""A pytest plugin: the run fails if a process it started (or one of theirs) is still alive when it ends.

Loaded by tests/conftest.py; a test runs it on its own (`-p leftover_processes`) to show that it fails a run.
On Linux the pytest process is made a child subreaper, so a rank orphaned by a killed launcher is
reparented to pytest and still counted, instead of escaping to init.
"""

from __future__ import annotations

import ctypes
import os
import sys

import psutil
import pytest

# Processes told to stop by a test's clean-up get this long to finish exiting.
GRACE_S = float(os.environ.get("JIJIAN_LEFTOVER_GRACE_S", "5"))
_PR_SET_CHILD_SUBREAPER = 36


def pytest_configure(config: pytest.Config) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _living_descendants() -> list[psutil.Process]:
    alive = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def _describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    survivors = _living_descendants()
    if not survivors:
        return
    _, survivors = psutil.wait_procs(survivors, timeout=GRACE_S)
    survivors = [p for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if not survivors:
        return
    lines = "\n".join(f"  {_describe(p)}" for p in survivors)
    sys.stderr.write(f"\nleftover processes: {len(survivors)} started by the tests still run (killed now):\n{lines}\n")
    for process in survivors:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(survivors, timeout=GRACE_S)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
