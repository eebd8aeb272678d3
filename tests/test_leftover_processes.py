"""The session-end check: a pytest run whose tests leave a child process alive fails, and the child is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

TESTS_DIR = Path(__file__).parent

LEAKY = """
import subprocess, sys
from pathlib import Path

def test_starts_a_child_and_leaves_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path({pid_file!r}).write_text(str(child.pid))
"""

TIDY = """
import subprocess, sys

def test_starts_a_child_and_waits_for_it():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def run_pytest_on(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_case.py").write_text(textwrap.dedent(source))
    cmd = [sys.executable, "-m", "pytest", "-p", "leftover_processes", "-p", "no:randomly", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*cmd, "-q", "--rootdir", str(tmp_path), str(tmp_path / "test_case.py")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR), "JIJIAN_LEFTOVER_GRACE_S": "0.5"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_run_that_leaves_a_child_alive_fails_and_the_child_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    result = run_pytest_on(tmp_path, LEAKY.format(pid_file=str(pid_file)))
    output = result.stdout + result.stderr
    assert "1 passed" in output  # the test itself passed: the session-end check failed the run
    assert result.returncode == 1, output
    assert "leftover processes: 1" in output and "time.sleep(300)" in output
    pid = int(pid_file.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_run_that_waits_for_its_children_passes(tmp_path):
    result = run_pytest_on(tmp_path, TIDY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "leftover processes" not in result.stdout + result.stderr
