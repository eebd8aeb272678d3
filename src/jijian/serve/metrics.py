"""Prometheus metrics of one server: latency histograms, throughput, queue, KV use, cost per token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from jijian.serve.async_engine import AsyncEngine

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
