"""Code written for singleserver 0.4 runs on uhttp.workers with its import
changed: SingleServer, ServerClient, ServerNotReady, SocketLock, LockFile
used as singleserver's documentation and tests use them (real processes,
real sockets)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

from conftest import pid_alive, wait_until
from test_service import free_port
from uhttp.workers import (LockFile, ServerClient, ServerNotReady,
                           ServiceError, ServiceUnavailable, SingleServer,
                           SocketLock)
from uhttp.workers.service import Service, default_lock_port

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'apps')
SERVER = os.path.join(APPS, 'compat_server.py')
PEER = os.path.join(APPS, 'compat_peer.py')


def tcp_command():
    return [sys.executable, SERVER, '--host', '{host}', '--port', '{port}']


def make_server(port=None, **options):
    options.setdefault('health_check_url', '/health')
    options.setdefault('startup_timeout', 15)
    options.setdefault('shutdown_timeout', 5)
    if 'socket' in options:
        command = [sys.executable, SERVER, '--socket', '{socket}']
    else:
        command = tcp_command()
        port = free_port() if port is None else port
    return SingleServer(name='compat', command=command, port=port, **options)


@pytest.fixture
def servers():
    """SingleServers made by a test, disconnected at its end."""
    made = []

    def make(*args, **kwargs):
        server = make_server(*args, **kwargs)
        made.append(server)
        return server
    yield make
    for server in made:
        server.disconnect()


def free_high_port():
    """A free port above 55535 whose port - 10000 is free too (the lock)."""
    for _ in range(200):
        port = random.randint(55536, 65535)
        try:
            for candidate in (port, port - 10000):
                with socket.socket() as sock:
                    sock.bind(('127.0.0.1', candidate))
        except OSError:
            continue
        return port
    raise AssertionError('no free port above 55535')


class Peer:
    """A compat_peer.py process sharing the server on `port`."""

    def __init__(self, port):
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, PEER, str(port)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)

    def answer(self):
        line = self.proc.stdout.readline()
        assert line, 'the peer exited without answering'
        return json.loads(line)

    def leave(self):
        self.proc.stdin.close()
        self.proc.wait(20)


# -- 1. responses and the client's request methods ---------------------------

def test_responses_are_requests_like(servers):
    with servers() as client:
        response = client.get('/data.json')
        assert response.status_code == 200 and response.ok
        assert response.json()['path'] == '/data.json'
        assert response.content == response.text.encode()
        assert response.headers['Content-Type'].startswith('application/json')
        assert response.headers.get('x-echo-method') == 'GET'
        assert 'CONTENT-TYPE' in response.headers
        assert response.encoding == 'utf-8'
        response.raise_for_status()
        # the project's own names stay
        assert response.status == 200 and response.body == response.content

        missing = client.get('/status/404')
        assert missing.status_code == 404 and not missing.ok
        with pytest.raises(ServiceError) as caught:
            missing.raise_for_status()
        assert caught.value.response is missing
        assert '404 Client Error' in str(caught.value)
        with pytest.raises(ServiceError, match='503 Server Error'):
            client.get('/status/503').raise_for_status()


def test_every_method_and_the_requests_keywords(servers):
    with servers() as client:
        put = client.put('/item', json={'a': 1}).json()
        assert (put['method'], put['body'], put['content_type']) == (
            'PUT', '{"a": 1}', 'application/json')
        assert client.delete('/item/3').json()['method'] == 'DELETE'
        assert client.patch('/item', data=b'raw').json()['body'] == 'raw'
        head = client.head('/')
        assert head.status_code == 200 and head.content == b''
        assert head.headers['x-echo-method'] == 'HEAD'
        assert client.get('/q', params={'a': 1, 'b': ['x', 'y z']}).json()[
            'path'] == '/q?a=1&b=x&b=y+z'
        assert client.get('/q?k=v', params=[('n', '2')]).json()[
            'path'] == '/q?k=v&n=2'
        form = client.post('/form', data={'name': 'ä b'}).json()
        assert form['body'] == 'name=%C3%A4+b'
        assert form['content_type'] == 'application/x-www-form-urlencoded'
        sent = client.request('POST', 'no-slash', json=[1, 2],
                              headers={'X-Trace': '7'}).json()
        assert sent['path'] == '/no-slash' and sent['body'] == '[1, 2]'
        # timeout= applies to that request only
        with pytest.raises(ServiceError, match='timed out'):
            client.get('/slow', timeout=0.2)
        with pytest.raises(ServiceError, match='timed out'):
            client.get('/slow', timeout=(0.2, 0.2))
        assert client.get('/after').status_code == 200
        assert client.timeout == 30.0


# -- 2. the lock port above 55535 ---------------------------------------------

def test_lock_port_falls_back_below_the_port():
    assert default_lock_port(8765) == 18765
    assert default_lock_port(55535) == 65535
    assert default_lock_port(55536) == 45536
    assert default_lock_port(65535) == 55535
    assert Service('s', ['x'], port=60001).lock_port == 50001
    assert Service('s', ['x'], port=60001, lock_port=4000).lock_port == 4000


def test_a_port_above_55535_connects_and_shares(servers):
    port = free_high_port()
    server = servers(port)
    assert server.service.lock_port == port - 10000
    client = server.connect()
    assert server.is_owner
    pid = client.get('/').json()['pid']
    peer = Peer(port)
    try:
        assert peer.answer() == {'owner': False, 'server_pid': pid}
    finally:
        peer.leave()


# -- 3. the {host} placeholder ------------------------------------------------

def test_host_is_replaced_and_command_is_the_expanded_one(servers):
    server = servers(host='127.0.0.1')
    assert server.command == [sys.executable, SERVER, '--host', '127.0.0.1',
                              '--port', str(server.port)]
    with server as client:
        argv = client.get('/').json()['argv']
    assert argv == ['--host', '127.0.0.1', '--port', str(server.port)]
    service = Service('s', ['run', '{host}:{port}'], port=1234,
                      host='127.0.0.2')
    assert service.command_line() == ['run', '127.0.0.2:1234']
    assert service.command == ['run', '{host}:{port}']


# -- 4. the client, SingleServer and the locks --------------------------------

def test_a_client_built_from_an_address(servers):
    server = servers()
    client = ServerClient(port=server.port, health_check_url='/health',
                          startup_timeout=15)
    assert client.base_url == f'http://127.0.0.1:{server.port}'
    assert not client.is_ready and not client.check_ready()
    with pytest.raises(ServerNotReady):
        client.wait_ready(timeout=0.3)
    with pytest.raises(ServiceError):
        client.get('/')
    server.connect()
    assert client.wait_ready() is True and client.is_ready
    assert client.check_ready()
    with client:
        assert client.get('/data').json()['path'] == '/data'
    with pytest.raises(ValueError):
        ServerClient()


def test_a_client_over_a_unix_socket(servers, tmp_path):
    path = str(tmp_path / 'compat.sock')
    with servers(socket=path) as client:
        assert client.base_url == f'http+unix://{path}'
        assert client.post('/echo', json={'x': 1}).json()['body'] == '{"x": 1}'
    other = ServerClient(socket_path=path, health_check_url='/health')
    assert not other.check_ready()   # stopped by the with block


def test_single_server_lifecycle(servers):
    server = servers()
    assert server.get_client() is None and not server.is_connected
    assert not server.is_owner
    client = server.connect(wait_ready=False)
    assert server.is_owner and server.get_client() is client
    assert client.wait_ready() and server.is_connected
    assert server.connect() is client   # still answering: the same client
    pid = client.get('/').json()['pid']
    server.disconnect()
    assert server.get_client() is None and not server.is_owner
    wait_until(lambda: not pid_alive(pid), 10,
               message='disconnect() left the server running')
    again = server.connect()
    assert again is not client and server.is_connected
    second = again.get('/').json()['pid']
    server.stop()
    wait_until(lambda: not pid_alive(second), 10)


def test_connect_takes_over_when_the_server_died(servers):
    server = servers()
    client = server.connect()
    pid = client.get('/').json()['pid']
    # the owner is reconnecting: the dead server is replaced
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not client.check_ready(), 10)
    fresh = server.connect()
    assert server.is_owner and fresh.get('/').json()['pid'] != pid


def test_a_second_process_is_a_client_and_takes_over(servers):
    port = free_port()
    first = Peer(port)
    try:
        owner = first.answer()
        assert owner['owner'] is True
        server = servers(port)
        client = server.connect()
        assert not server.is_owner
        assert client.get('/').json()['pid'] == owner['server_pid']
    finally:
        first.leave()
    wait_until(lambda: not pid_alive(owner['server_pid']), 10)
    wait_until(lambda: not client.check_ready(), 10)
    taken = server.connect()
    assert server.is_owner
    assert taken.get('/').json()['pid'] != owner['server_pid']


def test_not_ready_is_a_service_unavailable(servers, tmp_path):
    server = servers(health_check_url='/status/500', startup_timeout=1,
                     stdout=str(tmp_path / 'out.log'), stderr='stdout')
    with pytest.raises(ServerNotReady) as caught:
        server.connect()
    assert isinstance(caught.value, ServiceUnavailable)
    assert 'did not pass its health check /status/500' in str(caught.value)


def test_options_singleserver_takes(servers, tmp_path):
    server = servers(env={'COMPAT_MARK': '1'}, cwd=tmp_path, stdout='null',
                     stderr='inherit')
    assert server.service.stdout == os.devnull
    assert server.service.stderr is None
    assert server.service.cwd == str(tmp_path)
    with pytest.raises(ValueError, match='lock_socket'):
        make_server(lock_socket=str(tmp_path / 'lock'))
    with pytest.raises(ValueError, match='SIGTERM'):
        make_server(shutdown_signal=signal.SIGINT)
    with pytest.raises(ValueError):
        SingleServer(name='x', command=['x'])


def test_socket_lock_on_a_port():
    port = free_port()
    lock = SocketLock(port=port)
    assert lock.address == ('127.0.0.1', port)
    assert lock.try_acquire() and lock.is_acquired
    with pytest.raises(RuntimeError):
        lock.try_acquire()
    other = SocketLock(port=port)
    assert not other.try_acquire() and not other.is_acquired
    lock.release()
    assert not lock.is_acquired
    with other:
        assert other.is_acquired
    assert not other.is_acquired
    with pytest.raises(ValueError):
        SocketLock()
    with pytest.raises(ValueError):
        SocketLock(port=port, socket_path='/tmp/x')


def test_socket_lock_on_a_path_removes_a_stale_file(tmp_path):
    path = str(tmp_path / 'lock.sock')
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()   # the file stays, nobody listens
    lock = SocketLock(socket_path=path)
    assert lock.try_acquire()
    assert not SocketLock(socket_path=path).try_acquire()
    lock.release()
    assert not os.path.exists(path)


def test_lock_file(tmp_path):
    path = tmp_path / 'app.lock'
    lock = LockFile(path)
    assert lock.get_owner_pid() is None
    assert lock.try_acquire() and lock.is_acquired
    assert lock.get_owner_pid() == os.getpid()
    with pytest.raises(RuntimeError):
        lock.try_acquire()
    with LockFile(path) as other:
        assert not other.is_acquired
    lock.release()
    assert not lock.is_acquired and lock.get_owner_pid() is None
    # a holder that dies frees the lock
    holder = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, '-c',
         'import sys; from uhttp.workers import LockFile; '
         f'lock = LockFile({str(path)!r}); print(lock.try_acquire(), '
         'flush=True); sys.stdin.read()'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'True'
        assert LockFile(path).get_owner_pid() == holder.pid
        assert not LockFile(path).try_acquire()
    finally:
        holder.kill()
        holder.wait(10)
    with LockFile(path) as taken:
        assert taken.is_acquired
