"""Prometheus metrics of the dispatcher, served on an optional route.

Counting happens where the dispatcher answers a request, in plain
dictionaries (a lookup and an addition: the benchmarks do not move when it
is on). Everything becomes Prometheus metric families only when the route
is scraped, through a collector of the optional `prometheus_client` package
(`pip install uhttp-workers[ops]`), which also writes the text format; this
module never writes the format by hand.
"""

from __future__ import annotations

import bisect
import importlib
import types
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PoolGauges(Protocol):
    """What the gauges read of a worker pool."""

    @property
    def name(self) -> str:
        """The pool's name (the `pool` label)."""

    @property
    def queue_size(self) -> int:
        """Requests in its backlog."""

    @property
    def workers_alive(self) -> int:
        """Its worker processes running."""

    @property
    def degraded(self) -> bool:
        """True while it answers 503."""


class MetricsSource(Protocol):
    """What the gauges read of the dispatcher."""

    @property
    def pending_count(self) -> int:
        """Requests waiting for a worker answer."""

    def ws_status(self) -> dict[str, int]:
        """WebSocket counts: 'open', 'messages_in', 'messages_out'."""

    @property
    def stream_count(self) -> int:
        """Streaming responses in progress."""

    @property
    def pools(self) -> Iterable[PoolGauges]:
        """The worker pools."""


# prometheus_client is imported on first use (by name, as an optional
# extra), so its metric families are Any here
_Family = Any


def _import_prometheus() -> types.ModuleType:
    # imported on first use: the library costs megabytes in every process
    try:
        importlib.import_module('prometheus_client.core')
        return importlib.import_module('prometheus_client')
    except ImportError as err:
        raise RuntimeError(
            'metrics need the prometheus_client package: '
            'pip install "uhttp-workers[ops]"') from err


class _Latency:
    """One histogram: a count per bucket (plus +Inf), the sum, the count."""

    __slots__ = ('buckets', 'total', 'count')

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound text, cumulative count)] as Prometheus wants it."""
        running = 0
        result: list[tuple[str, int]] = []
        for bound, count in zip(LATENCY_BUCKETS + (float('inf'),),
                                self.buckets):
            running += count
            result.append(('+Inf' if bound == float('inf') else repr(bound),
                           running))
        return result


class _Collector:
    """prometheus_client collector: turns the counts into families."""

    def __init__(self, metrics: Metrics, dispatcher: MetricsSource,
                 core: types.ModuleType) -> None:
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._core = core

    def collect(self) -> Iterator[_Family]:
        """Yield every metric family (prometheus_client collector API)."""
        core, metrics = self._core, self._metrics
        requests = core.CounterMetricFamily(
            'uhttp_requests', 'Requests answered for worker pools',
            labels=['pool', 'route', 'status'])
        for (pool, route, status), count in metrics.requests.items():
            requests.add_metric([pool, route, str(status)], count)
        latency = core.HistogramMetricFamily(
            'uhttp_request_duration_seconds',
            'Time from a loaded request to its answer', labels=['pool'])
        for pool, histogram in metrics.latency.items():
            latency.add_metric([pool], histogram.cumulative(),
                               sum_value=histogram.total)
        restarts = core.CounterMetricFamily(
            'uhttp_worker_restarts', 'Worker exits, by reason',
            labels=['pool', 'reason'])
        for (pool, reason), count in metrics.exits.items():
            restarts.add_metric([pool, reason], count)
        yield from (requests, latency, restarts)
        yield from self._gauges()

    def _gauges(self) -> Iterator[_Family]:
        core, dispatcher = self._core, self._dispatcher
        pending = core.GaugeMetricFamily(
            'uhttp_pending_requests', 'Requests waiting for a worker answer')
        pending.add_metric([], dispatcher.pending_count)
        streams = core.GaugeMetricFamily(
            'uhttp_open_streams', 'Streaming responses in progress')
        streams.add_metric([], dispatcher.stream_count)
        queue = core.GaugeMetricFamily(
            'uhttp_pool_queue_depth', 'Requests in a pool backlog',
            labels=['pool'])
        alive = core.GaugeMetricFamily(
            'uhttp_workers_alive', 'Worker processes running',
            labels=['pool'])
        degraded = core.GaugeMetricFamily(
            'uhttp_pool_degraded', '1 while a pool answers 503',
            labels=['pool'])
        for pool in dispatcher.pools:
            queue.add_metric([pool.name], pool.queue_size)
            alive.add_metric([pool.name], pool.workers_alive)
            degraded.add_metric([pool.name], int(pool.degraded))
        yield from (pending, streams, queue, alive, degraded)
        yield from self._websockets()

    def _websockets(self) -> Iterator[_Family]:
        core, counts = self._core, self._dispatcher.ws_status()
        open_now = core.GaugeMetricFamily(
            'uhttp_websocket_connections', 'Open WebSocket connections')
        open_now.add_metric([], counts['open'])
        messages = core.CounterMetricFamily(
            'uhttp_websocket_messages', 'WebSocket messages, by direction '
            '(in: from clients, out: to clients, a broadcast counting once '
            'per connection)', labels=['direction'])
        messages.add_metric(['in'], counts['messages_in'])
        messages.add_metric(['out'], counts['messages_out'])
        yield from (open_now, messages)


class Metrics:
    """The dispatcher's counts and the registry that exposes them."""

    def __init__(self, dispatcher: MetricsSource) -> None:
        prometheus = self._prometheus = _import_prometheus()
        # (pool, route, status) -> count
        self.requests: dict[tuple[str, str, int], int] = {}
        # pool -> _Latency
        self.latency: dict[str, _Latency] = {}
        # (pool, reason) -> count
        self.exits: dict[tuple[str, str], int] = {}
        self.registry = prometheus.CollectorRegistry()
        self.registry.register(
            _Collector(self, dispatcher, prometheus.core))

    def answered(self, pool_name: str, route: str, status: int,
                 seconds: float) -> None:
        """Count one answer to a client and its latency."""
        key = (pool_name, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(pool_name)
        if histogram is None:
            histogram = self.latency[pool_name] = _Latency()
        histogram.observe(seconds)

    def worker_exited(self, pool_name: str, reason: str) -> None:
        """Count a worker exit (crash, stuck, recycle, …)."""
        key = (pool_name, reason)
        self.exits[key] = self.exits.get(key, 0) + 1

    def render(self) -> tuple[bytes, str]:
        """The text exposition format: (body bytes, content type)."""
        body: bytes = self._prometheus.generate_latest(self.registry)
        content_type: str = self._prometheus.CONTENT_TYPE_LATEST
        return body, content_type
