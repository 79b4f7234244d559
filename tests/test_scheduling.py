"""A pool acts as one shared queue, and overload pushes back instead of 503.

Real dispatcher, real workers: held requests run until the test creates a
file, so "while the slow one still runs" is a fact the test controls, not a
timing guess.
"""

import concurrent.futures
import http.client
import json
import os
import socket
import threading

import pytest

from conftest import parse_response, wait_until


@pytest.fixture
def hold_dir(tmp_path):
    return str(tmp_path)


def start_sched(start_server, hold_dir, **env):
    settings = {'HOLD_DIR': hold_dir}
    settings.update({key: str(value) for key, value in env.items()})
    workers = int(settings.get('WORKERS', 2))
    return start_server('sched_app.py', env=settings, ready_workers=workers)


def in_thread(func, *args, **kwargs):
    """Run func in a thread; returns (thread, result list)."""
    result = []
    thread = threading.Thread(
        target=lambda: result.append(func(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, result


def holding_worker(server, name):
    """The worker index that runs the held request `name`."""
    match = server.wait_log(rf'holding {name} in worker (\d+)')
    return int(match.group(1))


def release(hold_dir, name):
    with open(os.path.join(hold_dir, name), 'w', encoding='ascii'):
        pass


def monitor(server):
    return server.get('/monitor').json()


def test_fast_requests_go_to_the_idle_worker_while_a_sibling_is_busy(
        start_server, hold_dir):
    server = start_sched(start_server, hold_dir)
    slow = in_thread(server.get, '/api/hold/slow', timeout=40)
    busy = holding_worker(server, 'slow')

    def client(number):
        return [server.get(f'/api/fast/c{number}-{i}').json()
                for i in range(10)]
    with concurrent.futures.ThreadPoolExecutor(3) as executor:
        answers = [a for batch in executor.map(client, range(3))
                   for a in batch]
    # every fast request was answered while the slow one still ran
    assert slow[0].is_alive()
    assert len(answers) == 30
    assert {answer['worker'] for answer in answers} == {1 - busy}
    release(hold_dir, 'slow')
    slow[0].join(20)
    assert slow[1][0].status == 200
    assert slow[1][0].json() == {'worker': busy, 'released': True}


def test_request_waiting_behind_a_busy_worker_moves_when_a_sibling_frees(
        start_server, hold_dir):
    server = start_sched(start_server, hold_dir)
    # Three requests at once: two are held, one on each worker; the third
    # is either prefetched behind one of them or waits in the backlog.
    socks = []
    for path in ('/api/hold/a', '/api/hold/b', '/api/fast/c'):
        sock = socket.create_connection(
            ('127.0.0.1', server.port), timeout=20)
        sock.sendall(f'GET {path} HTTP/1.1\r\nHost: x\r\n\r\n'.encode())
        socks.append(sock)
    try:
        worker_a = holding_worker(server, 'a')
        worker_b = holding_worker(server, 'b')
        assert {worker_a, worker_b} == {0, 1}
        pool = monitor(server)['pools'][0]
        prefetched = any(w['in_flight'] == 2 for w in pool['workers'])
        assert prefetched or pool['queue_size'] == 1, pool
        release(hold_dir, 'b')
        answer = read_response(socks[2])
        # served by the worker that freed, while `a` still runs
        assert answer == {'worker': worker_b, 'name': 'c'}
        assert not os.path.exists(os.path.join(hold_dir, 'a'))
        if prefetched:
            server.wait_log(r'handed back unstarted')
        release(hold_dir, 'a')
        assert read_response(socks[0]) == {'worker': worker_a,
                                           'released': True}
        assert read_response(socks[1])['worker'] == worker_b
    finally:
        for sock in socks:
            sock.close()


def read_response(sock):
    """The JSON body of the next response on a raw socket."""
    buffer = bytearray()
    while True:
        parsed = parse_response(buffer)
        if parsed is not None:
            status, _headers, body, _used = parsed
            assert status == 200, (status, body)
            return json.loads(body)
        chunk = sock.recv(65536)
        assert chunk, 'connection closed before a response'
        buffer += chunk


def test_flood_beyond_max_pending_waits_instead_of_503(
        start_server, hold_dir):
    server = start_sched(start_server, hold_dir, MAX_PENDING=4)
    clients, per_client = 24, 3
    barrier = threading.Barrier(clients)
    flood_done = threading.Event()

    def flood(_):
        barrier.wait(10)
        connection = http.client.HTTPConnection('127.0.0.1', server.port,
                                                timeout=30)
        statuses = []
        try:
            for _ in range(per_client):
                connection.request('GET', '/api/sleep/50')
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            connection.close()
        return statuses

    samples = []

    def watch():
        while not flood_done.is_set():
            samples.append(monitor(server))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(clients) as executor:
        statuses = [s for batch in executor.map(flood, range(clients))
                    for s in batch]
    flood_done.set()
    watcher.join(20)
    # nobody was refused: requests beyond max_pending waited their turn
    assert statuses == [200] * (clients * per_client)
    # the dispatcher never held more than max_pending, and kept answering
    # its own routes while the pool was full (connections were parked)
    assert samples and max(s['pending'] for s in samples) <= 4
    assert any(s['parked'] for s in samples), samples[-3:]
    assert server.get('/health').json() == {'status': 'ok'}
    wait_until(lambda: monitor(server)['pending'] == 0, 10)


def test_request_that_waited_its_whole_timeout_in_the_backlog_gets_503(
        start_server, hold_dir):
    server = start_sched(start_server, hold_dir, WORKERS=1, TIMEOUT=1)
    slow = in_thread(server.get, '/api/hold/long', timeout=20)
    holding_worker(server, 'long')
    # the worker runs a request that takes long: nothing is prefetched
    # behind it, the next request waits in the backlog
    wait_until(lambda: monitor(server)['pools'][0]['queue_size'] == 0
               and monitor(server)['pending'] == 1, 5)
    server.wait_log(r'holding long')
    waiting = server.get('/api/fast/late', timeout=20)
    assert waiting.status in (503, 504), waiting
    if waiting.status == 503:
        assert waiting.headers['retry-after'] == '1'
        assert waiting.json() == {'error': 'Service Unavailable'}
    release(hold_dir, 'long')
    slow[0].join(20)
    assert slow[1][0].status == 504
    # the late request never ran
    wait_until(lambda: 'late' not in server.get('/api/ran').json()['ran'], 5)
    wait_until(lambda: monitor(server)['pending'] == 0, 10)


def test_a_dead_worker_fails_only_its_running_request(start_server,
                                                      hold_dir):
    server = start_sched(start_server, hold_dir)
    socks = {}
    for name in ('a0', 'a1'):
        socks[name] = send_raw(server, f'/api/hold/{name}')
    doomed = holding_worker(server, 'a0')
    holding_worker(server, 'a1')
    # three more at once: sent ahead behind the fresh held ones, or queued
    for name in ('b', 'c', 'd'):
        socks[name] = send_raw(server, f'/api/fast/{name}')
    workers = monitor(server)['pools'][0]['workers']
    victim = workers[doomed]
    sent_ahead = victim["in_flight"] - 1
    os.kill(victim['pid'], 9)
    status, _body = read_status(socks['a0'])
    assert status == 502
    if sent_ahead:
        server.wait_log(r'requests it had not started go to its siblings')
    release(hold_dir, 'a1')
    for name in ('b', 'c', 'd'):
        status, body = read_status(socks[name])
        assert status == 200, (name, body)
        assert json.loads(body)['name'] == name
    assert read_status(socks['a1'])[0] == 200
    for sock in socks.values():
        sock.close()


def send_raw(server, path):
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=20)
    sock.sendall(f'GET {path} HTTP/1.1\r\nHost: x\r\n\r\n'.encode())
    return sock


def read_status(sock):
    """(status, body) of the next response on a raw socket."""
    buffer = bytearray()
    while True:
        parsed = parse_response(buffer)
        if parsed is not None:
            return parsed[0], parsed[2]
        chunk = sock.recv(65536)
        assert chunk, 'connection closed before a response'
        buffer += chunk
