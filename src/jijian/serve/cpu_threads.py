"""One OpenMP team per serving process: other threads give their idle CPU workers back.

PyTorch's CPU kernels run on OpenMP (libgomp in the Linux wheels), and every thread that runs a
parallel kernel gets a team of worker threads of its own, kept idle for as long as that thread lives.
libgomp counts every such worker: once the process holds more of them than there are CPUs, every team
stops spinning between kernels and sleeps instead, so each kernel pays a futex wake of its workers.
A server loads its model on the main thread and decodes on the engine thread, so that is what happens
to it: on 2 cores an elementwise add went from 5 to 80 us, and SmolLM2's serving throughput from 169 to
103 tokens/s (the same engine, in the main thread against a second thread).

So the thread that built the model gives its workers back before serving, and the worker threads
that run guard checks, retrieval or embeddings beside the engine give theirs back after each call
(`release_idle_workers`, OpenMP 5's `omp_pause_resource_all`). A later parallel kernel on those
threads starts a new team (about 0.1 ms); the engine thread's team is the one that stays.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: release the threads, keep the runtime's other state

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _pause_resource_all() -> Callable[[int], int] | None:
    """`omp_pause_resource_all` of the OpenMP runtime PyTorch's kernels use, or None (none, or older than 5.0).

    The symbol is looked up through libtorch_cpu, which finds it in the runtime that library links: a
    process can hold several copies of libgomp (faiss and scikit-learn wheels bundle their own), and each
    keeps its own teams, so pausing another copy would do nothing for PyTorch's.
    """
    libraries: list[str | None] = [str(p) for p in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))]
    for library in [*libraries, None]:  # None: the symbols already loaded into the process
        try:
            function = ctypes.CDLL(library).omp_pause_resource_all  # a loaded library: the same handle
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
        return function
    return None


def release_idle_workers() -> bool:
    """Stop the calling thread's idle OpenMP worker threads; True if the runtime did.

    Call it on a thread that has run CPU kernels and will not run the engine: the thread that loaded
    the model, or a worker thread after a guard check. It is a no-op (False) inside a parallel region,
    without an OpenMP runtime, or with one older than OpenMP 5.0.
    """
    pause = _pause_resource_all()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0


async def to_side_thread(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`asyncio.to_thread` for CPU work beside the engine: the worker thread then gives back its OpenMP team."""

    def call() -> R:
        try:
            return function(*args, **kwargs)
        finally:
            release_idle_workers()

    return await asyncio.to_thread(call)
