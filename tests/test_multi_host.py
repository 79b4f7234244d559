"""Several instances of one service behind a real haproxy, coordinated
through a real Redis: the deployment of examples/multi_host/.

Two dispatchers (examples/multi_host/app.py) listen on two ports of
127.0.0.1 and stand for two hosts; haproxy, started here in the
foreground with the example's haproxy.cfg, health-checks `GET /health`
on each and spreads the requests. Its runtime API (a Unix socket) tells
the state of each server and drains one. A client thread sends requests
through haproxy all along and records every failure.
"""

import csv
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import ROOT, Server, free_port, pid_alive, running_redis, \
    wait_until

EXAMPLE = os.path.join(ROOT, 'examples', 'multi_host')
APP = os.path.join(EXAMPLE, 'app.py')
CONFIG = os.path.join(EXAMPLE, 'haproxy.cfg')
TTL = 3.0   # of the Redis job lock and primary key: a quick failover
LOAD_LIMIT = 4000       # requests of one load run, at most
LOAD_SECONDS = 40.0     # and for this long at most

pytestmark = pytest.mark.timeout(90)


# -- the pieces ----------------------------------------------------------------

def haproxy_binary():
    """The path of haproxy; skips the test when it is not installed."""
    binary = shutil.which('haproxy')
    if binary is None:
        pytest.skip('haproxy is not installed (apt-get install haproxy): '
                    'the multi-host tests need a real balancer')
    return binary


class Haproxy:
    """haproxy in the foreground (-db) with the example's configuration."""

    def __init__(self, directory, servers):
        binary = haproxy_binary()
        self.port = free_port()
        self.socket_path = str(directory / 'haproxy.sock')
        env = dict(os.environ, HAPROXY_BIND=f'127.0.0.1:{self.port}',
                   HAPROXY_SOCKET=self.socket_path,
                   APP_A=f'127.0.0.1:{servers["a"]}',
                   APP_B=f'127.0.0.1:{servers["b"]}')
        self.output = directory / 'haproxy.log'
        with open(self.output, 'wb') as output:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [binary, '-db', '-f', CONFIG], env=env, stdout=output,
                stderr=subprocess.STDOUT)
        wait_until(self._answers, 10, interval=0.05,
                   message=lambda: f'haproxy did not start:\n{self.log()}')

    def log(self):
        return self.output.read_text(errors='replace')

    def _answers(self):
        assert self.proc.poll() is None, f'haproxy exited:\n{self.log()}'
        try:
            return 'app' in self.command('show stat')
        except OSError:
            return False

    def command(self, line):
        """One command of the runtime API; its whole answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket_path)
            sock.sendall(line.encode() + b'\n')
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b''.join(chunks).decode()

    def stat(self, server):
        """The `show stat` row of backend server `server` (a dict)."""
        text = self.command('show stat').lstrip('# ')
        for row in csv.DictReader(io.StringIO(text)):
            if row['pxname'] == 'app' and row['svname'] == server:
                return row
        raise AssertionError(f'no server {server} in:\n{text}')

    def status(self, server):
        """UP, DOWN, DRAIN, MAINT, or a transition such as 'UP 1/2'."""
        return self.stat(server)['status']

    def wait_status(self, server, status, timeout=15):
        wait_until(lambda: self.status(server) == status, timeout,
                   interval=0.05, message=lambda: (
                       f'{server} is {self.status(server)}, not {status}'))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Deployment:
    """Redis, instances 'a' and 'b' of the example app, haproxy."""

    def __init__(self, directory, redis_url, redis_client):
        self.directory = directory
        self.redis_url = redis_url
        self.redis = redis_client
        self.ports = {'a': free_port(), 'b': free_port()}
        self.instances = {}
        self.stopped = []       # instances replaced by a restart
        self.haproxy = None

    def start_all(self):
        """Both instances, then haproxy; wait until it sees both UP."""
        for name in self.ports:
            self.start(name)
        self.haproxy = Haproxy(self.directory, self.ports)
        for name in self.ports:
            self.haproxy.wait_status(name, 'UP')

    def start(self, name):
        """Start instance `name` on its port; wait for its workers."""
        server = Server(APP, env={
            'INSTANCE': name, 'PORT': str(self.ports[name]),
            'REDIS_URL': self.redis_url, 'PRIMARY_TTL': str(TTL),
            'JOB_TTL': str(TTL)})
        self.instances[name] = server
        return server.start(ready_workers=2)

    def restart(self, name):
        """SIGTERM instance `name`, wait for its exit, start it again."""
        server = self.instances[name]
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0, server.log
        self.stopped.append(server)
        return self.start(name)

    def get(self, path, timeout=10):
        """GET through haproxy on a new connection: (status, JSON or None)."""
        connection = http.client.HTTPConnection(
            '127.0.0.1', self.haproxy.port, timeout=timeout)
        try:
            connection.request('GET', path)
            answer = connection.getresponse()
            body = answer.read()
            is_json = answer.getheader('content-type', '').startswith(
                'application/json')
            return answer.status, (json.loads(body) if is_json else body)
        finally:
            connection.close()

    def stop(self):
        if self.haproxy is not None:
            self.haproxy.stop()
        for server in [*self.instances.values(), *self.stopped]:
            server.stop()


class Load(threading.Thread):
    """Sends GET /api/hello through haproxy until stopped (or LOAD_LIMIT
    requests, or LOAD_SECONDS): ten on each keep-alive connection, then a
    new connection. Records the instance of every answer and every
    failure (an error status, a broken or refused connection)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.answers = []       # (sequence number, instance)
        self.failures = []      # (sequence number, what happened)
        self._stop_event = threading.Event()
        self.hit_limit = False

    def run(self):
        deadline = time.monotonic() + LOAD_SECONDS
        connection = None
        for number in range(LOAD_LIMIT):
            if self._stop_event.is_set():
                break
            if time.monotonic() > deadline:
                self.hit_limit = True
                break
            if connection is None or number % 10 == 0:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection(
                    '127.0.0.1', self.port, timeout=10)
            try:
                connection.request('GET', '/api/hello')
                answer = connection.getresponse()
                body = answer.read()
                if answer.status != 200:
                    self.failures.append((number, answer.status, body))
                else:
                    self.answers.append((number, json.loads(body)['instance']))
                if answer.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as err:
                self.failures.append((number, repr(err)))
                connection.close()
                connection = None
            time.sleep(0.002)
        else:
            self.hit_limit = True
        if connection is not None:
            connection.close()

    def served_by(self, after=0):
        """The instances that answered requests numbered `after` or more."""
        return {instance for number, instance in self.answers
                if number >= after}

    def count(self):
        return len(self.answers) + len(self.failures)

    def finish(self):
        self._stop_event.set()
        self.join(15)
        assert not self.is_alive()


@pytest.fixture
def deployment(tmp_path):
    """The whole deployment, started; everything stopped at the end."""
    haproxy_binary()    # skip before anything starts
    with running_redis(tmp_path, 'redis-server is not installed: the '
                       'multi-host tests coordinate through Redis') as (
                           url, client):
        setup = Deployment(tmp_path, url, client)
        try:
            setup.start_all()
            yield setup
        finally:
            setup.stop()


def instances_answering(deployment, count=20):
    """Who answers `count` GETs through haproxy, each on a new connection:
    the set of (instance, port) named in the answers."""
    seen = set()
    for _ in range(count):
        status, answer = deployment.get('/api/hello')
        assert status == 200, (status, answer)
        seen.add((answer['instance'], answer['port']))
    return seen


def redis_list(client, what):
    """The Redis list KEY_PREFIX:<what> the example app writes, decoded."""
    return [item.decode() for item in client.lrange(f'multi-host:{what}',
                                                    0, -1)]


# -- balancing and health checks --------------------------------------------------

def test_requests_through_haproxy_reach_both_instances(deployment):
    ports = deployment.ports
    assert instances_answering(deployment) == {
        ('a', ports['a']), ('b', ports['b'])}
    status, health = deployment.get('/health')
    assert status == 200 and health['status'] == 'ok'


def test_a_stopped_instance_is_marked_down_and_the_other_serves(deployment):
    haproxy, frozen = deployment.haproxy, deployment.instances['a']
    frozen.signal(signal.SIGSTOP)
    try:
        # its kernel still accepts connections: the check times out
        haproxy.wait_status('a', 'DOWN')
        assert haproxy.status('b') == 'UP'
        assert instances_answering(deployment) == {('b', deployment.ports['b'])}
    finally:
        frozen.signal(signal.SIGCONT)
    haproxy.wait_status('a', 'UP')
    wait_until(lambda: len(instances_answering(deployment, 6)) == 2, 10)


def test_a_killed_instance_is_marked_down_and_up_again_when_restarted(
        deployment):
    haproxy, killed = deployment.haproxy, deployment.instances['a']
    killed.signal(signal.SIGKILL)
    killed.wait_exit(10)
    haproxy.wait_status('a', 'DOWN')
    assert instances_answering(deployment) == {('b', deployment.ports['b'])}
    deployment.stopped.append(killed)
    deployment.start('a')
    haproxy.wait_status('a', 'UP')
    wait_until(lambda: len(instances_answering(deployment, 6)) == 2, 10)


# -- restarts under load --------------------------------------------------------

def restart_under_load(deployment, drain):
    """Restart 'a' then 'b' while a client sends requests through haproxy;
    with `drain`, each instance is drained in haproxy first and set ready
    once it is up again. Returns the Load, finished."""
    haproxy = deployment.haproxy
    load = Load(haproxy.port)
    load.start()
    try:
        wait_until(lambda: len(load.answers) >= 100, 20)
        for name in ('a', 'b'):
            if drain:
                haproxy.command(f'set server app/{name} state drain')
                haproxy.wait_status(name, 'DRAIN')
                # no request of the balancer in progress there any more
                wait_until(lambda: haproxy.stat(name)['scur'] == '0', 10)
            deployment.restart(name)
            # checked up again (while drained, haproxy calls that DRAIN)
            haproxy.wait_status(name, 'DRAIN' if drain else 'UP')
            if drain:
                haproxy.command(f'set server app/{name} state ready')
                haproxy.wait_status(name, 'UP')
            mark = load.count()
            wait_until(lambda: name in load.served_by(after=mark), 10,
                       message=f'{name} serves nothing after its restart')
        mark = load.count()
        wait_until(lambda: load.served_by(after=mark) == {'a', 'b'}, 10)
    finally:
        load.finish()
    assert not load.hit_limit, 'the load ended before the restarts did'
    return load


def test_rolling_restart_with_drain_fails_no_request(deployment):
    load = restart_under_load(deployment, drain=True)
    assert load.failures == []
    assert len(load.answers) >= 100
    # two new instances: the run-once job still ran once in all
    assert len(redis_list(deployment.redis, 'migrations')) == 1


def test_plain_sigterm_without_drain_fails_no_request(deployment):
    # the instance closes its idle keep-alive connections as its shutdown
    # begins and refuses new ones: haproxy retries elsewhere
    # (retries, option redispatch, retry-on conn-failure empty-response)
    load = restart_under_load(deployment, drain=False)
    assert load.failures == []
    assert len(load.answers) >= 100


def test_idle_keep_alive_connections_close_when_the_shutdown_begins(
        start_server, tmp_path):
    server = start_server('lifecycle_app.py', ready_workers=2, env={
        'EVENTS': str(tmp_path / 'events')})
    idle = http.client.HTTPConnection('127.0.0.1', server.port, timeout=10)
    busy = http.client.HTTPConnection('127.0.0.1', server.port, timeout=20)
    try:
        idle.request('GET', '/api/pid')
        first = idle.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        busy.request('GET', '/api/nap/5')   # keeps the drain going
        wait_until(lambda: 'nap_started' in read_text(tmp_path / 'events'),
                   10)
        server.signal(signal.SIGTERM)
        server.wait_log(r'draining 1 pending')
        # a request sent on the idle connection now gets no 503: the
        # connection was closed, before any byte of an answer
        with pytest.raises((http.client.RemoteDisconnected,
                            ConnectionError)):
            idle.request('GET', '/api/pid')
            idle.getresponse()
        # the request in progress is answered, and its connection closed
        answer = busy.getresponse()
        assert answer.status == 200 and answer.will_close
        assert answer.read()
        assert server.wait_exit(20) == 0
    finally:
        idle.close()
        busy.close()


def read_text(path):
    try:
        return path.read_text()
    except FileNotFoundError:
        return ''


# -- what must happen once: through Redis -------------------------------------------

def test_run_once_job_and_primary_worker_across_instances(deployment):
    client = deployment.redis
    migrations = wait_until(lambda: redis_list(client, 'migrations'), 15)
    promotions = wait_until(lambda: redis_list(client, 'promotions'), 15)
    assert len(migrations) == 1, migrations
    assert len(promotions) == 1, promotions
    holder, primary_pid = promotions[0].split()
    primary_pid = int(primary_pid)
    # every worker that says it is primary is that one
    for _ in range(30):
        _, answer = deployment.get('/api/hello')
        assert answer['primary'] == (answer['pid'] == primary_pid), answer
    # the instance of the primary dies (its workers go with it): a worker of
    # the other one takes over when the Redis key expires
    dead = deployment.instances[holder]
    dead.signal(signal.SIGKILL)
    dead.wait_exit(10)
    wait_until(lambda: not pid_alive(primary_pid), 10)
    other = 'b' if holder == 'a' else 'a'
    promotions = wait_until(
        lambda: len(redis_list(client, 'promotions')) > 1
        and redis_list(client, 'promotions'), 20)
    assert len(promotions) == 2, promotions
    assert promotions[1].split()[0] == other
    new_pid = int(promotions[1].split()[1])
    for _ in range(10):
        status, answer = deployment.get('/api/hello')
        assert status == 200 and answer['instance'] == other
        assert answer['primary'] == (answer['pid'] == new_pid), answer
    # the job lock went over too, and the job ran once in all
    survivor = deployment.instances[other]
    survivor.wait_log(r'holds lock .*multi-host:jobs', timeout=20)
    assert redis_list(client, 'migrations') == migrations
