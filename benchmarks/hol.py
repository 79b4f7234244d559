"""Head-of-line blocking scenario of the benchmark harness.

One client keeps a slow request (`GET /api/sleep/1000`: the handler sleeps,
it burns no CPU) running at all times, back to back, while a few other
clients send fast requests (`GET /api/item/1`) on keep-alive connections.
A pool that acts as one shared queue hands every fast request to an idle
worker, so the fast ones stay fast; a request queued behind the slow one at
a busy worker waits up to a second.

Only measures and reports: nothing here asserts. It talks to 127.0.0.1 only,
and every loop is bounded in time (and each request by its timeout).
"""

import http.client
import math
import threading
import time

SLOW_PATH = '/api/sleep/{ms}'
FAST_PATH = '/api/item/1'
# a fast request slower than this can only have waited for the slow one
# (an otherwise idle server answers the fast route in about a millisecond)
DELAYED_MS = 250


def _percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = math.ceil(fraction * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


class _Client:
    """One keep-alive connection, reopened after an error or a close."""

    def __init__(self, host, port, timeout):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.conn = None

    def get(self, path):
        """(status, seconds) of one GET."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port,
                                                   timeout=self.timeout)
        started = time.monotonic()
        try:
            self.conn.request('GET', path)
            response = self.conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        return response.status, time.monotonic() - started

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def head_of_line_test(host, port, seconds, slow_ms=1000, fast_clients=3,
                      timeout=10.0):
    """Fast requests from `fast_clients` threads for `seconds` while one
    slow request of `slow_ms` is always in flight; latencies in ms."""
    stop = threading.Event()
    slow = {'statuses': [], 'seconds': [], 'errors': []}
    fast = [{'ms': [], 'statuses': {}, 'errors': []}
            for _ in range(fast_clients)]

    def slow_loop():
        client = _Client(host, port, timeout)
        try:
            while not stop.is_set():
                try:
                    status, spent = client.get(SLOW_PATH.format(ms=slow_ms))
                    slow['statuses'].append(status)
                    slow['seconds'].append(spent)
                except (OSError, http.client.HTTPException) as err:
                    slow['errors'].append(repr(err))
                    time.sleep(0.05)
        finally:
            client.close()

    def fast_loop(record, until):
        client = _Client(host, port, timeout)
        try:
            while time.monotonic() < until:
                try:
                    status, spent = client.get(FAST_PATH)
                    record['ms'].append(spent * 1000)
                    record['statuses'][status] = \
                        record['statuses'].get(status, 0) + 1
                except (OSError, http.client.HTTPException) as err:
                    record['errors'].append(repr(err))
                    time.sleep(0.05)
        finally:
            client.close()

    slow_thread = threading.Thread(target=slow_loop, daemon=True)
    slow_thread.start()
    time.sleep(0.2)  # the first slow request reaches its worker
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=fast_loop, args=(record, until),
                                daemon=True) for record in fast]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    stop.set()
    slow_thread.join(slow_ms / 1000 + timeout + 5)
    return _summary(slow, fast, seconds, slow_ms, fast_clients)


def _summary(slow, fast, seconds, slow_ms, fast_clients):
    latencies = sorted(ms for record in fast for ms in record['ms'])
    statuses = {}
    for record in fast:
        for status, count in record['statuses'].items():
            statuses[status] = statuses.get(status, 0) + count
    errors = [err for record in fast for err in record['errors']]
    return {
        'seconds': seconds,
        'slow_ms': slow_ms,
        'fast_clients': fast_clients,
        'fast_requests': len(latencies),
        'fast_statuses': {str(k): v for k, v in sorted(statuses.items())},
        'fast_errors': len(errors),
        'first_fast_error': errors[0] if errors else None,
        'p50_ms': _percentile(latencies, 0.50),
        'p99_ms': _percentile(latencies, 0.99),
        'max_ms': latencies[-1] if latencies else None,
        'delayed': sum(1 for ms in latencies if ms >= DELAYED_MS),
        'delayed_threshold_ms': DELAYED_MS,
        'slow_completed': len(slow['statuses']),
        'slow_statuses': sorted(set(slow['statuses'])),
        'slow_errors': len(slow['errors']),
        'slow_mean_s': (sum(slow['seconds']) / len(slow['seconds'])
                        if slow['seconds'] else None),
    }
