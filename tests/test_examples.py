"""Every example starts as `python examples/NAME.py` and answers a real request."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

EXAMPLES = os.path.join(ROOT, 'examples')


def example(name):
    return os.path.join(EXAMPLES, name)


def test_quickstart(start_server):
    server = start_server(example('quickstart.py'), ready_workers=1)
    assert server.get('/health').json() == {'status': 'ok'}
    assert server.get('/api/items').status == 401
    key = {'x-api-key': 'secret'}
    created = [server.request('POST', '/api/items', body={'name': name},
                              headers=key) for name in ('pen', 'ink')]
    assert [answer.status for answer in created] == [201, 201]
    # the state is per worker process: one worker gives distinct ids
    assert [answer.json() for answer in created] == [
        {'id': 2, 'name': 'pen'}, {'id': 3, 'name': 'ink'}]
    assert len(server.get('/api/items', headers=key).json()['items']) == 3
    assert server.get('/api/item/1', headers=key).json() == {
        'id': 1, 'name': 'first'}
    assert server.get('/api/item/999', headers=key).status == 404


def test_multi_pool(start_server):
    server = start_server(example('multi_pool.py'), ready_workers=4)
    key = {'x-api-key': 'demo'}
    assert server.get('/api/user').status == 401
    users = server.get('/api/user', headers=key).json()['users']
    assert [user['name'] for user in users] == ['ada', 'linus']
    admin = server.get('/api/admin/user/1', headers=key).json()
    assert admin == {'id': 1, 'name': 'ada'}
    # one storage worker: a user added is seen by the next request
    added = server.request('POST', '/api/user', body={'name': 'grace'},
                           headers=key)
    assert added.status in (200, 201), added
    users = server.get('/api/user', headers=key).json()['users']
    assert [user['name'] for user in users] == ['ada', 'linus', 'grace']
    assert server.get('/api/compute/fib/10', headers=key).json()['fib'] == '55'
    assert server.get('/api/order/7', headers=key).json()['id'] == 7
    assert server.get('/api/echo?x=1', headers=key).json()['query'] == {
        'x': '1'}
    assert server.get('/health').json() == {'status': 'ok'}
    pools = server.get('/monitor').json()['pools']
    assert [pool['name'] for pool in pools] == [
        'ComputeWorker', 'StorageWorker', 'GeneralWorker']


def test_static_site(start_server):
    server = start_server(example('static_site.py'), ready_workers=2)
    page = server.get('/static/')
    assert page.status == 200
    assert page.headers['content-type'].startswith('text/html')
    assert b'Served by the dispatcher' in page.body
    assert server.get('/static/app.js').headers['content-type'].startswith(
        'text/javascript')
    assert server.get('/').status == 302
    assert 'time' in server.get('/api/time').json()


def test_sse_chat(start_server):
    import socket  # pylint: disable=import-outside-toplevel
    server = start_server(example('sse_chat.py'), ready_workers=2)
    page = server.get('/static/chat.html')
    assert page.status == 200 and b'EventSource' in page.body
    listeners = []
    for _ in range(4):  # spread over both workers
        sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
        sock.sendall(b'GET /chat/events HTTP/1.1\r\nHost: t\r\n\r\n')
        listeners.append(sock)
    greetings = [b'' for _ in listeners]
    for index, sock in enumerate(listeners):
        while b'event: system' not in greetings[index]:
            greetings[index] += sock.recv(4096)
    assert server.request('POST', '/chat/send', body={
        'from': 'ada', 'text': 'hello'}).json() == {'sent': True}
    assert server.request('POST', '/chat/internal/publish',
                          body={}).status == 404
    for index, sock in enumerate(listeners):
        data = greetings[index]
        while b'"text": "hello"' not in data:
            data += sock.recv(4096)
        assert b'event: message' in data and b'"from": "ada"' in data
        sock.close()


def test_singleton_service(start_server, tmp_path):
    from test_service import free_port  # pylint: disable=import-outside-toplevel
    from conftest import pid_alive, wait_until  # pylint: disable=import-outside-toplevel
    tick_file = tmp_path / 'tick.log'
    server = start_server(example('singleton_service.py'), env={
        'HELPER_PORT': str(free_port()), 'TICK_FILE': str(tick_file)},
        ready_workers=3)
    answers = [server.get('/api/quote').json() for _ in range(9)]
    helpers = {answer['helper_pid'] for answer in answers}
    assert len(helpers) == 1, answers
    assert len({answer['worker'] for answer in answers}) > 1, answers
    status = server.get('/status').json()
    assert status['services'][0]['state'] == 'ready'
    assert status['services'][0]['pid'] in helpers
    assert status['jobs']['alive'] is True
    wait_until(lambda: tick_file.exists() and tick_file.read_text(), 15)
    writers = {line.split()[0] for line in tick_file.read_text().splitlines()}
    assert writers == {str(status['jobs']['pid'])}
    server.stop()
    assert server.proc.returncode == 0
    helper = helpers.pop()
    wait_until(lambda: not pid_alive(helper), 10,
               message='the helper outlived the service')


def _receive_until(connection, wanted, timeout=10.0):
    """The first JSON message for which `wanted(message)` is true; the
    ones before it are skipped (announcements of other joins)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, 'the expected WebSocket message never came'
        message = json.loads(connection.recv(timeout=left))
        if wanted(message):
            return message


def test_ws_chat(start_server):
    from websockets.exceptions import ConnectionClosed  # pylint: disable=import-outside-toplevel
    from websockets.sync.client import connect  # pylint: disable=import-outside-toplevel
    server = start_server(example('ws_chat.py'), ready_workers=2)
    page = server.get('/static/ws_chat.html')
    assert page.status == 200 and b'new WebSocket(' in page.body
    assert server.get('/').headers['location'] == '/static/ws_chat.html'
    base = f'ws://127.0.0.1:{server.port}/ws/chat'

    def joined(name):
        return lambda m: (m['from'], m['text']) == ('server', f'{name} joined')

    with connect(f'{base}/lobby?name=ada') as ada, \
            connect(f'{base}/lobby?name=bob') as bob, \
            connect(f'{base}/other?name=carol') as carol:
        _receive_until(ada, joined('ada'))
        _receive_until(ada, joined('bob'))    # bob is in the group now
        _receive_until(carol, joined('carol'))
        ada.send('hello')
        heard = _receive_until(bob, lambda m: m['from'] != 'server')
        assert (heard['from'], heard['text'], heard['room']) == (
            'ada', 'hello', 'lobby')
        # bob has ada's message, so it went out; carol, in another room,
        # gets her own message first: the lobby's never reached her
        carol.send('ping')
        first = _receive_until(carol, lambda m: m['from'] != 'server')
        assert (first['from'], first['text'], first['room']) == (
            'carol', 'ping', 'other')
    with connect(f'{base}/bad.room?name=eve') as eve:
        with pytest.raises(ConnectionClosed) as closed:
            eve.recv(timeout=10)
    assert closed.value.rcvd.code == 1008


def test_multi_host(start_server, tmp_path):
    from conftest import free_port, running_redis, wait_until  # pylint: disable=import-outside-toplevel
    with running_redis(tmp_path, 'redis-server is not installed: the '
                       'multi-host example coordinates through Redis') as (
                           url, client):
        server = start_server(example('multi_host/app.py'), env={
            'INSTANCE': 'a', 'PORT': str(free_port()), 'REDIS_URL': url},
            ready_workers=2)
        assert server.get('/health').json() == {'status': 'ok',
                                                'instance': 'a'}
        answer = server.get('/api/hello').json()
        assert (answer['instance'], answer['port']) == ('a', server.port)
        # alone, its workers hold the primary duty and its job runs
        promotions = wait_until(
            lambda: client.lrange('multi-host:promotions', 0, -1), 15)
        assert [p.split()[0] for p in promotions] == [b'a']
        wait_until(lambda: client.llen('multi-host:migrations') == 1, 15)
        server.stop()
        assert server.proc.returncode == 0


def test_remote_pool(start_server, tmp_path):
    from conftest import running_redis, wait_until  # pylint: disable=import-outside-toplevel
    with running_redis(tmp_path, 'redis-server is not installed: the '
                       'remote pool example goes through Redis') as (
                           url, _client):
        server = start_server(example('remote_pool/app.py'),
                              env={'REDIS_URL': url}, ready_workers=2)
        assert server.get('/api/status').json()['ok'] is True
        # no worker host yet: the remote routes answer 503 at once
        assert server.get('/render/digest?rounds=1').status == 503
        environ = {key: value for key, value in os.environ.items()
                   if not key.startswith('UHTTP_WORKERS_')}
        with open(tmp_path / 'host.log', 'wb') as log:
            host = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, '-m', 'uhttp.workers', 'worker', 'app:Render',
                 '--app-dir', os.path.dirname(example('remote_pool/app.py')),
                 '--redis', url, '--workers', '1'],
                stdout=subprocess.DEVNULL, stderr=log, env=environ)
        try:
            answer = wait_until(lambda: _ok_json(
                server.get('/render/digest?rounds=3')), 30)
            assert answer['rounds'] == 3
            assert answer['digest'] == _digest(3)
            assert answer['pid'] != server.proc.pid
        finally:
            host.send_signal(signal.SIGTERM)
            assert host.wait(30) == 0
        server.stop()
        assert server.proc.returncode == 0


def _ok_json(response):
    return response.json() if response.status == 200 else None


def _digest(rounds):
    value = b'seed'
    for _ in range(rounds):
        value = hashlib.sha256(value).digest()
    return value.hex()
