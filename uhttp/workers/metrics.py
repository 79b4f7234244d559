"""Prometheus metrics of the dispatcher, served on an optional route.

Counting happens where the dispatcher answers a request, in plain
dictionaries (a lookup and an addition: the benchmarks do not move when it
is on). Everything becomes Prometheus metric families only when the route
is scraped, through a collector of the optional `prometheus_client` package
(`pip install uhttp-workers[ops]`), which also writes the text format; this
module never writes the format by hand.

Several dispatchers per host (`dispatchers=N`): every dispatcher writes a
`Snapshot` of its figures into the supervisor's run directory once a second
(see host_status), and the scraped one adds the live snapshots of the
others to its own: counters and histograms summed, gauges summed (requests
pending, queue depth, workers alive, open streams and WebSockets are host
totals), `uhttp_pool_degraded` 1 if any dispatcher's copy of the pool is.
So one scrape of any dispatcher shows the host, its own figures live and
the others' at most a second old.

The host's counters never go down, which Prometheus would read as a
counter reset (and count the whole new total as an increase). The scraped
dispatcher writes its own snapshot before it reads the others', so a later
scrape of any dispatcher never shows less than an earlier one did. A
dispatcher that exits (replaced by SIGHUP, crashed, killed) leaves its
counts behind: it writes a last snapshot at exit, and the supervisor folds
its counters and histograms (`counters_of`, not its gauges) into the run
directory's retired snapshot, which every scrape adds. A dispatcher killed
outright loses only the counts since its last snapshot (a second at most).

prometheus_client's own multiprocess mode was not used: it needs
PROMETHEUS_MULTIPROC_DIR set before the library is imported, an mmap'ed
file per process written on every increment (the hot path stays a dict
addition here), and `mark_process_dead` bookkeeping; and our gauges are
read from live objects at scrape time, which its file-backed gauges cannot
do. One small JSON file per dispatcher, rewritten once a second, keeps the
counting as cheap as with one dispatcher.
"""

from __future__ import annotations

import bisect
import importlib
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypedDict

from .remote_pool import is_remote

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



def _cumulative(buckets: list[int]) -> list[tuple[str, int]]:
    """[(upper bound text, cumulative count)] as Prometheus wants it, from
    a count per bucket (+Inf last)."""
    running = 0
    result: list[tuple[str, int]] = []
    for bound, count in zip(LATENCY_BUCKETS + (float('inf'),), buckets):
        running += count
        result.append(('+Inf' if bound == float('inf') else repr(bound),
                       running))
    return result


class Snapshot(TypedDict):
    """Every count and gauge of one dispatcher (or of a host, summed), as
    plain JSON-friendly lists: what a dispatcher writes into the run
    directory of several dispatchers, and what the collector renders."""

    # [pool, route, status, count]
    requests: list[list[Any]]
    # [pool, count per bucket (+Inf last), sum of seconds, count]
    latency: list[list[Any]]
    # [pool, reason, count]
    exits: list[list[Any]]
    pending: int
    streams: int
    # [pool, queue depth, workers alive, degraded (0 or 1), remote (0 or 1)]
    pools: list[list[Any]]
    # 'open', 'messages_in', 'messages_out'
    ws: dict[str, int]


def merge_snapshots(snapshots: list[Snapshot]) -> Snapshot:
    """The host's figures: counters, histograms and gauges summed over
    `snapshots` (one per dispatcher), but `degraded`, which is 1 when any
    dispatcher's copy of the pool answers 503."""
    requests: dict[tuple[Any, ...], int] = {}
    exits: dict[tuple[Any, ...], int] = {}
    latency: dict[str, list[Any]] = {}
    pools: dict[str, list[Any]] = {}
    ws: dict[str, int] = {'open': 0, 'messages_in': 0, 'messages_out': 0}
    for snap in snapshots:
        for *labels, count in snap['requests']:
            requests[tuple(labels)] = requests.get(tuple(labels), 0) + count
        for *labels, count in snap['exits']:
            exits[tuple(labels)] = exits.get(tuple(labels), 0) + count
        for pool, buckets, total, count in snap['latency']:
            into = latency.setdefault(
                pool, [pool, [0] * (len(LATENCY_BUCKETS) + 1), 0.0, 0])
            into[1] = [a + b for a, b in zip(into[1], buckets)]
            into[2] += total
            into[3] += count
        for name, queue, alive, degraded, *remote in snap['pools']:
            into = pools.setdefault(name, [name, 0, 0, 0, 0])
            into[1] += queue
            if remote and remote[0]:
                # a remote pool's workers are shared: each dispatcher
                # counts them all
                into[2] = max(into[2], alive)
                into[4] = 1
            else:
                into[2] += alive
            into[3] = max(into[3], degraded)
        for key in ws:
            ws[key] += snap['ws'].get(key, 0)
    return {'requests': [[*k, v] for k, v in requests.items()],
            'latency': list(latency.values()),
            'exits': [[*k, v] for k, v in exits.items()],
            'pending': sum(s['pending'] for s in snapshots),
            'streams': sum(s['streams'] for s in snapshots),
            'pools': list(pools.values()), 'ws': ws}


def counters_of(snapshot: Snapshot) -> Snapshot:
    """The counters and histograms of `snapshot`, its gauges zeroed: what
    a dispatcher that exited leaves to the host's totals. Raises
    TypeError, ValueError or KeyError when `snapshot` is malformed."""
    summed = merge_snapshots([snapshot])
    return {'requests': summed['requests'], 'latency': summed['latency'],
            'exits': summed['exits'], 'pending': 0, 'streams': 0,
            'pools': [],
            'ws': {'open': 0, 'messages_in': summed['ws']['messages_in'],
                   'messages_out': summed['ws']['messages_out']}}


class _Collector:
    """prometheus_client collector: turns the counts into families."""

    def __init__(self, metrics: Metrics, core: types.ModuleType) -> None:
        self._metrics = metrics
        self._core = core

    def collect(self) -> Iterator[_Family]:
        """Yield every metric family (prometheus_client collector API)."""
        core, counts = self._core, self._metrics.host_snapshot()
        requests = core.CounterMetricFamily(
            'uhttp_requests', 'Requests answered for worker pools',
            labels=['pool', 'route', 'status'])
        for pool, route, status, count in counts['requests']:
            requests.add_metric([pool, route, str(status)], count)
        latency = core.HistogramMetricFamily(
            'uhttp_request_duration_seconds',
            'Time from a loaded request to its answer', labels=['pool'])
        for pool, buckets, total, _count in counts['latency']:
            latency.add_metric([pool], _cumulative(buckets), sum_value=total)
        restarts = core.CounterMetricFamily(
            'uhttp_worker_restarts', 'Worker exits, by reason',
            labels=['pool', 'reason'])
        for pool, reason, count in counts['exits']:
            restarts.add_metric([pool, reason], count)
        yield from (requests, latency, restarts)
        yield from self._gauges(counts)

    def _gauges(self, counts: Snapshot) -> Iterator[_Family]:
        core = self._core
        pending = core.GaugeMetricFamily(
            'uhttp_pending_requests', 'Requests waiting for a worker answer')
        pending.add_metric([], counts['pending'])
        streams = core.GaugeMetricFamily(
            'uhttp_open_streams', 'Streaming responses in progress')
        streams.add_metric([], counts['streams'])
        queue = core.GaugeMetricFamily(
            'uhttp_pool_queue_depth', 'Requests in a pool backlog',
            labels=['pool'])
        alive = core.GaugeMetricFamily(
            'uhttp_workers_alive', 'Worker processes running',
            labels=['pool'])
        degraded = core.GaugeMetricFamily(
            'uhttp_pool_degraded', '1 while a pool answers 503',
            labels=['pool'])
        for name, queue_size, workers_alive, is_degraded, *_ in \
                counts['pools']:
            queue.add_metric([name], queue_size)
            alive.add_metric([name], workers_alive)
            degraded.add_metric([name], is_degraded)
        yield from (pending, streams, queue, alive, degraded)
        yield from self._websockets(counts['ws'])

    def _websockets(self, counts: dict[str, int]) -> Iterator[_Family]:
        core = self._core
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
        self._dispatcher = dispatcher
        # with several dispatchers: returns the other live dispatchers'
        # snapshots, summed into every scrape (None: this one alone)
        self.peers: Callable[[], list[Snapshot]] | None = None
        self.registry = prometheus.CollectorRegistry()
        self.registry.register(_Collector(self, prometheus.core))

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

    def snapshot(self) -> Snapshot:
        """This dispatcher's counts and gauges, as plain lists."""
        dispatcher = self._dispatcher
        counts = dispatcher.ws_status()
        return {
            'requests': [[*key, count]
                         for key, count in self.requests.items()],
            'latency': [[pool, list(h.buckets), h.total, h.count]
                        for pool, h in self.latency.items()],
            'exits': [[*key, count] for key, count in self.exits.items()],
            'pending': dispatcher.pending_count,
            'streams': dispatcher.stream_count,
            'pools': [[pool.name, pool.queue_size, pool.workers_alive,
                       int(pool.degraded), int(is_remote(pool))]
                      for pool in dispatcher.pools],
            'ws': {key: counts[key]
                   for key in ('open', 'messages_in', 'messages_out')}}

    def host_snapshot(self) -> Snapshot:
        """What a scrape shows: this dispatcher's live figures, plus those
        of the other dispatchers of the host when there are several."""
        own = self.snapshot()
        if self.peers is None:
            return own
        return merge_snapshots([own] + self.peers())

    def render(self) -> tuple[bytes, str]:
        """The text exposition format: (body bytes, content type)."""
        body: bytes = self._prometheus.generate_latest(self.registry)
        content_type: str = self._prometheus.CONTENT_TYPE_LATEST
        return body, content_type
