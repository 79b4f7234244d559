"""The pending table and the pool's scheduler, without processes.

A fake clock and fake worker channels stand in for time and processes, as
gunicorn tests its arbiter: every decision is checked exactly.
"""

import time

import pytest

from uhttp.workers import messages
from uhttp.workers import pending as states
from uhttp.workers.pending import Pending, PendingTable
from uhttp.workers.pool import REVOKE_AFTER, WorkerPool
from uhttp.workers.worker import Worker
from uhttp.workers.worker_handle import PREFETCH, WorkerHandle


class PlainWorker(Worker):
    """A worker class for the pool; never started here."""


class FakeChannel:
    def __init__(self):
        self.closed = False
        self.sent = []

    def queue(self, message):
        self.sent.append(message)


class FakeProcess:
    pid = 1234


class FakeDispatcher:
    accepts_workers = True
    is_running = True

    def __init__(self):
        self.flushes = []

    def wants_flush(self, handle):
        self.flushes.append(handle)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(time, 'monotonic', fake)
    return fake


def make_pool(workers=2):
    pool = WorkerPool(PlainWorker, num_workers=workers, timeout=30)
    pool._dispatcher = FakeDispatcher()  # pylint: disable=protected-access
    for index in range(workers):
        handle = WorkerHandle(pool, index)
        handle.reset(FakeProcess(), FakeChannel(), time.monotonic(), None)
        handle.ready = True
        pool.workers.append(handle)
    return pool


def request(pool, request_id):
    return Pending(request_id, client=object(), pool=pool,
                   message=messages.request(request_id, 'GET', '/', None, {},
                                            None, '127.0.0.1'))


def sent_ids(handle, kind=messages.REQUEST):
    return [m[1] for m in handle.channel.sent if m[0] == kind]


def answer(pool, handle, pending):
    """What the dispatcher does when a worker answered `pending`."""
    handle.forget(pending)
    pending.state = states.DONE
    pool.pump(handle)


# -- the pending table -------------------------------------------------------

def test_table_counts_waiting_requests_and_not_streams(clock):
    pool = make_pool()
    table = PendingTable()
    first = table.open(1, object(), pool, None, clock())
    table.open(2, object(), pool, None, clock())
    assert len(table) == 2 and table.get(1) is first
    first.state = states.ASSIGNED
    table.start_stream(first)
    assert len(table) == 1 and table.stream_count == 1
    assert first.state == states.STREAMING
    assert table.get(1) is None
    assert table.finish(first) == states.STREAMING
    assert table.stream_count == 0


def test_table_finish_ends_a_request_once(clock):
    pool = make_pool()
    table = PendingTable()
    queued = table.open(1, object(), pool, None, clock())
    assert table.finish(queued) == states.QUEUED
    assert pool.abandoned == 1  # its backlog entry is skipped later
    assert table.finish(queued) == states.DONE
    assert pool.abandoned == 1
    assert len(table) == 0 and table.all() == []


def test_table_expiry_in_deadline_order_with_keep_alive(clock):
    pool = make_pool()
    table = PendingTable()
    first = table.open(1, object(), pool, None, clock())
    clock.now += 5
    second = table.open(2, object(), pool, None, clock())
    assert table.next_expiry == first.deadline
    first.state = states.ASSIGNED
    clock.now += 10
    table.keep_alive([1], clock())    # first now expires after second
    clock.now += 21
    assert table.expired(clock()) == [second]
    table.finish(second)
    assert table.next_expiry == first.deadline
    clock.now += 10
    assert table.expired(clock()) == [first]


def test_streams_have_no_deadline(clock):
    pool = make_pool()
    table = PendingTable()
    stream = table.open(1, object(), pool, None, clock())
    stream.state = states.ASSIGNED
    table.start_stream(stream)
    clock.now += 3600
    assert table.expired(clock()) == []


# -- the scheduler -------------------------------------------------------------

def test_idle_workers_are_used_before_any_is_given_a_second(clock):
    pool = make_pool()
    first, second = request(pool, 1), request(pool, 2)
    pool.submit(first)
    pool.submit(second)
    assert first.worker is not second.worker
    assert all(h.active == 1 for h in pool.workers)


def test_a_second_request_is_sent_ahead_only_behind_a_fresh_one(clock):
    pool = make_pool()
    for request_id in (1, 2):
        pool.submit(request(pool, request_id))
    ahead = request(pool, 3)
    pool.submit(ahead)
    assert ahead.state == states.ASSIGNED
    assert ahead.worker.waiting_requests() == [ahead]
    # once every worker runs something long, nothing more is sent ahead
    clock.now += REVOKE_AFTER
    late = request(pool, 4)
    pool.submit(late)
    assert late.state == states.QUEUED and pool.queue_size == 1


def test_a_request_waiting_behind_a_busy_worker_is_revoked_for_an_idle_one(
        clock):
    pool = make_pool()
    one, two = request(pool, 1), request(pool, 2)
    pool.submit(one)
    pool.submit(two)
    ahead = request(pool, 3)
    pool.submit(ahead)
    busy = ahead.worker
    other = two.worker if busy is one.worker else one.worker
    freed_request = two if other is two.worker else one
    answer(pool, other, freed_request)
    # the idle sibling cannot start it while the busy worker holds it:
    # the busy worker is asked to hand it back
    assert ahead.revoked
    assert sent_ids(busy, messages.CANCEL) == [3]
    assert sent_ids(other) == [freed_request.request_id]
    # handed back unstarted: first in line, and the idle worker takes it
    busy.forget(ahead)
    pool.requeue(ahead)
    pool.pump()
    assert ahead.worker is other
    assert sent_ids(other)[-1] == 3


def test_an_idle_sibling_revokes_at_once_even_behind_a_young_request(
        clock):
    pool = make_pool()
    one, two = request(pool, 1), request(pool, 2)
    pool.submit(one)
    pool.submit(two)
    ahead = request(pool, 3)
    pool.submit(ahead)
    behind = ahead.worker
    running = one if one.worker is behind else two
    other = two if running is one else one
    clock.now += REVOKE_AFTER / 2     # the one in front is still young
    answer(pool, other.worker, other)  # the sibling frees: idle, no backlog
    assert ahead.revoked
    assert sent_ids(behind, messages.CANCEL) == [3]
    assert not running.revoked


def test_revoke_slow_waits_for_the_running_request_to_run_long(clock):
    pool = make_pool()
    for request_id in (1, 2):
        pool.submit(request(pool, request_id))
    ahead = request(pool, 3)
    pool.submit(ahead)
    pool.revoke_slow(clock())
    assert not ahead.revoked
    clock.now += REVOKE_AFTER
    # both workers run long: the one with less behind it may take it
    pool.revoke_slow(clock())
    assert not ahead.revoked  # no sibling would be free sooner
    sibling = [h for h in pool.workers if h is not ahead.worker][0]
    sibling.busy_since = clock()   # the sibling started something new
    pool.revoke_slow(clock())
    assert ahead.revoked
    assert sent_ids(ahead.worker, messages.CANCEL) == [3]


def test_a_single_worker_never_gets_its_requests_revoked(clock):
    pool = make_pool(workers=1)
    pool.submit(request(pool, 1))
    ahead = request(pool, 2)
    pool.submit(ahead)
    clock.now += 10
    pool.revoke_slow(clock())
    assert not ahead.revoked


def test_backlog_is_first_come_first_served(clock):
    pool = make_pool(workers=1)
    first = request(pool, 1)
    pool.submit(first)
    clock.now += REVOKE_AFTER   # nothing more is sent ahead of it now
    queued = [request(pool, i) for i in range(2, PREFETCH + 3)]
    for pending in queued:
        pool.submit(pending)
    assert pool.queue_size == len(queued)
    answer(pool, first.worker, first)
    # the freed worker takes as many as it may hold, oldest first
    assert [p.state for p in queued] == \
        [states.ASSIGNED] * PREFETCH + [states.QUEUED]
    assert sent_ids(first.worker) == list(range(1, PREFETCH + 2))


def test_a_dead_worker_fails_only_the_request_it_was_running(clock):
    pool = make_pool(workers=1)
    held = [request(pool, i) for i in (1, 2, 3)]
    for pending in held:
        pool.submit(pending)
    deferred = held[0]
    deferred.worker.release(deferred)
    deferred.state = states.DEFERRED
    started, unstarted = held[0].worker.split_orphans(
        held[0].worker.take_all_back())
    # the deferred one and the running one are lost; the last never ran
    assert started == held[:2] and unstarted == held[2:]


def test_a_broadcast_copy_is_never_revoked(clock):
    pool = make_pool()
    for request_id in (1, 2):
        pool.submit(request(pool, request_id))
    copies = []

    def make_copy():
        copy = Pending(100 + len(copies), None, pool, messages.request(
            100 + len(copies), 'POST', '/fan', None, {}, None, None, True),
            to_all=True)
        copies.append(copy)
        return copy
    assert pool.assign_to_all(make_copy) == 2
    clock.now += REVOKE_AFTER
    for handle in pool.workers:
        assert handle.waiting_requests() == []
    first = pool.workers[0]
    answer(pool, first, next(iter(first.in_flight.values())))
    assert not any(copy.revoked for copy in copies)
