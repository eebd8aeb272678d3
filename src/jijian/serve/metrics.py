"""Prometheus metrics of one server: latency histograms, throughput, queue, KV use, cost per token."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jijian.serve.async_engine import AsyncEngine

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The dashboard's percentiles come from the latest requests, not from histogram buckets (too coarse).
_RECENT_SAMPLES = 1024
# Live tokens/s is measured over this window of wall time (seconds).
_RATE_WINDOW_S = 30.0


class ServerMetrics:
    """One registry per server, so that tests can run several servers in one process."""

    def __init__(self, engine: AsyncEngine, price_per_hour: float | None = None) -> None:
        self.registry = CollectorRegistry()
        self.engine = engine
        self.price_per_hour = price_per_hour
        r = self.registry
        self.ttft = Histogram(
            "jijian_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "jijian_time_per_output_token_seconds",
            "Time per output token after the first",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter("jijian_requests", "Finished requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter("jijian_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.output_tokens = Counter("jijian_output_tokens", "Generated tokens of finished requests", registry=r)
        self._recent_ttft: deque[float] = deque(maxlen=_RECENT_SAMPLES)
        self._recent_tpot: deque[float] = deque(maxlen=_RECENT_SAMPLES)
        # Seeded at start-up, so the first poll already measures the tokens generated since then.
        self._rate_samples: deque[tuple[float, int]] = deque([(time.monotonic(), engine.engine.stats.generated_tokens)])
        self._lock = threading.Lock()
        stats = engine.engine.stats
        Gauge("jijian_queue_depth", "Requests waiting to run", registry=r).set_function(engine.queue_depth)
        Gauge("jijian_running_requests", "Requests in the running batch", registry=r).set_function(
            engine.engine.num_running
        )
        Gauge("jijian_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use", registry=r).set_function(
            lambda: stats.kv_usage
        )
        Gauge("jijian_batch_size", "Requests in the last engine step", registry=r).set_function(
            lambda: stats.last_batch_size
        )
        Gauge(
            "jijian_output_tokens_per_second", "Generated tokens per second of engine busy time", registry=r
        ).set_function(self.tokens_per_second)
        Gauge(
            "jijian_cost_per_million_output_tokens",
            "Hardware rent per million generated tokens at the measured throughput ([hardware] price; NaN if unset)",
            registry=r,
        ).set_function(self.cost_per_million_tokens)

    def observe_ttft(self, seconds: float) -> None:
        """Record one request's time to first token (histogram and recent window)."""
        self.ttft.observe(seconds)
        with self._lock:
            self._recent_ttft.append(seconds)

    def observe_tpot(self, seconds: float) -> None:
        """Record one request's mean time per output token after the first."""
        self.tpot.observe(seconds)
        with self._lock:
            self._recent_tpot.append(seconds)

    def latency_percentiles(self) -> dict[str, dict[str, float] | None]:
        """p50/p90/p99 of TTFT and TPOT over the latest requests, in seconds (None before any request)."""
        with self._lock:
            samples = {"ttft": list(self._recent_ttft), "tpot": list(self._recent_tpot)}
        out: dict[str, dict[str, float] | None] = {}
        for name, values in samples.items():
            if not values:
                out[name] = None
                continue
            cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
            out[name] = {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "count": len(values)}
        return out

    def live_tokens_per_second(self, now: float | None = None) -> float:
        """Generated tokens per second of wall time over the last ~30 s (sampled at each call)."""
        now = time.monotonic() if now is None else now
        generated = self.engine.engine.stats.generated_tokens
        with self._lock:
            samples = self._rate_samples
            samples.append((now, generated))
            while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
                samples.popleft()
            then, before = samples[0]
        return (generated - before) / (now - then) if now > then else 0.0

    def tokens_per_second(self) -> float:
        """Generated tokens per second while the engine was busy."""
        stats = self.engine.engine.stats
        return stats.generated_tokens / stats.busy_seconds if stats.busy_seconds > 0 else 0.0

    def cost_per_million_tokens(self) -> float:
        """Rent of the serving hardware per million generated tokens, at the measured throughput."""
        rate = self.tokens_per_second()
        if self.price_per_hour is None or rate <= 0:
            return float("nan")
        return self.price_per_hour / 3600.0 / rate * 1e6

    def render(self) -> bytes:
        """The exposition-format text of every metric."""
        return generate_latest(self.registry)
