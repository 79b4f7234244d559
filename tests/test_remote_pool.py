"""RemotePool: a real dispatcher, a real redis-server, the remote side
played by the test (a redis-py client reads the request stream as a
consumer of the group and writes STARTED / RESPONSE / LOST / stream frames
to the dispatcher's reply stream, and keeps an alive key).

The app (tests/apps/remote_dispatcher_app.py) has a RemotePool 'remote' on
/remote/** and a local WorkerPool 'local' on /local/**.
"""

import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from conftest import free_port, running_redis, wait_until
from test_remote_worker import Host
from uhttp.workers import RemotePool, framing, messages
from uhttp.workers import remote_protocol as proto
from uhttp.workers.wake_pipe import WakePipe

redis_package = pytest.importorskip(
    'redis', reason='the redis package is not installed (pip install redis)')

APP = 'remote_dispatcher_app.py'
POOL = 'remote'


class FakeRemote:
    """The remote side of pool POOL, as the protocol describes it: one
    consumer with an alive key renewed every HEARTBEAT_INTERVAL, reading
    entries with XREADGROUP and acknowledging them with STARTED in one
    MULTI/EXEC."""

    def __init__(self, client, consumer='host-a-1', workers=2,
                 ttl_ms=proto.ALIVE_TTL_MS):
        self.client = client
        self.consumer = consumer
        self.workers = workers
        self.ttl_ms = ttl_ms
        self.handled = 0
        self.last_dispatcher = None   # whose request serve_one() took
        self._stopped = threading.Event()
        self._thread = None

    # -- heartbeat --------------------------------------------------------

    def beat(self):
        """One heartbeat now."""
        self.client.sadd(proto.consumers_set(POOL), self.consumer)
        self.client.set(
            proto.alive_key(POOL, self.consumer),
            proto.encode_heartbeat('test-host', os.getpid(), self.workers, 0,
                                   self.handled), px=self.ttl_ms)

    def start_beating(self):
        """Renew the alive key from a thread until stop_beating()."""
        self.beat()
        self._stopped.clear()
        self._thread = threading.Thread(target=self._beat_loop, daemon=True)
        self._thread.start()
        return self

    def _beat_loop(self):
        while not self._stopped.wait(proto.HEARTBEAT_INTERVAL):
            try:
                self.beat()
            except redis_package.ConnectionError:
                pass    # Redis stopped on purpose: beat again once it is back

    def stop_beating(self):
        """As a SIGKILLed host: no more heartbeats, the key expires."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- requests ---------------------------------------------------------

    def take(self, timeout=10.0):
        """(entry_id, dispatcher_id, timeout_ms, message) of the next
        request entry."""
        found = wait_until(lambda: self.client.xreadgroup(
            proto.GROUP, self.consumer, {proto.requests_stream(POOL): '>'},
            count=1, block=200), timeout, message='no request entry came')
        entry_id, fields = found[0][1][0]
        return (entry_id, *proto.decode_request(fields))

    def started(self, entry_id, dispatcher_id, request_id):
        """Acknowledge the entry and say STARTED, atomically."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(proto.requests_stream(POOL), proto.GROUP, entry_id)
        pipe.xadd(proto.replies_stream(POOL, dispatcher_id),
                  proto.encode_reply(self.consumer, proto.started(
                      request_id, self.consumer)))
        pipe.execute()

    def send(self, dispatcher_id, message, seq=None):
        """Add one reply message to the dispatcher's reply stream."""
        self.client.xadd(proto.replies_stream(POOL, dispatcher_id),
                         proto.encode_reply(self.consumer, message, seq))

    def respond(self, dispatcher_id, message, data, status=200):
        """Answer the REQUEST `message` with JSON `data`."""
        request_id, keep_alive = message[1], message[9]
        wire, keep_alive = framing.frame_response(
            status, {'content-type': 'application/json'},
            json.dumps(data).encode(), keep_alive=keep_alive)
        self.handled += 1
        self.send(dispatcher_id, messages.response(
            request_id, status, wire, keep_alive, '/remote/echo'))

    def serve_one(self, data_of=None, timeout=10.0):
        """Take one entry, start it and answer it (JSON: what it got)."""
        entry_id, dispatcher_id, _, message = self.take(timeout)
        self.last_dispatcher = dispatcher_id
        self.started(entry_id, dispatcher_id, message[1])
        data = data_of(message) if data_of else {
            'request_id': message[1], 'method': message[2],
            'path': message[3], 'data': _text(message[6]),
            'context': message[10]}
        self.respond(dispatcher_id, message, data)
        return message


def _text(data):
    return data.decode() if isinstance(data, bytes) else data


def in_thread(function, *args):
    """Run `function(*args)` in a thread; returns a callable that waits
    for its result (or raises what it raised)."""
    box = {}

    def run():
        try:
            box['value'] = function(*args)
        except BaseException as err:  # pylint: disable=broad-except
            box['error'] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout=20.0):
        thread.join(timeout)
        assert not thread.is_alive(), 'still running'
        if 'error' in box:
            raise box['error']
        return box['value']
    return result


@pytest.fixture
def redis_env(tmp_path):
    """(url, client) of a fresh redis-server."""
    with running_redis(tmp_path, 'redis-server is not installed: remote '
                       'pools need one to be tested') as found:
        yield found


def start_app(start_server, url, **env):
    server = start_server(APP, env=dict({'REDIS_URL': url}, **env),
                          ready_workers=1)
    server.wait_log(r'pool %s: Redis answers' % env.get('POOL_NAME', POOL))
    return server


def remote_pool_status(server):
    pools = server.get('/monitor').json()['pools']
    return next(pool for pool in pools if pool['name'] == POOL)


def wait_live(server, count):
    """Until the dispatcher saw `count` live remote workers."""
    wait_until(lambda: remote_pool_status(server)['alive_count'] == count,
               15, message=lambda: f'not {count} live remote workers: '
               f'{remote_pool_status(server)}')


# -- construction ---------------------------------------------------------------

def test_remote_pool_needs_a_name_or_a_worker_class():
    with pytest.raises(ValueError, match='name='):
        RemotePool(routes=['/r/**'], redis_url='redis://127.0.0.1:1/0')

    class Billing:   # (only its name is used)
        pass
    pool = RemotePool(routes=['/r/**'], redis_url='redis://127.0.0.1:1/0',
                      worker_class=Billing)
    assert pool.name == 'Billing'
    secret = RemotePool(routes=None, redis_url='redis://u:pw@10.0.0.1:6380/2',
                        name='x')
    assert secret.where == 'redis://10.0.0.1:6380/2'   # no password in logs


def test_wake_pipe_wakes_a_selector_from_another_thread():
    with selectors.DefaultSelector() as selector:
        pipe = WakePipe()
        selector.register(pipe.fileno(), selectors.EVENT_READ)
        assert selector.select(0) == []
        threads = [threading.Thread(target=pipe.wake) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert len(selector.select(5)) == 1
        pipe.drain()
        assert selector.select(0) == []     # drained: quiet again
        for _ in range(100_000):   # more than a pipe holds: never blocks
            pipe.wake()
        pipe.drain()
        assert selector.select(0) == []
        selector.unregister(pipe.fileno())
        pipe.close()
        pipe.wake()     # after close: nothing, no error
        pipe.close()


# -- answers ------------------------------------------------------------------

def test_get_and_post_come_back_on_a_kept_alive_connection(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    wait_live(server, 2)
    connection = http.client.HTTPConnection('127.0.0.1', server.port,
                                            timeout=10)
    try:
        def get():
            connection.request('GET', '/remote/echo?x=1')
            response = connection.getresponse()
            return response.status, response.getheader('connection'), \
                json.loads(response.read())
        pending = in_thread(get)
        message = remote.serve_one()
        status, keep, body = pending()
        assert status == 200 and keep == 'keep-alive'
        assert body['method'] == 'GET' and body['path'] == '/remote/echo'
        assert body['request_id'] == message[1]
        assert body['context'] == {'accepted': message[1]}

        def post():
            connection.request('POST', '/remote/echo',
                               body=json.dumps({'n': 7}).encode(),
                               headers={'content-type': 'application/json'})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        pending = in_thread(post)
        remote.serve_one()
        status, body = pending()   # the same connection: it was kept open
        assert status == 200
        assert body['method'] == 'POST' and json.loads(body['data']) == {
            'n': 7}
    finally:
        connection.close()
        remote.stop_beating()
    server.wait_log(r'"GET /remote/echo\?x=1 HTTP/1.1" 200 .* host-a-1 ')
    server.wait_log(r'"POST /remote/echo HTTP/1.1" 200 .* host-a-1 ')
    assert server.get('/local/echo').status == 200


def test_no_live_remote_worker_answers_503_at_once_and_sends_nothing(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    result = server.get('/remote/echo')
    assert result.status == 503
    assert result.headers['retry-after'] == '1'
    assert result.json() == {'error': 'No Workers Available'}
    assert client.xlen(proto.requests_stream(POOL)) == 0


def test_timeout_answers_504_and_the_late_answer_is_dropped(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url, TIMEOUT='1')
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, timeout_ms, message = remote.take()
        assert timeout_ms == 1000
        remote.started(entry_id, dispatcher_id, message[1])
        assert pending().status == 504
        server.wait_log(r'request %d GET /remote/echo timed out' % message[1])
        remote.respond(dispatcher_id, message, {'late': True})

        # the next request gets its own answer, never the late one (asked
        # again if a loaded machine made it miss its 1 s timeout too)
        def served():
            pending = in_thread(server.get, '/remote/echo')
            second = remote.serve_one()
            result = _answered(pending())
            return result and (result, second)
        result, second = wait_until(served, 30)
        assert result.json()['request_id'] == second[1] != message[1]
    finally:
        remote.stop_beating()


def test_started_request_of_a_host_that_stops_beating_gets_502_once(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    # a short-lived key, yet twice the beat interval: a late beat on a
    # loaded machine does not make the host look dead before its time
    ttl_ms = int(proto.HEARTBEAT_INTERVAL * 2000)
    remote = FakeRemote(client, ttl_ms=ttl_ms).start_beating()
    wait_live(server, 2)
    # the 502 comes once the key expired and the dispatcher read the
    # heartbeats again: the client waits for that, on top of the start
    patience = ttl_ms / 1000 + 25
    pending = in_thread(lambda: server.get('/remote/echo',
                                           timeout=patience))
    entry_id, dispatcher_id, _, message = remote.take()
    remote.started(entry_id, dispatcher_id, message[1])
    remote.stop_beating()      # as if SIGKILLed: its alive key expires
    result = pending(patience + 5)
    assert result.status == 502
    assert result.json() == {'error': 'Worker Died'}
    server.wait_log(r'request %d GET /remote/echo lost: remote worker '
                    r'host-a-1 stopped heart-beating' % message[1])
    # never re-sent: acknowledged, nothing left for another consumer
    stream = proto.requests_stream(POOL)
    assert client.xlen(stream) == 1
    assert client.xpending(stream, proto.GROUP)['pending'] == 0
    assert not client.xreadgroup(proto.GROUP, 'host-b-1', {stream: '>'},
                                 count=10)
    wait_live(server, 0)
    assert server.get('/remote/echo').status == 503


def test_a_client_that_leaves_is_forgotten_and_its_answer_dropped(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        with socket.create_connection(('127.0.0.1', server.port)) as sock:
            sock.sendall(b'GET /remote/echo HTTP/1.1\r\nHost: x\r\n\r\n')
            entry_id, dispatcher_id, _, message = remote.take()
            remote.started(entry_id, dispatcher_id, message[1])
        # the dispatcher notices, and the pool forgets the request
        wait_until(lambda: remote_pool_status(server)['pending'] == 0
                   and server.get('/monitor').json()['pending'] == 0, 15)
        remote.respond(dispatcher_id, message, {'too': 'late'})
        pending = in_thread(server.get, '/remote/echo')
        second = remote.serve_one()
        result = pending()
        assert result.status == 200
        assert result.json()['request_id'] == second[1]
    finally:
        remote.stop_beating()


def test_lost_answers_502(redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        remote.started(entry_id, dispatcher_id, message[1])
        remote.send(dispatcher_id, proto.lost(message[1], 'worker 3 killed'))
        result = pending()
        assert result.status == 502
        server.wait_log(r'request %d GET /remote/echo lost: remote worker '
                        r'host-a-1: .*worker 3 killed' % message[1])
        # the pool goes on serving
        pending = in_thread(server.get, '/remote/echo')
        remote.serve_one()
        assert pending().status == 200
    finally:
        remote.stop_beating()


def test_a_malformed_reply_is_logged_and_its_request_gets_502(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        remote.started(entry_id, dispatcher_id, message[1])
        replies = proto.replies_stream(POOL, dispatcher_id)
        client.xadd(replies, {b'c': b'host-a-1', b'm': b'not json'})
        # an answer whose wire bytes are text, not bytes
        remote.send(dispatcher_id, messages.response(
            message[1], 200, 'HTTP/1.1 200 OK\r\n\r\n', True, ''))
        result = pending()
        assert result.status == 502
        server.wait_log(r'pool remote: a reply from Redis was dropped: '
                        r'malformed')
        server.wait_log(r'pool remote: malformed answer from remote worker '
                        r'host-a-1 to request %d' % message[1])
        pending = in_thread(server.get, '/remote/echo')
        remote.serve_one()
        assert pending().status == 200
    finally:
        remote.stop_beating()


def test_a_context_json_cannot_carry_gets_500_saying_why(
        redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        result = server.get('/remote/echo', headers={'x-context': 'set'})
        assert result.status == 500
        server.wait_log(r'request \d+ GET /remote/echo cannot go to remote '
                        r'pool remote: .*set is not JSON serializable')
        assert client.xlen(proto.requests_stream(POOL)) == 0
    finally:
        remote.stop_beating()


def test_a_streamed_answer_is_relayed(redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        request_id = message[1]
        remote.started(entry_id, dispatcher_id, request_id)
        remote.send(dispatcher_id, messages.stream_start(
            request_id, 200, {'content-type': 'text/plain'}, None))
        for part in (b'one ', b'two ', b'three'):
            remote.send(dispatcher_id, messages.stream_data(request_id, part))
        remote.send(dispatcher_id, messages.stream_end(request_id))
        result = pending()
        assert result.status == 200
        assert result.headers['content-type'] == 'text/plain'
        assert result.body == b'one two three'
    finally:
        remote.stop_beating()


def test_a_reply_sent_again_with_its_number_is_dropped(redis_env,
                                                       start_server):
    # a host that did not hear Redis confirm a batch sends it again, with
    # the same numbers: the client must get each chunk once
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        request_id = message[1]
        remote.started(entry_id, dispatcher_id, request_id)
        replies = [messages.stream_start(request_id, 200,
                                         {'content-type': 'text/plain'}, None),
                   messages.stream_data(request_id, b'one '),
                   messages.stream_data(request_id, b'two ')]
        for seq, reply in enumerate(replies, 1):
            remote.send(dispatcher_id, reply, seq)
        for seq, reply in enumerate(replies, 1):     # the batch again
            remote.send(dispatcher_id, reply, seq)
        remote.send(dispatcher_id, messages.stream_data(request_id, b'three'),
                    4)
        remote.send(dispatcher_id, messages.stream_end(request_id), 5)
        result = pending()
        assert result.status == 200
        assert result.body == b'one two three'
    finally:
        remote.stop_beating()


def test_status_and_metrics_show_live_remote_workers(redis_env,
                                                      start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    first = FakeRemote(client, 'host-a-1', workers=3).start_beating()
    second = FakeRemote(client, 'host-b-1', workers=2).start_beating()
    try:
        wait_live(server, 5)
        status = remote_pool_status(server)
        assert status['remote'] is True and status['redis'] == 'up'
        assert not status['degraded']
        assert [(h['consumer'], h['host'], h['workers'])
                for h in status['hosts']] == [
            ('host-a-1', 'test-host', 3), ('host-b-1', 'test-host', 2)]
        metrics = server.get('/metrics').body.decode()
        assert 'uhttp_workers_alive{pool="remote"} 5.0' in metrics
        assert 'uhttp_pool_degraded{pool="remote"} 0.0' in metrics
        server.wait_log(r'pool remote: remote worker host-b-1 \(host '
                        r'test-host, pid \d+\) is alive with 2 workers')
    finally:
        first.stop_beating()
        second.stop_beating()


def test_several_dispatchers_each_get_their_own_answers(redis_env,
                                                        start_server):
    url, client = redis_env
    server = start_app(start_server, url, DISPATCHERS='2')
    remote = FakeRemote(client).start_beating()
    try:
        wait_until(lambda: server.count_log(
            r'pool remote: remote worker host-a-1 .*is alive') >= 2, 15)
        # one reply stream (and request id sequence) per dispatcher process
        seen = set(re.findall(r'replies on uhttp:remote:replies:(\w+)',
                              server.log))
        assert len(seen) == 2
        # the host view counts the shared remote workers once
        wait_until(lambda: len(server.get('/monitor').json()[
            'dispatchers']) == 2, 15)
        status = remote_pool_status(server)
        assert status['alive_count'] == 2 and status['remote'] is True
        assert [host['consumer'] for host in status['hosts']] == [
            'host-a-1']
        metrics = server.get('/metrics').body.decode()
        assert 'uhttp_workers_alive{pool="remote"} 2.0' in metrics
        pending = [in_thread(server.get, f'/remote/echo?n={number}')
                   for number in range(8)]
        served = set()
        for _ in pending:
            remote.serve_one(lambda message: {'query': message[4]})
            served.add(remote.last_dispatcher)
        for number, result in enumerate(pending):
            answer = result()
            assert answer.status == 200
            assert answer.json() == {'query': {'n': str(number)}}
        assert served <= seen
    finally:
        remote.stop_beating()


def test_graceful_stop_waits_for_a_started_request(redis_env, start_server):
    url, client = redis_env
    server = start_app(start_server, url)
    remote = FakeRemote(client).start_beating()
    try:
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        remote.started(entry_id, dispatcher_id, message[1])
        replies = proto.replies_stream(POOL, dispatcher_id)
        server.signal(signal.SIGTERM)
        server.wait_log(r'draining 1 pending requests')
        remote.respond(dispatcher_id, message, {'finished': True})
        result = pending()
        assert result.status == 200 and result.json() == {'finished': True}
        assert result.headers['connection'] == 'close'
        assert server.wait_exit() == 0
        # the dispatcher's reply stream went with it
        assert client.exists(replies) == 0
    finally:
        remote.stop_beating()


# -- losing Redis -------------------------------------------------------------

class RedisProcess:
    """A redis-server that the test stops and starts again on one port."""

    def __init__(self, directory):
        self.binary = shutil.which('redis-server')
        if self.binary is None:
            pytest.skip('redis-server is not installed: remote pools need '
                        'one to be tested')
        self.redis = pytest.importorskip('redis')
        self.directory = directory
        self.port = free_port()
        self.url = f'redis://127.0.0.1:{self.port}/0'
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [self.binary, '--port', str(self.port), '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--dir', str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.redis.Redis(host='127.0.0.1', port=self.port)

        def answers():
            assert self.proc.poll() is None, 'redis-server exited'
            try:
                return client.ping()
            except self.redis.ConnectionError:
                return False
        wait_until(answers, 10, interval=0.05)
        return client

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_redis_unreachable_at_start_is_said_and_answered_503(
        tmp_path, start_server):
    redis = RedisProcess(tmp_path)     # (not started yet)
    server = start_server(APP, env={'REDIS_URL': redis.url},
                          ready_workers=1)
    server.wait_log(r'pool remote: Redis unreachable \(.*\): no request in '
                    r'flight; its requests get 503')
    refused = server.get('/remote/echo')
    assert refused.status == 503 and 'retry-after' in refused.headers
    assert server.get('/local/echo').status == 200
    assert remote_pool_status(server)['redis'] == 'down'
    client = redis.start()
    try:
        server.wait_log(r'pool remote: Redis answers')
        remote = FakeRemote(client).start_beating()
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        remote.serve_one()
        assert pending().status == 200
        remote.stop_beating()
        assert server.count_log(r'Redis unreachable') == 1
    finally:
        redis.stop()


def test_losing_redis_degrades_that_pool_only_until_it_is_back(
        tmp_path, start_server):
    redis = RedisProcess(tmp_path)
    client = redis.start()
    try:
        server = start_app(start_server, redis.url)
        remote = FakeRemote(client).start_beating()
        wait_live(server, 2)
        pending = in_thread(server.get, '/remote/echo')
        entry_id, dispatcher_id, _, message = remote.take()
        remote.started(entry_id, dispatcher_id, message[1])

        redis.stop()
        result = pending()
        assert result.status == 502     # in flight when Redis went away
        server.wait_log(r'pool remote: Redis unreachable .*1 requests in '
                        r'flight fail with 502')
        refused = server.get('/remote/echo')
        assert refused.status == 503 and 'retry-after' in refused.headers
        assert server.get('/local/echo').status == 200
        assert remote_pool_status(server)['redis'] == 'down'

        redis.start()   # the same port, empty: the group is made again
        wait_live(server, 2)    # (the fake's heartbeats reach it again)
        assert remote_pool_status(server)['degraded'] is False
        pending = in_thread(server.get, '/remote/echo')
        remote.serve_one()
        assert pending().status == 200
        remote.stop_beating()
        assert server.proc.poll() is None   # never restarted
    finally:
        redis.stop()



# -- with real remote hosts (uhttp-workers worker) ----------------------------

REMOTE_ROUTES = '/echo /body /wait /crash /stream'
HOST_POOL = 'hosted'


@pytest.fixture
def hosts(tmp_path):
    """start(url, workers) -> a started Host; each is stopped at the end."""
    started = []

    def start(url, workers=2):
        host = Host(url, HOST_POOL, workers,
                    tmp_path / f'host-{len(started)}.log')
        started.append(host)
        return host
    yield start
    for host in started:
        host.stop()


def start_hosted(start_server, url, **env):
    server = start_app(start_server, url, POOL_NAME=HOST_POOL,
                       REMOTE_ROUTES=REMOTE_ROUTES, **env)
    return server


def hosted_status(server):
    pools = server.get('/monitor').json()['pools']
    return next(pool for pool in pools if pool['name'] == HOST_POOL)


def wait_hosted(server, count):
    wait_until(lambda: hosted_status(server)['alive_count'] == count, 30,
               message=lambda: f'not {count} live remote workers: '
               f'{hosted_status(server)}')


def test_real_hosts_answer_get_post_and_streams(redis_env, start_server,
                                                hosts):
    url, _ = redis_env
    server = start_hosted(start_server, url)
    host = hosts(url, workers=2)
    wait_hosted(server, 2)
    status = hosted_status(server)
    assert [(h['consumer'], h['workers']) for h in status['hosts']] == [
        (host.consumer, 2)]
    answer = server.get('/echo?a=1')
    assert answer.status == 200
    assert answer.json()['pool'] == HOST_POOL
    assert answer.json()['query'] == {'a': '1'}
    posted = server.request('POST', '/body', body={'x': [1, 2]})
    assert posted.status == 200
    assert posted.json() == {'body': {'x': [1, 2]}, 'type': 'json'}
    streamed = server.get('/stream?n=3')
    assert streamed.status == 200
    assert [json.loads(line) for line in streamed.body.splitlines()] == [
        {'n': 0}, {'n': 1}, {'n': 2}]
    server.wait_log(r'"GET /echo\?a=1 HTTP/1.1" 200 .* %s ' % re.escape(
        host.consumer))
    metrics = server.get('/metrics').body.decode()
    assert f'uhttp_workers_alive{{pool="{HOST_POOL}"}} 2.0' in metrics
    assert server.get('/local/echo').status == 200


def test_real_host_worker_dying_mid_request_gives_502(
        redis_env, start_server, hosts):
    url, _ = redis_env
    server = start_hosted(start_server, url)
    hosts(url, workers=1)
    wait_hosted(server, 1)
    assert server.get('/crash').status == 502
    server.wait_log(r'request \d+ GET /crash lost: remote worker ')
    # its host restarts the worker: the pool serves again
    wait_until(lambda: server.get('/echo').status == 200, 30)


def test_real_host_sigkilled_with_a_started_request_gives_502_never_rerun(
        redis_env, start_server, hosts, tmp_path):
    url, client = redis_env
    server = start_hosted(start_server, url)
    host = hosts(url, workers=1)
    wait_hosted(server, 1)
    flag = tmp_path / 'never'
    # the 502 comes once the host's alive key expired (ALIVE_TTL_MS after
    # its last beat) and the dispatcher read the heartbeats again: the
    # client waits for that, on top of the start, however slow the machine
    patience = proto.ALIVE_TTL_MS / 1000 + 25
    pending = in_thread(lambda: server.get(f'/wait?flag={flag}',
                                           timeout=patience))
    wait_until(lambda: client.xpending(proto.requests_stream(HOST_POOL),
                                       proto.GROUP)['pending'] == 0
               and client.xlen(proto.requests_stream(HOST_POOL)) == 1, 15)
    os.kill(host.pid, signal.SIGKILL)
    result = pending(patience + 5)
    assert result.status == 502
    server.wait_log(r'request \d+ GET /wait lost: remote worker '
                    r'%s stopped heart-beating' % re.escape(host.consumer))
    # a new host does not run it again: nothing is left to deliver
    second = hosts(url, workers=1)
    wait_hosted(server, 1)
    assert server.get('/echo').status == 200
    assert 'GET /wait' not in second.log()
    assert client.xlen(proto.requests_stream(HOST_POOL)) == 2


def test_real_host_timeout_gives_504_and_its_late_answer_is_dropped(
        redis_env, start_server, hosts, tmp_path):
    url, _ = redis_env
    server = start_hosted(start_server, url, TIMEOUT='1')
    hosts(url, workers=1)
    wait_hosted(server, 1)
    flag = tmp_path / 'go'
    assert server.get(f'/wait?flag={flag}').status == 504
    flag.write_text('go')   # the handler answers now: too late
    # the one worker is free again once that answer came and was dropped,
    # and answers the next request with that request's own answer (asked
    # again if a loaded machine made it miss its 1 s timeout too)
    answer = wait_until(lambda: _answered(server.get('/echo?after=1')), 30)
    assert answer.json()['query'] == {'after': '1'}


def _answered(result):
    """`result` if it is a 200, else None (a 504 only: anything else
    fails the test)."""
    assert result.status in (200, 504), result
    return result if result.status == 200 else None


def test_real_host_graceful_stop_waits_for_a_started_request(
        redis_env, start_server, hosts, tmp_path):
    url, client = redis_env
    server = start_hosted(start_server, url)
    hosts(url, workers=1)
    wait_hosted(server, 1)
    flag = tmp_path / 'go'
    pending = in_thread(server.get, f'/wait?flag={flag}')
    wait_until(lambda: hosted_status(server)['pending'] == 1, 15)
    dispatcher_id = hosted_status(server)['dispatcher_id']
    server.signal(signal.SIGTERM)
    server.wait_log(r'draining 1 pending requests')
    flag.write_text('go')
    result = pending()
    assert result.status == 200 and result.json()['flag_seen'] is True
    assert server.wait_exit() == 0
    assert client.exists(proto.replies_stream(HOST_POOL, dispatcher_id)) == 0


def test_real_host_and_dispatcher_through_a_redis_restart(
        tmp_path, start_server, hosts):
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        server = start_hosted(start_server, redis.url)
        hosts(redis.url, workers=1)
        wait_hosted(server, 1)
        assert server.get('/echo').status == 200
        redis.stop()
        server.wait_log(r'pool %s: Redis unreachable' % HOST_POOL)
        assert server.get('/echo').status == 503
        assert server.get('/local/echo').status == 200
        redis.start()
        # both sides come back on their own: the host re-creates the group
        # and beats again, the dispatcher sees it
        wait_hosted(server, 1)
        wait_until(lambda: server.get('/echo').status == 200, 30)
    finally:
        redis.stop()
