"""`uhttp-workers worker app:Worker --redis URL`: remote workers, for real.

A real redis-server, real worker hosts started with the command line
(tests/apps/remote_app.py), and the dispatcher's side played by the test
itself: it adds request entries with remote_protocol.encode_request and
reads its reply stream, exactly as a RemotePool does. Faults are real too:
a worker process that exits mid-request, SIGKILL and SIGSTOP of a host,
SIGTERM, a Redis server restarted under a running host.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import APPS, free_port, running_redis, wait_until

from uhttp.workers import messages
from uhttp.workers import remote_protocol as rp
from uhttp.workers.remote_consumer import RedisDown, RedisLink

WHY = 'redis-server is not installed: remote workers need a real Redis'


@pytest.fixture(scope='module')
def redis_server(tmp_path_factory):
    """(url, client) of one redis-server for the module (each test uses a
    pool name of its own)."""
    with running_redis(tmp_path_factory.mktemp('redis'), WHY) as server:
        yield server


@pytest.fixture
def pool(request):
    """A pool name of this test only (parameters included)."""
    name = request.node.name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f'rw-{name[:40]}-{digest}'


class Host:
    """One `uhttp-workers worker` process (a remote worker host)."""

    def __init__(self, url, pool, workers, log_path, env=None, extra=()):
        self.log_path = log_path
        environ = {key: value for key, value in os.environ.items()
                   if not key.startswith('UHTTP_WORKERS_')}
        environ.update(env or {})
        with open(log_path, 'wb') as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, '-m', 'uhttp.workers', 'worker',
                 'remote_app:RemoteApp', '--redis', url, '--pool', pool,
                 '--workers', str(workers), '--app-dir', APPS,
                 '--log-level', 'debug', *extra],
                stdout=subprocess.DEVNULL, stderr=log, env=environ)
        self.pid = self.process.pid
        self.pool = pool
        self._consumer = None

    @property
    def consumer(self):
        """The consumer name the host logs as it starts."""
        if self._consumer is None:
            found = wait_until(
                lambda: re.search(r'consumer (\S+) of pool ', self.log()),
                30, 0.02, lambda: f'no consumer name logged:\n{self.log()}')
            self._consumer = found.group(1)
        return self._consumer

    def log(self):
        with open(self.log_path, encoding='utf-8', errors='replace') as log:
            return log.read()

    def wait_ready(self, count, timeout=30):
        """Until `count` worker processes have finished setup()."""
        wait_until(lambda: self.log().count(' ready (pid ') >= count,
                   timeout, 0.05, lambda: f'workers not ready:\n{self.log()}')

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def hosts(redis_server, pool, tmp_path):
    """start(workers=1, env=None, url=None) -> a started Host; every host
    is stopped (by its pid) at the end."""
    started = []

    def start(workers=1, env=None, url=None, extra=()):
        host = Host(url or redis_server[0], pool, workers,
                    tmp_path / f'host-{len(started)}.log', env, extra)
        started.append(host)
        return host
    yield start
    for host in started:
        host.stop()


class Dispatcher:
    """The dispatcher's side of the protocol, played with a redis client."""

    def __init__(self, client, pool, dispatcher_id='d1'):
        self.client = client
        self.pool = pool
        self.id = dispatcher_id
        self.replies = []       # (consumer, message) in arrival order
        self._last = b'0-0'
        # as a RemotePool does before its first request: entries added
        # before any worker host joined wait for it
        try:
            client.xgroup_create(rp.requests_stream(pool), rp.GROUP, id='$',
                                 mkstream=True)
        except Exception as err:  # pylint: disable=broad-except
            assert 'BUSYGROUP' in str(err)

    def send(self, request_id, path, method='GET', query=None, data=None,
             headers=None, timeout_ms=30000, entry_id='*'):
        message = messages.request(request_id, method, path, query,
                                   headers or {}, data, '127.0.0.1')
        return self.client.xadd(
            rp.requests_stream(self.pool),
            rp.encode_request(self.id, message, timeout_ms), id=entry_id)

    def poll(self):
        stream = rp.replies_stream(self.pool, self.id)
        for _name, entries in self.client.xread({stream: self._last},
                                                count=1000) or []:
            for entry_id, fields in entries:
                self._last = entry_id
                self.replies.append(rp.decode_reply(fields))
        return self.replies

    def about(self, request_id):
        """The messages about one request, in order."""
        return [message for _, message in self.poll()
                if message[1] == request_id]

    def kinds(self, request_id):
        return [message[0] for message in self.about(request_id)]

    def wait_kind(self, request_id, kind, timeout=30):
        wait_until(lambda: kind in self.kinds(request_id), timeout, 0.02,
                   lambda: f'no kind {kind} for request {request_id}: '
                   f'{self.about(request_id)}')

    def answer(self, request_id, timeout=30):
        """(status, JSON body) of the RESPONSE to `request_id`."""
        self.wait_kind(request_id, messages.RESPONSE, timeout)
        response = [m for m in self.about(request_id)
                    if m[0] == messages.RESPONSE]
        assert len(response) == 1, response
        status, wire = response[0][2], response[0][3]
        return status, json.loads(wire.split(b'\r\n\r\n', 1)[1])

    def started_by(self, request_id):
        """Consumers that sent STARTED for `request_id`."""
        return [message[2] for message in self.about(request_id)
                if message[0] == rp.STARTED]


@pytest.fixture
def dispatcher(redis_server, pool):
    return Dispatcher(redis_server[1], pool)


def pending_count(client, pool):
    """Entries delivered to some consumer, not acknowledged."""
    try:
        return client.xpending(rp.requests_stream(pool), rp.GROUP)['pending']
    except Exception:  # pylint: disable=broad-except
        return None


def alive(client, pool, host):
    return client.get(rp.alive_key(pool, host.consumer))


# -- answers -----------------------------------------------------------------

def test_answer_round_trip_started_first(hosts, dispatcher, redis_server):
    client = redis_server[1]
    host = hosts(workers=1)
    dispatcher.send(1, '/echo', query={'q': 'v'})
    status, body = dispatcher.answer(1)
    assert status == 200
    assert body['path'] == '/echo' and body['query'] == {'q': 'v'}
    assert body['pool'] == dispatcher.pool
    assert body['pid'] != host.pid     # a worker process of the host
    kinds = dispatcher.kinds(1)
    assert kinds == [rp.STARTED, messages.RESPONSE]
    consumers = {consumer for consumer, _ in dispatcher.replies}
    assert consumers == {host.consumer}
    assert dispatcher.started_by(1) == [host.consumer]
    # the host announced itself and beats
    assert host.consumer.encode() in client.smembers(
        rp.consumers_set(dispatcher.pool))
    beat = rp.decode_heartbeat(wait_until(
        lambda: alive(client, dispatcher.pool, host)))
    assert beat['pid'] == host.pid and beat['workers'] == 1
    wait_until(lambda: rp.decode_heartbeat(
        alive(client, dispatcher.pool, host))['handled'] == 1)
    assert pending_count(client, dispatcher.pool) == 0


def test_bodies_and_streams_are_relayed(hosts, dispatcher):
    hosts(workers=1)
    dispatcher.send(1, '/body', method='POST', data=b'{"a": [1, 2]}',
                    headers={'content-type': 'application/json'})
    dispatcher.send(2, '/body', method='POST', data=b'\x00raw',
                    headers={'content-type': 'application/octet-stream'})
    dispatcher.send(3, '/stream', query={'n': '3'})
    assert dispatcher.answer(1) == (200, {'body': {'a': [1, 2]},
                                          'type': 'json'})
    assert dispatcher.answer(2) == (200, {'body': '\x00raw',
                                          'type': 'bytes'})
    dispatcher.wait_kind(3, messages.STREAM_END)
    stream = dispatcher.about(3)
    assert [m[0] for m in stream] == [
        rp.STARTED, messages.STREAM_START, messages.STREAM_DATA,
        messages.STREAM_DATA, messages.STREAM_DATA, messages.STREAM_END]
    assert stream[1][2] == 200
    assert [json.loads(m[2]) for m in stream[2:5]] == [
        {'n': 0}, {'n': 1}, {'n': 2}]


def test_two_dispatchers_may_use_the_same_request_id(hosts, redis_server,
                                                     pool):
    hosts(workers=2)
    first = Dispatcher(redis_server[1], pool, 'first')
    second = Dispatcher(redis_server[1], pool, 'second')
    first.send(7, '/echo', query={'from': 'first'})
    second.send(7, '/echo', query={'from': 'second'})
    assert first.answer(7)[1]['query'] == {'from': 'first'}
    assert second.answer(7)[1]['query'] == {'from': 'second'}
    assert first.kinds(7) == [rp.STARTED, messages.RESPONSE]
    assert second.kinds(7) == [rp.STARTED, messages.RESPONSE]


# -- sharing work ----------------------------------------------------------------

def test_two_hosts_share_work_and_each_entry_runs_once(hosts, dispatcher,
                                                       tmp_path):
    one, two = hosts(workers=2), hosts(workers=2)
    one.wait_ready(2)
    two.wait_ready(2)
    flag = str(tmp_path / 'go')
    count = 12
    for request_id in range(count):
        dispatcher.send(request_id, '/wait', query={'flag': flag})
    # four workers, each held by a request until the flag exists: a host
    # takes no more than its idle workers, so each host started two (how
    # fast either host is does not matter)
    wait_until(lambda: sum(len(dispatcher.started_by(i))
                           for i in range(count)) == 4, 30)
    first = [consumer for consumer, message in dispatcher.replies
             if message[0] == rp.STARTED]
    assert sorted(first) == sorted([one.consumer] * 2 + [two.consumer] * 2)
    with open(flag, 'w', encoding='utf-8'):
        pass
    pids = {}
    for request_id in range(count):
        status, body = dispatcher.answer(request_id)
        assert status == 200 and body['flag_seen'] is True
        pids[request_id] = body['pid']
        assert dispatcher.kinds(request_id) == [rp.STARTED,
                                                messages.RESPONSE]
        assert len(dispatcher.started_by(request_id)) == 1
    by_host = {consumer for consumer, message in dispatcher.replies
               if message[0] == rp.STARTED}
    assert by_host == {one.consumer, two.consumer}
    # the four held requests ran in four worker processes
    assert len(set(pids.values())) == 4


def test_a_host_takes_only_as_many_as_it_has_idle_workers(
        hosts, dispatcher, redis_server, tmp_path):
    client = redis_server[1]
    flag = str(tmp_path / 'go')
    first = hosts(workers=1)
    first.wait_ready(1)
    for request_id in range(3):
        dispatcher.send(request_id, '/wait', query={'flag': flag})
    wait_until(lambda: sum(len(dispatcher.started_by(i))
                           for i in range(3)) == 1)
    # the other two were not even read: nothing is pending, nothing started
    assert pending_count(client, dispatcher.pool) == 0
    assert sum(len(dispatcher.started_by(i)) for i in range(3)) == 1
    second = hosts(workers=2)
    wait_until(lambda: all(dispatcher.started_by(i) for i in range(3)), 30)
    started = [dispatcher.started_by(i)[0] for i in range(3)]
    assert sorted(started) == sorted(
        [first.consumer, second.consumer, second.consumer])
    with open(flag, 'w', encoding='utf-8'):
        pass
    for request_id in range(3):
        assert dispatcher.answer(request_id)[1]['flag_seen'] is True


def test_an_entry_older_than_its_timeout_is_not_run(hosts, dispatcher,
                                                    redis_server):
    client = redis_server[1]
    host = hosts(workers=1)
    host.wait_ready(1)
    seconds, micros = client.time()
    minute_ago = int(seconds) * 1000 + int(micros) // 1000 - 60000
    dispatcher.send(1, '/echo', timeout_ms=5000,
                    entry_id=f'{minute_ago}-0')
    dispatcher.send(2, '/echo', timeout_ms=5000)
    assert dispatcher.answer(2)[0] == 200
    assert dispatcher.about(1) == []
    wait_until(lambda: 'request 1 of dispatcher d1 waited' in host.log())
    assert pending_count(client, dispatcher.pool) == 0


def test_a_malformed_entry_is_logged_and_skipped(hosts, dispatcher,
                                                 redis_server):
    client = redis_server[1]
    host = hosts(workers=1)
    stream = rp.requests_stream(dispatcher.pool)
    client.xadd(stream, {b'd': b'd1'})
    client.xadd(stream, {b'd': b'd1', b't': b'1000', b'm': b'not json'})
    client.xadd(stream, {b'd': b'd1', b't': b'1000', b'm': b'[1, "x"]'})
    client.xadd(stream, {b'd': b'd1', b't': b'1000',
                         b'm': b'[1, ' + b'[' * 100000 + b']' * 100000 + b']'})
    dispatcher.send(5, '/echo')
    assert dispatcher.answer(5)[0] == 200
    assert host.log().count('is malformed, dropped') == 4
    assert pending_count(client, dispatcher.pool) == 0
    assert host.process.poll() is None


# -- faults ----------------------------------------------------------------------

def test_a_worker_that_dies_mid_request_gives_lost(hosts, dispatcher):
    host = hosts(workers=1)
    dispatcher.send(1, '/crash')
    dispatcher.wait_kind(1, rp.LOST)
    about = dispatcher.about(1)
    assert [m[0] for m in about] == [rp.STARTED, rp.LOST]
    assert about[1][2].startswith(f'worker {dispatcher.pool}[0] (pid ')
    # the worker is replaced and the host serves on
    dispatcher.send(2, '/echo')
    assert dispatcher.answer(2)[0] == 200
    wait_until(lambda: 'exited with code 1; 1 requests lost' in host.log())
    assert host.process.poll() is None


def test_sigkill_of_a_host_leaves_its_unstarted_entry_to_another(
        hosts, dispatcher, redis_server):
    client = redis_server[1]
    victim = hosts(workers=1)
    victim.wait_ready(1)
    # stopped while its reader waits in XREADGROUP (the only client of
    # this Redis blocked in one): Redis still delivers the entry to it,
    # which never starts it
    wait_until(lambda: any(
        c['cmd'] == 'xreadgroup' and 'b' in c['flags']
        for c in client.client_list()))
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        dispatcher.send(1, '/echo')
        wait_until(lambda: pending_count(client, dispatcher.pool) == 1, 10)
        consumers = client.xpending(rp.requests_stream(dispatcher.pool),
                                    rp.GROUP)['consumers']
        assert [c['name'] for c in consumers] == [victim.consumer.encode()]
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait(10)
    wait_until(lambda: alive(client, dispatcher.pool, victim) is None,
               rp.ALIVE_TTL_MS / 1000 + 10)
    heir = hosts(workers=1)
    # claimed once idle for CLAIM_IDLE_MS, then run once
    status, _ = dispatcher.answer(1, timeout=rp.CLAIM_IDLE_MS / 1000 + 20)
    assert status == 200
    assert dispatcher.started_by(1) == [heir.consumer]
    assert dispatcher.kinds(1) == [rp.STARTED, messages.RESPONSE]
    assert pending_count(client, dispatcher.pool) == 0


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_finishes_started_requests_and_leaves(hosts, dispatcher,
                                                      redis_server,
                                                      tmp_path, signum):
    client = redis_server[1]
    marks = tmp_path / 'marks'
    marks.mkdir()
    flag = str(tmp_path / 'go')
    host = hosts(workers=1, env={'REMOTE_APP_MARKS': str(marks)})
    dispatcher.send(1, '/wait', query={'flag': flag})
    dispatcher.wait_kind(1, rp.STARTED)
    host.process.send_signal(signum)
    wait_until(lambda: 'stopping: finishing 1 started requests'
               in host.log())
    assert host.process.poll() is None     # it waits for the request
    with open(flag, 'w', encoding='utf-8'):
        pass
    status, body = dispatcher.answer(1)
    assert status == 200 and body['flag_seen'] is True
    assert host.process.wait(20) == 0
    assert alive(client, dispatcher.pool, host) is None
    assert host.consumer.encode() not in client.smembers(
        rp.consumers_set(dispatcher.pool))
    # nothing was pending for it: it left the group too
    assert host.consumer.encode() not in [
        c['name'] for c in client.xinfo_consumers(
            rp.requests_stream(dispatcher.pool), rp.GROUP)]
    # teardown() ran in the worker process
    setups = {name[len('setup-'):] for name in os.listdir(marks)
              if name.startswith('setup-')}
    teardowns = {name[len('teardown-'):] for name in os.listdir(marks)
                 if name.startswith('teardown-')}
    assert setups and setups == teardowns


def test_sigterm_before_the_worker_read_its_request_still_runs_it(
        hosts, dispatcher, redis_server):
    client = redis_server[1]
    host = hosts(workers=1)
    host.wait_ready(1)
    worker_pid = int(re.search(r' ready \(pid (\d+)\)', host.log()).group(1))
    # the worker is frozen: the request the host gives it stays unread in
    # its channel (as on a loaded machine, between STARTED and its read)
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        dispatcher.send(1, '/echo')
        dispatcher.wait_kind(1, rp.STARTED)
        host.process.send_signal(signal.SIGTERM)
        wait_until(lambda: 'stopping: finishing 1 started requests'
                   in host.log())
    finally:
        os.kill(worker_pid, signal.SIGCONT)
    # started here, so only here can it run: it is not handed back LOST
    status, body = dispatcher.answer(1)
    assert status == 200 and body['pid'] == worker_pid
    assert dispatcher.kinds(1) == [rp.STARTED, messages.RESPONSE]
    assert host.process.wait(20) == 0
    assert alive(client, dispatcher.pool, host) is None


@pytest.mark.parametrize('how', ['second signal', 'graceful timeout'])
def test_a_request_that_does_not_finish_in_time_is_lost_at_stop(
        hosts, dispatcher, redis_server, tmp_path, how):
    client = redis_server[1]
    never = str(tmp_path / 'never-created')
    extra = ('--graceful-timeout', '1') if how == 'graceful timeout' else ()
    host = hosts(workers=1, extra=extra)
    dispatcher.send(1, '/wait', query={'flag': never})
    dispatcher.wait_kind(1, rp.STARTED)
    host.process.send_signal(signal.SIGTERM)
    wait_until(lambda: 'stopping: finishing 1 started requests'
               in host.log())
    if how == 'second signal':
        host.process.send_signal(signal.SIGTERM)
    dispatcher.wait_kind(1, rp.LOST)
    assert dispatcher.kinds(1) == [rp.STARTED, rp.LOST]
    assert host.process.wait(20) == 0
    assert alive(client, dispatcher.pool, host) is None
    if how == 'second signal':
        assert 'second signal: killing the workers' in host.log()
    else:
        assert 'did not exit in time: SIGKILL' in host.log()


def test_a_redis_restart_under_a_running_host(hosts, pool, tmp_path):
    binary = shutil.which('redis-server')
    if binary is None:
        pytest.skip(WHY)
    redis = pytest.importorskip('redis')
    (tmp_path / 'first').mkdir()
    with running_redis(tmp_path / 'first', WHY) as (url, client):
        port = client.connection_pool.connection_kwargs['port']
        dispatcher = Dispatcher(client, pool)
        host = hosts(workers=1, url=url)
        dispatcher.send(1, '/echo')
        assert dispatcher.answer(1)[0] == 200
        # one request runs on while Redis is away: its answer waits
        flag = str(tmp_path / 'go')
        dispatcher.send(3, '/wait', query={'flag': flag})
        dispatcher.wait_kind(3, rp.STARTED)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass    # the server closed the connection as it exited
        wait_until(lambda: 'lost Redis' in host.log(), 20)
        with open(flag, 'w', encoding='utf-8'):
            pass
        assert host.process.poll() is None
        (tmp_path / 'second').mkdir()
        second = subprocess.Popen(  # pylint: disable=consider-using-with
            [binary, '--port', str(port), '--bind', '127.0.0.1', '--save',
             '', '--appendonly', 'no', '--dir', str(tmp_path / 'second')],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            fresh = redis.Redis(host='127.0.0.1', port=port)
            # the host joins again: its group, its set entry, its beat
            wait_until(lambda: _group_exists(fresh, pool), 30)
            wait_until(lambda: alive(fresh, pool, host), 30)
            again = Dispatcher(fresh, pool)
            # the answer given while Redis was away is delivered now
            status, body = again.answer(3)
            assert status == 200 and body['flag_seen'] is True
            again.send(2, '/echo')
            assert again.answer(2)[0] == 200
            assert 'is back' in host.log()
            fresh.close()
        finally:
            second.terminate()
            second.wait(10)


def _group_exists(client, pool):
    try:
        groups = client.xinfo_groups(rp.requests_stream(pool))
    except Exception:  # pylint: disable=broad-except
        return False
    return any(group['name'] == rp.GROUP.encode() for group in groups)


def test_workers_that_never_start_end_the_host_with_status_1(hosts):
    host = hosts(workers=2, env={'REMOTE_APP_FAIL_SETUP': '1'})
    assert host.process.wait(30) == 1
    log = host.log()
    assert 'setup fails on purpose' in log
    assert 'all 2 workers failed at start-up' in log


# -- the command line -----------------------------------------------------------

def run_worker_cli(*args, env=None, timeout=30):
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith('UHTTP_WORKERS_')}
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, '-m', 'uhttp.workers', 'worker', *args], cwd=APPS,
        env=environ, capture_output=True, text=True, timeout=timeout,
        check=False)
    return result.returncode, result.stdout, result.stderr


def test_worker_help_documents_the_options():
    code, out, _ = run_worker_cli('--help')
    assert code == 0
    for option in ('--redis URL', '--pool NAME', '--workers N',
                   '--log-level LEVEL', '--app-dir DIR',
                   '--graceful-timeout SECONDS', '--consumer NAME',
                   'MODULE:WORKER'):
        assert option in out


def test_unreachable_redis_at_start_is_one_line_and_status_1():
    pytest.importorskip('redis')
    port = free_port()
    code, _, err = run_worker_cli('remote_app:RemoteApp', '--redis',
                                  f'redis://127.0.0.1:{port}/0')
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'cannot reach Redis' in lines[0], err


def test_missing_redis_package_is_one_line_and_status_1(tmp_path):
    (tmp_path / 'redis.py').write_text(
        "raise ImportError('no redis package here')\n")
    code, _, err = run_worker_cli(
        'remote_app:RemoteApp', '--redis', 'redis://127.0.0.1:1/0',
        env={'PYTHONPATH': str(tmp_path)})
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'pip install redis' in lines[0], err


def test_not_a_worker_class_is_refused():
    pytest.importorskip('redis')
    code, _, err = run_worker_cli('remote_app:LONGEST_WAIT', '--redis',
                                  'redis://127.0.0.1:1/0')
    assert code == 1 and 'not a Worker subclass' in err


# -- Redis refusing commands, starts without an answer -------------------------

# how redis-py words an OOM error reply
OOM = "refused a command: Command # 1 (SET uhttp:"


def _own_redis(tmp_path, name):
    (tmp_path / name).mkdir()
    return running_redis(tmp_path / name, WHY)


def test_an_error_reply_from_redis_does_not_end_the_host(hosts, pool,
                                                         tmp_path):
    with _own_redis(tmp_path, 'oom') as (url, client):
        dispatcher = Dispatcher(client, pool)
        host = hosts(workers=1, url=url)
        flag = str(tmp_path / 'go')
        dispatcher.send(1, '/wait', query={'flag': flag})
        dispatcher.wait_kind(1, rp.STARTED)
        # every write is refused now (OOM), the heartbeat first
        client.config_set('maxmemory', 1)
        try:
            wait_until(lambda: OOM in host.log(), 20,
                       message=host.log)
            with open(flag, 'w', encoding='utf-8'):
                pass
            # the answer cannot be added yet; the host runs on
            assert host.process.poll() is None
        finally:
            client.config_set('maxmemory', 0)
        status, body = dispatcher.answer(1)
        assert status == 200 and body['flag_seen'] is True
        wait_until(lambda: 'is back' in host.log())
        dispatcher.send(2, '/echo')
        assert dispatcher.answer(2)[0] == 200
        assert host.process.poll() is None
        assert host.log().count('refused a command') == 1    # said once
        host.stop()
        assert host.process.returncode == 0
        assert 'Traceback' not in host.log()


def test_replies_finished_while_stopping_are_sent_once_redis_accepts(
        hosts, pool, tmp_path):
    with _own_redis(tmp_path, 'stop') as (url, client):
        dispatcher = Dispatcher(client, pool)
        host = hosts(workers=1, url=url)
        flag = str(tmp_path / 'go')
        dispatcher.send(1, '/wait', query={'flag': flag})
        dispatcher.wait_kind(1, rp.STARTED)
        client.config_set('maxmemory', 1)
        try:
            wait_until(lambda: OOM in host.log(), 20,
                       message=host.log)
            host.process.send_signal(signal.SIGTERM)
            wait_until(lambda: 'stopping: finishing 1 started requests'
                       in host.log())
            with open(flag, 'w', encoding='utf-8'):
                pass
            # the worker answered and exited; the answer waits for Redis
            wait_until(lambda: f'worker {pool}[0] (pid ' in host.log()
                       and ') stopped' in host.log(), 20, message=host.log)
            assert host.process.poll() is None
        finally:
            client.config_set('maxmemory', 0)
        status, body = dispatcher.answer(1)
        assert status == 200 and body['flag_seen'] is True
        assert host.process.wait(20) == 0
        assert 'replies could not be sent' not in host.log()


def _start_link(url, pool, consumer):
    records = []
    link = RedisLink(url, pool, consumer,
                     lambda level, text: records.append((level, text)))
    link.connect()
    return link, records


def test_a_start_run_again_after_a_lost_answer_runs_once(redis_server,
                                                         pool):
    url, client = redis_server
    dispatcher = Dispatcher(client, pool)
    link, _ = _start_link(url, pool, 'one')
    other, _ = _start_link(url, pool, 'two')
    try:
        entry = dispatcher.send(1, '/echo')
        client.xreadgroup(rp.GROUP, 'one',
                          {rp.requests_stream(pool): '>'})
        start = [(entry, dispatcher.id, 1)]
        assert link.start(start) == [True]
        # the same start again (its answer was lost): still ours, and
        # STARTED is not added twice
        assert link.start(start) == [True]
        # no other consumer ever wins it
        assert other.start(start) == [False]
        assert dispatcher.kinds(1) == [rp.STARTED]
        assert pending_count(client, pool) == 0
        assert client.get(rp.started_key(pool, entry)) == b'one'
        assert 0 < client.pttl(rp.started_key(pool, entry)) \
            <= rp.STARTED_TTL_MS
        replies = client.xrange(rp.replies_stream(pool, dispatcher.id))
        assert [rp.decode_reply_seq(fields)[2]
                for _, fields in replies] == [0]
    finally:
        link.close()
        other.close()


def test_a_start_refused_by_redis_is_uncertain_and_the_link_down(
        redis_server, pool):
    url, client = redis_server
    dispatcher = Dispatcher(client, pool)
    link, records = _start_link(url, pool, 'one')
    try:
        entry = dispatcher.send(1, '/echo')
        client.xreadgroup(rp.GROUP, 'one', {rp.requests_stream(pool): '>'})
        # the stream is gone, a string in its place: XACK fails (WRONGTYPE)
        client.delete(rp.requests_stream(pool))
        client.set(rp.requests_stream(pool), b'not a stream')
        assert link.start([(entry, dispatcher.id, 1)]) == [None]
        assert not link.up
        assert any('WRONGTYPE' in text for _, text in records)
        with pytest.raises(RedisDown):
            link.connect()
        # once the key is free again, joining re-creates the group
        client.delete(rp.requests_stream(pool))
        link.connect()
        assert link.up
        assert _group_exists(client, pool)
    finally:
        link.close()


# -- consumer names, stops, dead consumers, sequence numbers ----------------------

def test_consumer_names_are_unique_per_process(hosts, dispatcher):
    one, two = hosts(workers=1), hosts(workers=1)
    pattern = re.escape(socket.gethostname()) + r':(\d+):[0-9a-f]{6}'
    for host in (one, two):
        match = re.fullmatch(pattern, host.consumer)
        assert match and int(match.group(1)) == host.pid
    assert one.consumer != two.consumer


def test_a_consumer_name_may_be_given(hosts, dispatcher, redis_server):
    host = hosts(workers=1, extra=('--consumer', 'rack-3'))
    assert host.consumer == 'rack-3'
    dispatcher.send(1, '/echo')
    assert dispatcher.answer(1)[0] == 200
    assert dispatcher.started_by(1) == ['rack-3']
    assert alive(redis_server[1], dispatcher.pool, host) is not None


def test_a_stopping_host_releases_entries_it_did_not_start(
        hosts, dispatcher, redis_server):
    client = redis_server[1]
    victim = hosts(workers=1)
    victim.wait_ready(1)
    consumer = victim.consumer
    wait_until(lambda: any(
        c['cmd'] == 'xreadgroup' and 'b' in c['flags']
        for c in client.client_list()))
    # stopped in its blocking read: Redis delivers the entry to it
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        dispatcher.send(1, '/echo')
        wait_until(lambda: pending_count(client, dispatcher.pool) == 1, 10)
        victim.process.send_signal(signal.SIGTERM)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    assert victim.process.wait(20) == 0
    assert 'released 1 entries read but not started' in victim.log()
    # still pending for it, but claimable at once: idle CLAIM_IDLE_MS
    [entry] = client.xpending_range(rp.requests_stream(dispatcher.pool),
                                    rp.GROUP, '-', '+', 10)
    assert entry['consumer'] == consumer.encode()
    assert entry['time_since_delivered'] >= rp.CLAIM_IDLE_MS
    heir = hosts(workers=1)
    assert dispatcher.answer(1)[0] == 200
    assert dispatcher.started_by(1) == [heir.consumer]


def test_two_hosts_one_stopping_every_request_is_answered(
        hosts, dispatcher, tmp_path):
    stays, leaves = hosts(workers=2), hosts(workers=2)
    stays.wait_ready(2)
    leaves.wait_ready(2)
    count = 30
    for request_id in range(count // 2):
        dispatcher.send(request_id, '/slow', query={'s': '0.05'})
    leaves.process.send_signal(signal.SIGTERM)
    for request_id in range(count // 2, count):
        dispatcher.send(request_id, '/slow', query={'s': '0.05'})
    assert leaves.process.wait(20) == 0
    for request_id in range(count):
        assert dispatcher.answer(request_id)[0] == 200
        # started once, answered, never LOST (none was cut by the stop)
        assert dispatcher.kinds(request_id) == [rp.STARTED,
                                                messages.RESPONSE]
    # the leaving host counts the signal before its loop does anything
    # more, so it starts none of the entries added after it: those it
    # read are released, and the host that stays runs them all
    late = {dispatcher.started_by(i)[0] for i in range(count // 2, count)}
    assert late == {stays.consumer}


def test_dead_consumers_are_forgotten(hosts, dispatcher, redis_server):
    client = redis_server[1]
    pool = dispatcher.pool
    stream = rp.requests_stream(pool)
    client.sadd(rp.consumers_set(pool), 'ghost-idle', 'ghost-owing')
    client.xgroup_createconsumer(stream, rp.GROUP, 'ghost-idle')
    dispatcher.send(1, '/echo')
    # delivered to a consumer that never beat: it owes the entry
    client.xreadgroup(rp.GROUP, 'ghost-owing', {stream: '>'}, count=1)
    host = hosts(workers=1)

    def group():
        return {c['name'] for c in client.xinfo_consumers(stream, rp.GROUP)}
    wait_until(lambda: client.smembers(rp.consumers_set(pool))
               == {host.consumer.encode()}, 20)
    wait_until(lambda: b'ghost-idle' not in group(), 20)
    assert 'forgot dead consumers' in host.log()
    # the owing one stays in the group until its entry is claimed
    status, _ = dispatcher.answer(1, timeout=rp.CLAIM_IDLE_MS / 1000 + 20)
    assert status == 200
    wait_until(lambda: b'ghost-owing' not in group(), 20)


def test_replies_carry_a_sequence_number_per_request(hosts, dispatcher,
                                                     redis_server):
    client = redis_server[1]
    hosts(workers=1)
    dispatcher.send(3, '/stream', query={'n': '3'})
    dispatcher.wait_kind(3, messages.STREAM_END)
    replies = [rp.decode_reply_seq(fields) for _, fields in client.xrange(
        rp.replies_stream(dispatcher.pool, dispatcher.id))]
    assert [(m[0], seq) for _, m, seq in replies if m[1] == 3] == [
        (rp.STARTED, 0), (messages.STREAM_START, 1),
        (messages.STREAM_DATA, 2), (messages.STREAM_DATA, 3),
        (messages.STREAM_DATA, 4), (messages.STREAM_END, 5)]


def test_reply_sequence_numbers_in_the_protocol():
    message = rp.lost(4, 'gone')
    assert rp.decode_reply_seq(rp.encode_reply('c', message)) == (
        'c', message, None)
    fields = rp.encode_reply('c', rp.lost(4, 'gone'), seq=7)
    assert fields[rp.FIELD_SEQ] == b'7'
    assert rp.decode_reply_seq(fields) == ('c', rp.lost(4, 'gone'), 7)
    # callers that know no sequence numbers read the same reply
    assert rp.decode_reply(fields) == ('c', rp.lost(4, 'gone'))
    with pytest.raises(rp.ProtocolError):
        rp.decode_reply_seq({**fields, rp.FIELD_SEQ: b'x'})


def test_redis_refusing_the_join_at_start_is_one_line_and_status_1(
        redis_server, pool):
    url, client = redis_server
    # the requests key is not a stream: creating the group is refused
    client.set(rp.requests_stream(pool), b'not a stream')
    code, _, err = run_worker_cli('remote_app:RemoteApp', '--redis', url,
                                  '--pool', pool, '--workers', '1')
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'WRONGTYPE' in lines[0], err
    assert 'Traceback' not in err
