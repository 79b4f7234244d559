"""Prometheus metrics of the dispatcher, served on an optional route.

Counters are updated where the dispatcher answers a request (a dict lookup
and an increment); gauges (pending, backlog, workers) are read from the live
state only when the route is scraped. Requires the optional `prometheus_client`
package (`pip install uhttp-workers[ops]`); this module never writes the text
format by hand.
"""

import importlib

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _import_prometheus():
    # imported on first use: the library costs megabytes in every process
    try:
        importlib.import_module('prometheus_client.core')
        return importlib.import_module('prometheus_client')
    except ImportError as err:
        raise RuntimeError(
            'metrics need the prometheus_client package: '
            'pip install "uhttp-workers[ops]"') from err


class _LiveState:
    """Collector reading gauges from the dispatcher at scrape time."""

    def __init__(self, dispatcher, prometheus):
        self._dispatcher = dispatcher
        self._gauge = prometheus.core.GaugeMetricFamily

    def collect(self):
        """Yield the gauge families (prometheus_client collector API)."""
        GaugeMetricFamily = self._gauge  # pylint: disable=invalid-name
        dispatcher = self._dispatcher
        pending = GaugeMetricFamily(
            'uhttp_pending_requests', 'Requests waiting for a worker answer')
        pending.add_metric([], dispatcher.pending_count)
        streams = GaugeMetricFamily(
            'uhttp_open_streams', 'Streaming responses in progress')
        streams.add_metric([], dispatcher.stream_count)
        queue = GaugeMetricFamily(
            'uhttp_pool_queue_depth', 'Requests in a pool backlog',
            labels=['pool'])
        alive = GaugeMetricFamily(
            'uhttp_workers_alive', 'Worker processes running',
            labels=['pool'])
        degraded = GaugeMetricFamily(
            'uhttp_pool_degraded', '1 while a pool answers 503',
            labels=['pool'])
        for pool in dispatcher.pools:
            queue.add_metric([pool.name], pool.queue_size)
            alive.add_metric([pool.name], pool.workers_alive)
            degraded.add_metric([pool.name], int(pool.degraded))
        yield from (pending, streams, queue, alive, degraded)


class Metrics:
    """The dispatcher's metrics registry."""

    def __init__(self, dispatcher):
        prometheus_client = self._prometheus = _import_prometheus()
        registry = prometheus_client.CollectorRegistry()
        self.registry = registry
        self._requests = prometheus_client.Counter(
            'uhttp_requests', 'Requests answered for worker pools',
            ['pool', 'route', 'status'], registry=registry)
        self._latency = prometheus_client.Histogram(
            'uhttp_request_duration_seconds',
            'Time from a loaded request to its answer', ['pool'],
            buckets=LATENCY_BUCKETS, registry=registry)
        self._restarts = prometheus_client.Counter(
            'uhttp_worker_restarts', 'Worker exits, by reason',
            ['pool', 'reason'], registry=registry)
        registry.register(_LiveState(dispatcher, prometheus_client))
        self._children = {}

    def answered(self, pool_name, route, status, seconds):
        """Count one answer to a client and its latency."""
        key = (pool_name, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(
                pool_name, route, str(status))
        child.inc()
        self._latency.labels(pool_name).observe(seconds)

    def worker_exited(self, pool_name, reason):
        """Count a worker exit (crash, stuck, recycle, …)."""
        self._restarts.labels(pool_name, reason).inc()

    def render(self):
        """The text exposition format: (body bytes, content type)."""
        return (self._prometheus.generate_latest(self.registry),
                self._prometheus.CONTENT_TYPE_LATEST)
