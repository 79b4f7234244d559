"""Supervision with real faults: killed, crashed, stuck and failing workers."""

import os
import random
import signal
import socket
import threading

import pytest

from uhttp.workers.worker_handle import PREFETCH

from conftest import pid_alive, wait_until

CORE = 'core_app.py'


def core_status(server):
    """Status of the CoreWorker pool."""
    return server.get('/monitor').json()['pools'][0]


def request_in_thread(server, path, results, **kwargs):
    """Start a GET in a thread; its HttpResult (or exception) lands in results."""
    def run():
        try:
            results.append(server.get(path, **kwargs))
        except Exception as err:  # pylint: disable=broad-except
            results.append(err)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def busy_worker(server):
    """(pid, request id) of the worker holding a request, once there is one."""
    def find():
        for worker in core_status(server)['workers']:
            if worker['current_request'] is not None:
                return worker['pid'], worker['current_request']
        return None
    return wait_until(find, 10, message='no worker took the request')


@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGSEGV])
def test_killed_worker_answers_its_request_at_once_and_is_replaced(
        start_server, signum):
    server = start_server(CORE, env={'WORKERS': '1'}, ready_workers=3)
    results = []
    thread = request_in_thread(server, '/api/sleep/30', results, timeout=20)
    pid, request_id = busy_worker(server)
    os.kill(pid, signum)
    thread.join(20)
    assert len(results) == 1 and results[0].status == 502, results
    assert results[0].json() == {'error': 'Worker Died'}
    server.wait_log(rf'request {request_id} GET /api/sleep/30 lost')
    server.wait_log(rf'\(pid {pid}\) killed by {signal.Signals(signum).name}')
    answer = server.get('/api/pid')
    assert answer.status == 200 and answer.json()['pid'] != pid
    status = core_status(server)
    assert status['workers'][0]['restarts'] == 1
    assert status['pending'] == 0
    died = server.get('/monitor').json()['died']
    assert died == [['CoreWorker', 0, f'killed by {signal.Signals(signum).name}',
                     -signum]]


def test_crash_of_one_worker_leaves_the_other_workers_requests_alone(
        start_server):
    server = start_server(CORE, env={'WORKERS': '2'}, ready_workers=4)
    results = []
    thread = request_in_thread(server, '/api/sleep/1.5', results)
    busy_pid, _ = busy_worker(server)
    crashed = server.get('/api/crash')  # goes to the idle worker
    assert crashed.status == 502
    thread.join(20)
    assert results[0].status == 200 and results[0].json()['pid'] == busy_pid
    server.wait_log(r'exited with code 7; 1 requests failed')


def test_stuck_worker_is_killed_replaced_and_its_client_answered(
        start_server):
    server = start_server(CORE, env={
        'WORKERS': '1', 'STUCK_TIMEOUT': '1', 'HEARTBEAT': '0.2',
        'KILL_TIMEOUT': '1'}, ready_workers=3)
    results = []
    thread = request_in_thread(server, '/api/sleep/60', results, timeout=30)
    pid, request_id = busy_worker(server)
    thread.join(30)
    assert len(results) == 1 and results[0].status == 502, results
    server.wait_log(rf'sent no heartbeat .* request {request_id}: killing it')
    wait_until(lambda: not pid_alive(pid), 10)
    answer = server.get('/api/pid')
    assert answer.status == 200 and answer.json()['pid'] != pid
    assert server.get('/monitor').json()['died'][0][2] == 'stuck'


def test_keep_alive_resets_request_timeout_and_stuck_clock(start_server):
    server = start_server(CORE, env={
        'WORKERS': '1', 'TIMEOUT': '1', 'STUCK_TIMEOUT': '1',
        'HEARTBEAT': '0.2'}, ready_workers=3)
    pid = server.get('/api/pid').json()['pid']
    answer = server.get('/api/keepalive/3')
    assert answer.status == 200 and answer.json() == {'kept_alive': True}
    assert server.get('/api/pid').json()['pid'] == pid
    assert server.count_log('killing it') == 0
    # without keep_alive the same wait is a timeout
    assert server.get('/api/sleep/1.6').status == 504


def test_setup_failure_degrades_pool_then_recovers(start_server, tmp_path):
    flag = tmp_path / 'broken'
    flag.write_text('x')
    server = start_server(CORE, env={
        'WORKERS': '1', 'MAX_RESTARTS': '2', 'SETUP_FAIL_FLAG': str(flag),
        'KEEP_RETRYING': '1'},
        ready_workers=2)
    server.wait_log(r'CRITICAL.*\[CoreWorker\[0\]\] setup\(\) failed')
    server.wait_log(r'RuntimeError: setup refused')
    # max_restarts restarts within the window degrade it (as in 1.x)
    server.wait_log(r'pool CoreWorker degraded: 2 restarts within')
    answer = server.get('/api/pid')
    assert answer.status == 503
    status = core_status(server)
    assert status['degraded'] is True
    assert status['workers'][0]['restarts'] >= 2
    flag.unlink()
    wait_until(lambda: server.get('/api/pid').status == 200, 30,
               message='pool did not recover')
    assert core_status(server)['degraded'] is False
    server.wait_log(r'pool CoreWorker: worker .* started healthy')


def test_unrecoverable_exit_code_is_not_restarted(start_server):
    server = start_server(CORE, env={'WORKERS': '1', 'UNRECOVERABLE': '7'},
                          ready_workers=3)
    assert server.get('/api/crash').status == 502
    server.wait_log(r'CRITICAL.*unrecoverable code 7: not restarted')
    status = core_status(server)
    assert status['workers'][0]['alive'] is False
    # nobody takes the request: it times out or waits; the other pools serve
    assert server.get('/other/x').status == 200


def test_config_reaches_workers_started_later(start_server):
    server = start_server(CORE, env={'WORKERS': '1'}, ready_workers=3)
    sent = server.request('POST', '/control/config', body={'limit': 5})
    assert sent.status == 200
    wait_until(lambda: server.get('/api/pid').json()['config'] ==
               {'limit': 5}, 10)
    old_pid = server.get('/api/pid').json()['pid']
    os.kill(old_pid, signal.SIGKILL)

    def replaced():
        answer = server.get('/api/pid')
        return answer.status == 200 and answer.json()['pid'] != old_pid \
            and answer.json()
    fresh = wait_until(replaced, 15)
    assert fresh['config'] == {'limit': 5}


def test_queue_warning_is_rate_limited(start_server):
    server = start_server(CORE, env={'WORKERS': '1', 'QUEUE_WARNING': '2'},
                          ready_workers=3)
    results = []
    # one worker holds up to PREFETCH of them; the rest wait in the backlog
    count = PREFETCH + 6
    threads = [request_in_thread(server, '/api/sleep/0.2', results)
               for _ in range(count)]
    for thread in threads:
        thread.join(30)
    assert [r.status for r in results] == [200] * count
    assert server.count_log(r'requests wait for a worker \(queue_warning=2\)') \
        == 1


def test_kill_storm_under_load_every_request_answered_once(start_server):
    server = start_server(CORE, env={
        'WORKERS': '3', 'MAX_RESTARTS': '1000', 'HEARTBEAT': '0.2'},
        ready_workers=5)
    outcomes = []
    lock = threading.Lock()
    stop = threading.Event()
    kills_done = threading.Event()

    def client(index):
        # load until every kill has landed (bounded in count)
        for number in range(5000):
            if kills_done.is_set() and number >= 120:
                break
            key = f'{index}-{number}'
            try:
                answer = server.request('POST', f'/api/count/{key}',
                                        timeout=20)
                result = (key, answer.status, answer.body)
            except Exception as err:  # pylint: disable=broad-except
                result = (key, 'error', repr(err))
            with lock:
                outcomes.append(result)

    def killer():
        rng = random.Random(1)
        kills = 0
        while not stop.is_set() and kills < 30:
            try:
                pids = [w['pid'] for w in core_status(server)['workers']
                        if w['alive']]
            except Exception:  # pylint: disable=broad-except
                pids = []
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            stop.wait(0.15)
        kills_done.set()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    killing = threading.Thread(target=killer)
    for thread in clients:
        thread.start()
    killing.start()
    for thread in clients:
        thread.join(120)
    stop.set()
    killing.join(10)
    assert len(outcomes) >= 8 * 120
    assert len({key for key, _, _ in outcomes}) == len(outcomes)
    wait_until(lambda: server.count_log(r'killed by SIGKILL') >= 25, 10)
    print('statuses', sorted((s, sum(1 for o in outcomes if o[1] == s))
                             for s in {o[1] for o in outcomes}))
    statuses = {status for _, status, _ in outcomes}
    assert statuses <= {200, 502}, [o for o in outcomes
                                    if o[1] not in (200, 502)][:5]
    assert 200 in statuses
    for key, status, body in outcomes:
        if status == 200:
            assert body == b'{"ran": 1}', (key, body)
    monitor = server.get('/monitor').json()
    assert monitor['pending'] == 0
    pool = monitor['pools'][0]
    assert pool['queue_size'] == 0
    wait_until(lambda: all(w['in_flight'] == 0 for w in
                           core_status(server)['workers']), 10)
    assert server.get('/api/item/5').json() == {'id': 5}


def test_stuck_worker_ignoring_sigterm_is_killed(start_server):
    server = start_server(CORE, env={
        'WORKERS': '1', 'STUCK_TIMEOUT': '1', 'HEARTBEAT': '0.2',
        'KILL_TIMEOUT': '1'}, ready_workers=3)
    results = []
    thread = request_in_thread(server, '/api/ignore-term', results,
                               timeout=30)
    pid, _ = busy_worker(server)
    thread.join(30)
    assert results and results[0].status == 502, results
    server.wait_log(rf'worker CoreWorker\[0\] \(pid {pid}\) did not exit in '
                    r'time: SIGKILL')
    assert server.get('/api/pid').json()['pid'] != pid
    # its stack was printed before it was killed: the log shows where it hung
    server.wait_log(r'File ".*core_app\.py", line \d+, in ignore_term')


def test_worker_hanging_in_setup_is_killed_and_retried(start_server,
                                                       tmp_path):
    flag = tmp_path / 'hang'
    flag.write_text('x')
    server = start_server(CORE, env={
        'WORKERS': '1', 'SETUP_HANG_FLAG': str(flag), 'SETUP_TIMEOUT': '1',
        'KILL_TIMEOUT': '1', 'KEEP_RETRYING': '1'}, ready_workers=2)
    server.wait_log(r'did not finish setup\(\) in 1.0s: killing it')
    flag.unlink()
    wait_until(lambda: server.get('/api/pid').status == 200, 30,
               message='the pool never recovered')
    assert server.get('/monitor').json()['died'][0][2] == 'setup timed out'


def test_unpicklable_pool_arguments_are_refused_at_once():
    import threading  # pylint: disable=import-outside-toplevel
    import uhttp.workers as _workers  # pylint: disable=import-outside-toplevel

    class Local(_workers.Worker):  # not importable by a spawned process
        pass
    with pytest.raises(ValueError, match='picklable'):
        _workers.WorkerPool(_workers.Worker, lock=threading.Lock())
    with pytest.raises(ValueError, match='module level'):
        _workers.WorkerPool(Local)


def test_sockets_never_leave_the_dispatcher(start_server):
    """A worker holds one socket: its channel; no client or listening one,
    also for a worker started while clients are connected."""
    server = start_server(CORE, env={'WORKERS': '1'}, ready_workers=3)
    idle = [socket.create_connection(('127.0.0.1', server.port))
            for _ in range(5)]
    try:
        first = server.get('/api/descriptors').json()
        assert first['kinds'].get('socket') == 1, first
        os.kill(first['pid'], signal.SIGKILL)  # its replacement is forked now
        fresh = wait_until(lambda: (lambda a: a.status == 200 and
                                    a.json()['pid'] != first['pid'] and
                                    a.json())(server.get('/api/descriptors')),
                           20)
        assert fresh['kinds'].get('socket') == 1, fresh
    finally:
        for sock in idle:
            sock.close()
