"""A thread that ran CPU kernels gives its idle OpenMP workers back (serve.cpu_threads)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

# faiss bundles its own copy of libgomp: loaded first, it must not be the runtime that gets paused.
import faiss  # noqa: F401
import pytest
import torch
from fastapi import FastAPI

from jijian.serve.cpu_threads import _pause_resource_all, release_idle_workers, to_side_thread
from jijian.serve.server import serve_in_thread

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc"),
    pytest.mark.skipif(_pause_resource_all() is None, reason="no OpenMP 5 runtime loaded by torch"),
]


def process_threads() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/task")}


def parallel_kernel() -> torch.Tensor:
    """An elementwise add big enough (1M elements, above ATen's grain size) to run on the thread's team."""
    x = torch.arange(1 << 20, dtype=torch.float32)
    return x + x


def wait_until_gone(threads: set[int], timeout_s: float = 10.0) -> set[int]:
    """The threads of `threads` still alive once they all exited or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while (alive := threads & process_threads()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return alive


def on_new_thread(body: Callable[[], None]) -> None:
    """Run `body` on a fresh thread (its own OpenMP team) and re-raise what it raised."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


@pytest.fixture
def two_threads():
    """At least two intra-op threads, so that a parallel kernel starts a worker (CI's 2 cores give two)."""
    before = torch.get_num_threads()
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: OpenMP starts no worker threads")
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


def test_release_stops_the_callers_workers_and_kernels_still_run(two_threads) -> None:
    def body() -> None:
        torch.set_num_threads(2)
        before = process_threads()
        expected = parallel_kernel()
        workers = process_threads() - before
        assert workers, "the parallel kernel started no OpenMP worker thread"
        assert release_idle_workers()
        assert not wait_until_gone(workers), "the workers outlived release_idle_workers"
        # The next parallel kernel starts a new team and computes the same.
        again = process_threads()
        assert torch.equal(parallel_kernel(), expected)
        new_workers = process_threads() - again
        assert new_workers
        assert release_idle_workers()
        assert not wait_until_gone(new_workers)

    on_new_thread(body)


def test_to_side_thread_returns_raises_and_releases(two_threads) -> None:
    seen: dict[str, set[int]] = {}

    def work(scale: float) -> float:
        before = process_threads()
        value = float(parallel_kernel().sum()) * scale
        seen["workers"] = process_threads() - before
        return value

    def fail() -> None:
        raise ValueError("bad input")

    async def main() -> float:
        value = await to_side_thread(work, 2.0)
        # Checked while the executor's thread is still alive (asyncio.run joins it on the way out).
        assert seen["workers"], "the kernel ran on no team"
        assert not wait_until_gone(seen["workers"]), "the worker thread kept its OpenMP team"
        with pytest.raises(ValueError, match="bad input"):
            await to_side_thread(fail)
        return value

    assert asyncio.run(main()) == float(parallel_kernel().sum()) * 2.0


def test_serve_in_thread_releases_the_callers_workers(two_threads) -> None:
    def body() -> None:
        torch.set_num_threads(2)
        before = process_threads()
        parallel_kernel()  # e.g. loading the model on this thread
        workers = process_threads() - before
        assert workers
        with serve_in_thread(FastAPI()):
            assert not wait_until_gone(workers), "the model-loading thread's team is still there while serving"

    on_new_thread(body)


def test_serve_hands_cpu_work_to_threads_only_through_to_side_thread() -> None:
    """A plain asyncio.to_thread in the server would leave its worker thread's OpenMP team behind."""
    import jijian.serve

    root = Path(jijian.serve.__file__).parent
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "cpu_threads.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "to_thread(" in line and "to_side_thread(" not in line
    ]
    assert not offenders, f"use cpu_threads.to_side_thread: {offenders}"
