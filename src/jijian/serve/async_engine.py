"""Runs the engine in a background thread and hands each request's outputs to asyncio consumers.

The engine is single-threaded by design; this wrapper owns the only thread that touches it. Requests
and aborts cross over through a lock-protected inbox; outputs come back through each request's
`asyncio.Queue`, fed with `call_soon_threadsafe`. A bounded queue refuses work instead of letting
latency grow without limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from jijian.serve.engine import LLMEngine, RequestOutput
from jijian.serve.request import SamplingParams


class QueueFullError(Exception):
    """The server already holds as many waiting requests as it accepts."""


class EngineRequestFailed(Exception):
    """Generation failed for one request (the engine goes on serving the others)."""


# Engine steps that may fail in a row before the engine counts as broken (/health answers 503).
MAX_CONSECUTIVE_STEP_FAILURES = 3


@dataclass
class _Stream:
    queue: asyncio.Queue[RequestOutput | BaseException]
    loop: asyncio.AbstractEventLoop
    arrival: float


class AsyncEngine:
    """Thread-backed asynchronous front of an LLMEngine."""

    def __init__(self, engine: LLMEngine, *, max_queue: int = 256) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._new: list[tuple[str, list[int], SamplingParams]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # set once the engine is broken, not for one failed request
        self.consecutive_failures = 0

    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jijian-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the engine thread and wait for it."""
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def queue_depth(self) -> int:
        """Requests accepted but not yet running."""
        with self._lock:
            pending = len(self._new)
        return pending + self.engine.num_waiting()

    async def generate(
        self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its outputs; leaving the iterator early aborts the request."""
        self.engine.check_request(prompt_token_ids, params)  # raises InvalidRequestError synchronously
        stream = _Stream(asyncio.Queue(), asyncio.get_running_loop(), time.monotonic())
        with self._lock:
            if len(self._new) + self.engine.num_waiting() >= self.max_queue:
                raise QueueFullError(f"the server queue is full ({self.max_queue} requests waiting)")
            self._streams[request_id] = stream
            self._new.append((request_id, list(prompt_token_ids), params))
        self._wakeup.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # client went away, timed out or failed: stop spending compute on it
                with self._lock:
                    self._aborts.append(request_id)
                self._wakeup.set()

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            with self._lock:
                new, self._new = self._new, []
                aborts, self._aborts = self._aborts, []
            for request_id in aborts:
                engine.abort(request_id)
                self._streams.pop(request_id, None)
            for request_id, prompt, params in new:
                if request_id in self._streams:
                    try:
                        engine.add_request(prompt, params, request_id=request_id)
                    except Exception as exc:
                        self._deliver(request_id, exc)
            if not engine.has_unfinished():
                self._wakeup.wait(timeout=0.5)
                self._wakeup.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as exc:  # a failure no single request owns: fail the live ones, keep serving
                self.consecutive_failures += 1
                if self.consecutive_failures >= MAX_CONSECUTIVE_STEP_FAILURES:
                    self.error = exc
                for request_id in list(self._streams):
                    engine.abort(request_id)
                    self._deliver(request_id, EngineRequestFailed(f"engine step failed: {exc!r}"))
                continue
            self.consecutive_failures = 0
            self.error = None
            for output in outputs:
                if output.error is not None:
                    self._deliver(output.request_id, EngineRequestFailed(output.error))
                else:
                    self._deliver(output.request_id, output)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        if isinstance(item, BaseException) or item.finished:
            self._streams.pop(request_id, None)
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)
