"""The Redis calls a remote worker host makes off its main loop.

`CallThread` (remote_consumer.py) makes the starts and the reply batches
of a host on a connection of its own; the relay keeps a batch's replies
queued until the call that adds them answered. Real redis-server, real
threads; the end-to-end test drives a real `uhttp-workers worker` host.
"""

import select

import pytest

from conftest import wait_until
# the fixtures and helpers of the remote worker tests (a real host, the
# dispatcher's side of the protocol played by the test)
from test_remote_worker import (  # noqa: F401  pylint: disable=unused-import
    Dispatcher, dispatcher, hosts, pending_count, pool, redis_server)

from uhttp.workers import messages
from uhttp.workers import remote_protocol as rp
from uhttp.workers.remote_consumer import CallThread, start_entries
from uhttp.workers.remote_relay import Relay


def _result(thread, timeout=10):
    """The result of the call submitted to `thread`, once its wake-up
    socket said it came."""
    readable, _, _ = select.select([thread], [], [], timeout)
    assert readable, 'no wake-up from the call thread'
    return wait_until(lambda: thread.result(), timeout)


@pytest.fixture
def call_thread(redis_server):
    thread = CallThread('redis-test-calls', redis_server[0])
    thread.start()
    yield thread
    thread.stop()
    thread.join(10)
    assert not thread.is_alive()
    thread.close()


def test_a_call_thread_makes_calls_on_its_own_connection(call_thread,
                                                         redis_server):
    client = redis_server[1]
    call_thread.submit(lambda c: (c.client_id(), c.set('rc-key', b'v')))
    assert call_thread.busy
    (other_id, done), err = _result(call_thread)
    assert err is None and done is True
    assert not call_thread.busy
    assert int(other_id) != int(client.client_id())
    assert client.get('rc-key') == b'v'
    # nothing submitted: no result
    assert call_thread.result() is None


def test_a_call_thread_hands_errors_back_and_goes_on(call_thread):
    redis = pytest.importorskip('redis')
    call_thread.submit(lambda c: c.execute_command('NO-SUCH-COMMAND'))
    value, err = _result(call_thread)
    assert value is None and isinstance(err, redis.ResponseError)
    call_thread.submit(lambda c: c.ping())
    assert _result(call_thread) == (True, None)


def test_a_call_thread_without_redis_hands_back_connection_errors():
    redis = pytest.importorskip('redis')
    thread = CallThread('redis-test-calls', 'redis://127.0.0.1:1/0')
    thread.start()
    try:
        for _ in range(2):     # a new connection is tried each time
            thread.submit(lambda c: c.ping())
            value, err = _result(thread)
            assert value is None
            assert isinstance(err, (redis.ConnectionError, OSError))
    finally:
        thread.stop()
        thread.join(10)
    assert not thread.is_alive()
    thread.close()


def test_starts_made_by_a_call_thread_are_won_once(call_thread,
                                                   redis_server, pool):
    client = redis_server[1]
    dispatcher_side = Dispatcher(client, pool)
    entries = [dispatcher_side.send(n, '/echo') for n in (1, 2)]
    client.xreadgroup(rp.GROUP, 'one', {rp.requests_stream(pool): '>'})
    starts = [(entry, dispatcher_side.id, n)
              for entry, n in zip(entries, (1, 2))]
    call_thread.submit(lambda c: start_entries(c, pool, 'one', starts))
    assert _result(call_thread) == (([True, True], None), None)
    call_thread.submit(lambda c: start_entries(c, pool, 'two', starts))
    assert _result(call_thread) == (([False, False], None), None)
    assert pending_count(client, pool) == 0
    assert [m[0] for _, m in dispatcher_side.poll()] == [rp.STARTED] * 2


def test_replies_dropped_while_their_batch_is_sent_are_not_dropped_twice():
    records = []
    relay = Relay('me', lambda level, text: records.append(text), limit=3)
    for n in range(3):
        relay.reply('d1', messages.keep_alive([n]))
    batch = relay.batch()
    assert len(batch) == 3
    # queued while the batch is sent: the two oldest (in the batch) go
    relay.reply('d1', messages.keep_alive([3]))
    relay.reply('d1', messages.keep_alive([4]))
    assert relay.waiting_replies == 3 and records
    relay.sent(len(batch))
    # only the one of the batch still queued is gone; 3 and 4 remain
    left = [rp.decode_reply(fields)[1] for _, fields in relay.batch()]
    # (JSON carries the tuple of ids as a list)
    assert left == [(messages.KEEP_ALIVE, [3]), (messages.KEEP_ALIVE, [4])]
    relay.sent(2)
    assert relay.waiting_replies == 0


def test_a_burst_of_requests_is_answered_once_each_in_order(hosts,
                                                            dispatcher):
    host = hosts(workers=2)
    host.wait_ready(2)
    count = 60
    for request_id in range(count):
        dispatcher.send(request_id, '/echo')
    for request_id in range(count):
        assert dispatcher.answer(request_id)[0] == 200
    stream = rp.replies_stream(dispatcher.pool, dispatcher.id)
    numbers = {}
    for _, fields in dispatcher.client.xrange(stream):
        _consumer, message, seq = rp.decode_reply_seq(fields)
        numbers.setdefault(message[1], []).append((seq, message[0]))
    assert sorted(numbers) == list(range(count))
    for replies in numbers.values():
        # STARTED (0), then the answer (1): each once, in order
        assert replies == [(0, rp.STARTED), (1, messages.RESPONSE)]


class _Entries:
    """Stands in for the StreamReader: hands out the entries given."""

    def __init__(self, entries):
        self.entries = entries

    def take(self):
        entries, self.entries = self.entries, []
        return entries


def test_an_entry_held_here_and_claimed_back_is_not_taken_twice():
    # XAUTOCLAIM returns this host's own pending entries too once they
    # are idle long enough (a long outage while a start was uncertain):
    # the entry must not wait here twice, or the idempotent start script
    # would let this host win it twice and run it on two workers
    from uhttp.workers import Worker  # pylint: disable=import-outside-toplevel
    from uhttp.workers.remote_worker import RemoteWorkers, _Waiting  # pylint: disable=import-outside-toplevel
    # built, never run: it connects to nothing
    host = RemoteWorkers(Worker, 'redis://127.0.0.1:1/0', pool_name='unit')
    message = messages.request(7, 'GET', '/echo', None, {}, None, None)
    fields = rp.encode_request('d1', message, 30000)
    host._uncertain.append(_Waiting(b'1-1', 'd1', 30000, message))  # pylint: disable=protected-access
    host._state = 'running'                  # pylint: disable=protected-access
    host._reader = _Entries([(b'1-1', fields), (b'2-1', fields)])  # pylint: disable=protected-access
    host._on_entries()                       # pylint: disable=protected-access
    assert [w.entry_id for w in host._waiting] == [b'2-1']  # pylint: disable=protected-access
