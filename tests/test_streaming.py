"""Deferred answers, SSE/NDJSON streams, disconnects, flow control, custom
fds, forwarding and broadcasts — against a real dispatcher."""

import os
import selectors
import signal
import socket
import threading
import time
import urllib.parse

import pytest

from conftest import wait_until
from uhttp.workers import messages
from uhttp.workers.channel import HOLD_LIMIT, Channel, channel_pair
from uhttp.workers.request import Request
from uhttp.workers.worker import Worker

APP = 'stream_app.py'


class StreamClient:
    """A raw-socket streaming client that keeps every byte it receives."""

    def __init__(self, port, path='/sse'):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=10)
        self.sock.sendall(
            f'GET {path} HTTP/1.1\r\nHost: test\r\n\r\n'.encode())
        self.data = b''

    def read_until(self, marker, timeout=10):
        """Read until `marker` is in what was received; return everything."""
        def arrived():
            if marker in self.data:
                return True
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            if not chunk:
                raise AssertionError(
                    f'stream closed before {marker!r}: {self.data!r}')
            self.data += chunk
            return marker in self.data
        self.sock.settimeout(0.2)
        wait_until(arrived, timeout, interval=0,
                   message=f'{marker!r} not received: {self.data[-300:]!r}')
        return self.data

    def read_to_end(self, timeout=10):
        """Read until the server closes the connection."""
        self.sock.settimeout(timeout)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.data
            self.data += chunk

    def close(self):
        self.sock.close()


@pytest.fixture(scope='module')
def one_worker():
    """A server with one stream worker (state checks need one process)."""
    from conftest import APPS, Server  # pylint: disable=import-outside-toplevel
    server = Server(os.path.join(APPS, APP), env={'WORKERS': '1'})
    server.start(ready_workers=2)
    yield server
    server.stop()


def state(server):
    return server.get('/state').json()


def test_sse_frames_exact_bytes(one_worker):
    client = StreamClient(one_worker.port)
    data = client.read_until(b': comment\n\n')
    head, _, body = data.partition(b'\r\n\r\n')
    lines = head.split(b'\r\n')
    assert lines[0] == b'HTTP/1.1 200 OK'
    assert b'content-type: text/event-stream' in lines
    assert b'cache-control: no-cache' in lines
    assert b'x-stream: yes' in lines
    assert not any(line.startswith(b'content-length') for line in lines)
    assert body == (b'id: 1\nevent: greet\nretry: 500\n'
                    b'data: first line\ndata: second line\n\n'
                    b'data: {"json": true}\n\n'
                    b': comment\n\n')
    one_worker.request('POST', '/internal/publish', body={'n': 1})
    assert client.read_until(b'data: {"n": 1}\n\n').endswith(
        b'event: news\ndata: {"n": 1}\n\n')
    client.close()


def test_client_disconnect_reaches_on_disconnect(one_worker):
    client = StreamClient(one_worker.port)
    client.read_until(b': comment\n\n')
    subscriber = wait_until(lambda: state(one_worker)['subscribers'])[-1]
    client.close()
    wait_until(lambda: subscriber in state(one_worker)['disconnected'], 10,
               message='on_disconnect not called')
    assert subscriber not in state(one_worker)['subscribers']
    # the worker sent to the gone stream in on_disconnect: no harm done
    assert one_worker.get('/whoami').status == 200
    assert one_worker.get('/status').json()['streams'] == len(
        state(one_worker)['subscribers'])


def test_ndjson_stream(one_worker):
    client = StreamClient(one_worker.port, '/ndjson')
    data = client.read_to_end()
    head, _, body = data.partition(b'\r\n\r\n')
    assert b'content-type: application/x-ndjson' in head
    assert body == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n'


def test_stream_end_closes_connection(one_worker):
    client = StreamClient(one_worker.port)
    client.read_until(b': comment\n\n')
    assert one_worker.request('POST', '/end-all').json()['ended'] >= 1
    client.read_to_end()  # returns only when the server closed it
    client.close()


def test_deferred_answered_from_on_idle(one_worker):
    answer = one_worker.get('/defer/0.3')
    assert answer.status == 200 and 'deferred' in answer.json()


def test_one_worker_holds_many_deferred_requests_at_once(one_worker):
    results = []
    lock = threading.Lock()

    def call():
        answer = one_worker.get('/defer/1')
        with lock:
            results.append(answer)
    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert all(r.status == 200 for r in results)
    assert len({r.json()['deferred'] for r in results}) == 20
    assert len({r.json()['pid'] for r in results}) == 1


def test_answering_twice_is_harmless(one_worker):
    answer = one_worker.get('/answer-twice')
    assert answer.json() == {'first': True}
    assert one_worker.get('/whoami').status == 200


def test_deferred_times_out_then_kept_alive_past_timeout(start_server):
    server = start_server(APP, env={'WORKERS': '1', 'TIMEOUT': '0.5'},
                          ready_workers=2)
    timed_out = server.get('/defer/5')
    assert timed_out.status == 504
    server.wait_log(r'WARNING .*request \d+ GET /defer/5 timed out')
    # the worker was told: its deferred request is no longer held
    wait_until(lambda: state(server)['disconnected'], 10)
    kept = server.get('/defer-kept/1.5')
    assert kept.status == 200 and 'kept' in kept.json()


def test_worker_death_ends_its_streams(start_server):
    server = start_server(APP, env={'WORKERS': '1'}, ready_workers=2)
    client = StreamClient(server.port)
    client.read_until(b': comment\n\n')
    os.kill(state(server)['pid'], signal.SIGKILL)
    client.read_to_end()  # the stream ends instead of hanging
    client.close()
    server.wait_log(r'killed by SIGKILL')


def test_pause_sends_requests_to_siblings(start_server):
    server = start_server(APP, env={'WORKERS': '2'}, ready_workers=3)
    paused = server.request('POST', '/pause').json()['paused']
    wait_until(lambda: any(
        not w['accepting'] for p in server.get('/status').json()['pools']
        for w in p['workers']), 10)
    pids = {server.get('/whoami').json()['pid'] for _ in range(30)}
    assert paused not in pids and len(pids) == 1
    assert server.request('POST', '/resume-all').status == 200
    wait_until(lambda: paused in {server.get('/whoami').json()['pid']
                                  for _ in range(10)}, 15,
               message='resumed worker never served again')


def test_worker_answers_when_registered_fifo_is_written(one_worker, tmp_path):
    fifo = str(tmp_path / 'wake')
    os.mkfifo(fifo)
    results = []
    thread = threading.Thread(target=lambda: results.append(
        one_worker.request('POST', '/watch', body={'fifo': fifo})))
    thread.start()
    writer = os.open(fifo, os.O_WRONLY)  # blocks until the worker opened it
    os.write(writer, b'wake up')
    os.close(writer)
    thread.join(10)
    assert results and results[0].json() == {'read': 'wake up'}


def test_dispatcher_watches_a_descriptor_of_its_own(one_worker, tmp_path):
    fifo = str(tmp_path / 'dispatcher-wake')
    os.mkfifo(fifo)
    assert one_worker.request('POST', '/dispatcher-watch',
                              body={'fifo': fifo}).status == 200
    writer = os.open(fifo, os.O_WRONLY)
    os.write(writer, b'ping')
    os.close(writer)
    wait_until(lambda: one_worker.get('/dispatcher-read').json()['read'] ==
               'ping', 10)


def test_forward_to_another_pool(one_worker):
    assert one_worker.request('POST', '/forward',
                              body={'note': 'hi'}).status == 200
    wait_until(lambda: {'note': 'hi'} in one_worker.get(
        '/other/inbox').json()['inbox'], 10)


def test_slow_reader_is_cut_off_not_buffered(one_worker):
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window
    slow.connect(('127.0.0.1', one_worker.port))
    slow.sendall(b'GET /sse HTTP/1.1\r\nHost: t\r\n\r\n')
    subscriber = wait_until(lambda: state(one_worker)['subscribers'])[-1]
    # 1500 events of 8 KiB (12 MiB, more than the kernel buffers) to a
    # client that reads nothing
    sent = one_worker.request('POST', '/flood/1500').json()['sent']
    assert sent
    wait_until(lambda: subscriber in state(one_worker)['disconnected'], 10,
               message='slow stream was not closed')
    status = one_worker.get('/status').json()
    assert status['buffered_bytes'] < 256 * 1024
    slow.close()


def test_broadcast_reaches_500_clients_on_two_workers_in_order(start_server):
    server = start_server(APP, env={'WORKERS': '2'}, ready_workers=3)
    count, events = 500, 20
    selector = selectors.DefaultSelector()
    received = {}
    for index in range(count):
        sock = socket.create_connection(('127.0.0.1', server.port))
        sock.sendall(b'GET /sse HTTP/1.1\r\nHost: t\r\n\r\n')
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
        received[index] = b''

    def pump(until):
        def done():
            for key, _ in selector.select(0.1):
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                received[key.data] += chunk
            return until()
        return done

    wait_until(pump(lambda: all(b': comment\n\n' in data
                                for data in received.values())), 60,
               message='not every client got its stream')
    for number in range(events):
        assert server.request('POST', '/publish',
                              body={'n': number}).status == 200
    last = b'data: {"n": %d}\n\n' % (events - 1)
    wait_until(pump(lambda: all(last in data for data in received.values())),
               60, message='not every client got every event')
    expected = b''.join(b'event: news\ndata: {"n": %d}\n\n' % n
                        for n in range(events))
    for data in received.values():
        assert data.split(b': comment\n\n', 1)[1] == expected
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()


def test_broadcast_reaches_a_paused_worker_once(start_server):
    server = start_server(APP, env={'WORKERS': '2'}, ready_workers=3)
    assert server.request('POST', '/pause').status == 200
    wait_until(lambda: any(
        not w['accepting'] for p in server.get('/status').json()['pools']
        for w in p['workers']), 10)
    assert server.request('POST', '/publish', body={'n': 'p'}).status == 200
    for worker in (0, 1):
        server.wait_log(rf"broadcast {{'n': 'p'}} reached worker {worker}$")
    assert server.request('POST', '/publish', body={'n': 'q'}).status == 200
    server.wait_log(r"broadcast {'n': 'q'} reached worker 1$")
    server.wait_log(r"broadcast {'n': 'q'} reached worker 0$")
    assert server.count_log(r"broadcast {'n': 'p'} reached") == 2


def test_stream_evicted_by_the_connection_limit_is_released(start_server):
    server = start_server(APP, env={'WORKERS': '1', 'MAX_CONNECTIONS': '16'},
                          ready_workers=2)
    client = StreamClient(server.port)
    client.read_until(b': comment\n\n')
    subscriber = wait_until(lambda: state(server)['subscribers'])[-1]
    crowd = [socket.create_connection(('127.0.0.1', server.port))
             for _ in range(20)]  # the oldest connection (the stream) goes
    try:
        wait_until(lambda: subscriber in state(server)['disconnected'], 10,
                   message='the evicted stream was not released')
        assert server.get('/status').json()['streams'] == 0
    finally:
        for sock in crowd:
            sock.close()
        client.close()


# -- frames leave the worker at once ----------------------------------------------

def peak_rss_kib(pid):
    """The process's peak resident set size (VmHWM), in KiB."""
    with open(f'/proc/{pid}/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError(f'no VmHWM for pid {pid}')


def test_looping_handler_delivers_its_first_event_while_running(
        one_worker, tmp_path):
    flag = tmp_path / 'first-event-received'
    count = 2000
    client = StreamClient(one_worker.port, '/stream-loop/%d?flag=%s' % (
        count, urllib.parse.quote(str(flag))))
    # the handler waits for this flag after its first event: receiving the
    # event before creating the flag proves it left while the handler ran
    client.read_until(b'data: {"n": 0}\n\n')
    flag.touch()
    data = client.read_to_end(timeout=30)
    client.close()
    body = data.partition(b'\r\n\r\n')[2]
    expected = b'data: {"n": 0}\n\nevent: flag\ndata: {"flag_seen": true}\n\n' \
        + b''.join(b'data: {"n": %d}\n\n' % n for n in range(1, count))
    assert body == expected


def test_worker_memory_stays_bounded_streaming_to_a_slow_client(one_worker):
    mib = 100
    pid = state(one_worker)['pid']
    peak_before = peak_rss_kib(pid)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(('127.0.0.1', one_worker.port))
    slow.sendall(b'GET /stream-bulk/%d HTTP/1.1\r\nHost: t\r\n\r\n' % mib)
    slow.settimeout(10)
    received = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:     # read a little, now and then
        chunk = slow.recv(4096)
        if not chunk:
            break
        received += len(chunk)
        time.sleep(0.002)
    slow.close()
    # the dispatcher cut the slow reader off: it got a small part only
    assert 0 < received < mib * 1024 * 1024 // 4
    done = wait_until(lambda: state(one_worker)['bulk_done'], 30,
                      message='the streaming handler did not finish')[-1]
    wait_until(lambda: done in state(one_worker)['disconnected'], 10,
               message='the worker was not told its client left')
    assert state(one_worker)['pid'] == pid   # the same worker, alive
    # 100 MiB went through the worker; it never held more than a little
    grown = peak_rss_kib(pid) - peak_before
    assert grown < 16 * 1024, f'worker peak RSS grew by {grown} KiB'


# -- the worker's hold policy, without processes -------------------------------------

def frames_waiting(sock):
    """Every complete message readable on `sock` now, without blocking."""
    return Channel(sock).receive()


@pytest.fixture
def worker_and_peer():
    dispatcher_end, worker_end = channel_pair()
    worker = Worker()
    worker._channel = Channel(worker_end)  # pylint: disable=protected-access
    yield worker, dispatcher_end
    dispatcher_end.close()
    worker_end.close()


def a_request(worker, request_id):
    request = Request(request_id, 'GET', '/sse')
    request._worker = worker  # pylint: disable=protected-access
    return request


def test_channel_holds_small_frames_until_flushed():
    dispatcher_end, worker_end = channel_pair()
    channel = Channel(worker_end)
    for number in range(100):
        channel.hold(('small', number))
    assert frames_waiting(dispatcher_end) == []
    channel.flush_held()
    assert frames_waiting(dispatcher_end) == [
        ('small', number) for number in range(100)]
    dispatcher_end.close()
    worker_end.close()


def test_channel_writes_held_frames_past_the_bound():
    dispatcher_end, worker_end = channel_pair()
    channel = Channel(worker_end)
    block = b'b' * (HOLD_LIMIT // 4)
    sent = 0
    while not frames_waiting(dispatcher_end):
        channel.hold(('block', block))
        sent += 1
        assert sent <= 4, 'held frames passed the bound without a write'
        assert channel.held_size < HOLD_LIMIT
    assert channel.held_size == 0
    dispatcher_end.close()
    worker_end.close()


def test_frames_of_the_running_request_leave_at_once(worker_and_peer):
    worker, peer = worker_and_peer
    running = a_request(worker, 7)
    worker._current = 7  # pylint: disable=protected-access
    running.response_stream()
    assert [m[0] for m in frames_waiting(peer)] == [messages.STREAM_START]
    running.send_event('one')
    assert frames_waiting(peer) == [
        (messages.STREAM_DATA, 7, b'data: one\n\n')]
    running.response_stream_end()
    assert frames_waiting(peer) == [(messages.STREAM_END, 7)]


def test_fan_out_to_other_streams_is_held_for_one_write(worker_and_peer):
    worker, peer = worker_and_peer
    subscribers = [a_request(worker, number) for number in range(100, 600)]
    for subscriber in subscribers:
        subscriber.response_stream()      # no handler running: held
    worker._flush_held()  # pylint: disable=protected-access
    assert len(frames_waiting(peer)) == 500
    worker._current = 1  # pylint: disable=protected-access
    for subscriber in subscribers:        # a broadcast handler fans out
        subscriber.send_event({'n': 1})
    assert worker._channel.held_size > 0  # pylint: disable=protected-access
    worker._flush_held()  # pylint: disable=protected-access
    received = frames_waiting(peer)
    assert [(m[1], m[2]) for m in received] == [
        (number, b'data: {"n": 1}\n\n') for number in range(100, 600)]


def test_frames_held_before_an_immediate_one_keep_their_order(
        worker_and_peer):
    worker, peer = worker_and_peer
    other = a_request(worker, 3)
    other.response_stream()
    other.send_event('held')
    running = a_request(worker, 4)
    worker._current = 4  # pylint: disable=protected-access
    running.response_stream()
    assert [(m[0], m[1]) for m in frames_waiting(peer)] == [
        (messages.STREAM_START, 3), (messages.STREAM_DATA, 3),
        (messages.STREAM_START, 4)]


def test_an_answer_given_inside_its_running_handler_leaves_at_once(
        worker_and_peer):
    worker, peer = worker_and_peer
    running = a_request(worker, 9)
    worker._current = 9  # pylint: disable=protected-access
    running.respond({'early': True})
    (answer,) = frames_waiting(peer)
    assert answer[:3] == (messages.RESPONSE, 9, 200)
    assert answer[3].endswith(b'\r\n\r\n{"early": true}')
    worker._current = None  # pylint: disable=protected-access
    later = a_request(worker, 10)     # e.g. DEFERRED, answered from on_idle
    later.respond({'late': True})
    assert frames_waiting(peer) == []
    worker._flush_held()  # pylint: disable=protected-access
    assert frames_waiting(peer)[0][:2] == (messages.RESPONSE, 10)


def test_a_handler_streaming_in_a_loop_learns_at_once_that_its_client_left(
        one_worker):
    sock = socket.create_connection(('127.0.0.1', one_worker.port),
                                    timeout=10)
    sock.sendall(b'GET /stream-until-gone HTTP/1.1\r\nHost: t\r\n\r\n')
    data = b''
    while b'data: {"n": 0}' not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    sock.close()
    # the handler's sends fail while it still runs (it would go on for 20 s
    # otherwise), and on_disconnect() runs once it returned
    ended = wait_until(lambda: state(one_worker)['loops_ended'], 10,
                       message='the streaming handler never noticed')
    wait_until(lambda: ended[0] in state(one_worker)['disconnected'], 10)
