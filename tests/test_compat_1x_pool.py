"""WorkerPool code written for uhttp-workers 1.8.1 runs unchanged.

End-to-end tests start tests/apps/compat_pool_app.py, whose pool is built
with 1.8.1's option names, and check that each option acts (real worker
processes, real exits, the worker's RLIMIT_AS read from /proc).
"""

import threading
import time

import pytest

import uhttp.workers as _workers
from conftest import wait_until

APP = 'compat_pool_app.py'
POOL_OPTIONS = ('recovery_interval', 'permanent_failure_exitcode',
                'worker_memory_limit_mb')


def monitor(server):
    result = server.get('/monitor')
    assert result.status == 200, result
    return result.json()


class PlainWorker(_workers.Worker):
    """A worker class for pools that are built but never started."""


# -- 1. permanent_failure_exitcode, recovery_interval -------------------------

def test_permanent_failure_exitcode_parks_the_worker(start_server):
    server = start_server(APP, env={'WORKERS': '2', 'PERMANENT_EXIT': '42'},
                          ready_workers=2)
    assert server.get('/api/kwargs').json() == {'kwargs': ['flavour']}
    assert server.get('/api/exit/42').status == 502
    server.wait_log(r'CRITICAL.*unrecoverable code 42: not restarted')
    state = monitor(server)
    assert state['status']['parked_count'] == 1
    assert state['alive_count'] == state['status']['alive_count'] == 1
    parked = [w for w in state['status']['workers'] if w['parked']]
    assert len(parked) == 1 and parked[0]['alive'] is False
    # another exit code is an ordinary crash: that worker is restarted
    assert server.get('/api/exit/43').status == 502
    server.wait_log(r'exited with code 43')
    wait_until(lambda: monitor(server)['alive_count'] == 1, 20,
               message='the crashed worker was not restarted')
    assert server.get('/api/pid').status == 200
    assert monitor(server)['status']['parked_count'] == 1


def test_permanent_failure_exitcode_joins_unrecoverable_exit_codes():
    pool = _workers.WorkerPool(PlainWorker, unrecoverable_exit_codes=[4],
                               permanent_failure_exitcode=3)
    assert pool.unrecoverable_exit_codes == {3, 4}
    assert pool.kwargs == {}
    assert _workers.WorkerPool(PlainWorker).unrecoverable_exit_codes == set()


def first_retry_delays(pool, count=3):
    """The delays a degraded pool waits before its first `count` retries."""
    # pylint: disable=protected-access
    delays = [pool._first_backoff()]
    while len(delays) < count:
        pool._backoff = delays[-1]
        delays.append(pool._next_backoff())
    return delays


def test_recovery_interval_is_the_fixed_retry_delay_of_a_degraded_pool():
    fixed = _workers.WorkerPool(PlainWorker, recovery_interval=7)
    assert fixed.recovery_interval == 7 and fixed.kwargs == {}
    assert first_retry_delays(fixed) == [7, 7, 7]
    default = _workers.WorkerPool(PlainWorker)
    assert default.recovery_interval is None
    assert first_retry_delays(default) == [1.0, 2.0, 4.0]
    # 0 never recovered in 1.8.1 either way: it means the default here
    zero = _workers.WorkerPool(PlainWorker, recovery_interval=0)
    assert zero.recovery_interval is None
    assert first_retry_delays(zero) == [1.0, 2.0, 4.0]
    with pytest.raises(ValueError, match='recovery_interval'):
        _workers.WorkerPool(PlainWorker, recovery_interval=-1)


def test_degraded_pool_retries_every_recovery_interval(start_server, tmp_path):
    flag = tmp_path / 'broken'
    flag.write_text('x')
    server = start_server(APP, env={
        'MAX_RESTARTS': '2', 'RECOVERY_INTERVAL': '0.2',
        'SETUP_FAIL_FLAG': str(flag), 'KEEP_RETRYING': '1'})
    server.wait_log(r'pool CompatWorker degraded: 2 restarts within 300s?; '
                    r'answering 503 and retrying in 0\.2s')
    state = monitor(server)
    assert state['is_degraded'] is True and state['recovery_interval'] == 0.2
    assert server.get('/api/pid').status == 503
    # a doubling back-off would need over a minute for this many retries
    wait_until(lambda: server.count_log(r'trying worker .* again') >= 8, 30,
               message='the degraded pool did not retry every 0.2 s')
    flag.unlink()
    wait_until(lambda: server.get('/api/pid').status == 200, 30,
               message='pool did not recover')
    assert monitor(server)['is_degraded'] is False


# -- 2. worker_memory_limit_mb ------------------------------------------------

def address_space_limit(pid):
    with open(f'/proc/{pid}/limits', encoding='ascii') as limits:
        for line in limits:
            if line.startswith('Max address space'):
                return line.split()[3:5]
    raise AssertionError(f'no address space line for pid {pid}')


def test_worker_memory_limit_mb_sets_rlimit_as_before_setup(start_server):
    server = start_server(APP, env={'MEMORY_MB': '1024'}, ready_workers=1)
    limit = str(1024 * 1024 * 1024)
    pid = server.get('/api/pid').json()['pid']
    assert address_space_limit(pid) == [limit, limit]
    assert server.get('/api/limit').json() == {
        'in_setup': [int(limit), int(limit)]}
    assert server.get('/api/kwargs').json() == {'kwargs': ['flavour']}
    # the cap acts: a 2 GiB block cannot be had, the worker lives on
    assert server.get('/api/alloc/2048').json() == {'memory_error': True}
    assert server.get('/api/pid').json()['pid'] == pid
    # the dispatcher itself is not capped
    assert address_space_limit(server.pid) != [limit, limit]


def test_without_worker_memory_limit_mb_rlimit_as_is_inherited(start_server):
    server = start_server(APP, ready_workers=1)
    pid = server.get('/api/pid').json()['pid']
    assert address_space_limit(pid) == address_space_limit(server.pid)


def test_bad_worker_memory_limit_mb_fails_at_construction():
    with pytest.raises(ValueError, match='worker_memory_limit_mb'):
        _workers.WorkerPool(PlainWorker, worker_memory_limit_mb=-5)
    pool = _workers.WorkerPool(PlainWorker, worker_memory_limit_mb=0)
    assert pool.memory_limit is None and pool.kwargs == {}


# -- 3. degraded threshold ----------------------------------------------------

def test_max_restarts_restarts_degrade_the_pool(start_server):
    server = start_server(APP, env={'MAX_RESTARTS': '2'}, ready_workers=1)
    assert server.get('/api/exit/43').status == 502
    wait_until(lambda: server.get('/api/pid').status == 200, 20,
               message='one restart must not degrade the pool')
    assert monitor(server)['is_degraded'] is False
    assert server.get('/api/exit/43').status == 502
    server.wait_log(r'pool CompatWorker degraded: 2 restarts within')
    assert monitor(server)['is_degraded'] is True


# -- 4. num_workers=0 ---------------------------------------------------------

def test_num_workers_zero_answers_503_at_once(start_server):
    server = start_server(APP, env={'WORKERS': '0'})
    server.wait_log(r'WARNING.*pool CompatWorker has num_workers=0: its '
                    r'requests are answered 503 No Workers Available')
    result = server.get('/api/pid')
    assert result.status == 503
    assert result.headers['retry-after'] == '1'
    assert result.json() == {'error': 'No Workers Available'}
    assert monitor(server)['alive_count'] == 0


def test_num_workers_must_be_a_count():
    for bad in (-1, 1.5, '2'):
        with pytest.raises(ValueError, match='num_workers must be an int'):
            _workers.WorkerPool(PlainWorker, num_workers=bad)


# -- 5. 1.8.1's property and status names -------------------------------------

def test_status_and_properties_have_1x_names(start_server):
    server = start_server(APP, ready_workers=1)
    state = monitor(server)
    status = state['status']
    assert {'name', 'degraded', 'alive_count', 'parked_count', 'queue_size',
            'workers'} <= set(status)
    assert (status['name'], status['degraded'], status['alive_count'],
            status['parked_count'], status['queue_size']) == (
                'CompatWorker', False, 1, 0, 0)
    worker = status['workers'][0]
    assert {'id', 'alive', 'parked', 'last_seen', 'current_request'} <= set(
        worker)
    assert (worker['id'], worker['alive'], worker['parked']) == (
        0, True, False)
    assert (state['is_degraded'], state['alive_count'],
            state['pending_count']) == (False, 1, 0)


def test_pending_count_counts_requests_waiting_for_a_worker(start_server):
    server = start_server(APP, ready_workers=1)
    results = []

    def get(path):
        results.append(server.get(path, timeout=30).status)

    threads = [threading.Thread(target=get, args=('/api/sleep/3',))]
    threads[0].start()
    wait_until(lambda: monitor(server)['status']['workers'][0][
        'current_request'] is not None, 10, message='no request running')
    # once it has run 0.1 s (REVOKE_AFTER) nothing is prefetched behind it:
    # later requests wait in the pool, where 1.8.1 counted them too
    time.sleep(0.3)
    for _ in range(2):
        threads.append(threading.Thread(target=get, args=('/api/pid',)))
        threads[-1].start()
    def two_waiting():
        state = monitor(server)
        return state if state['pending_count'] == 2 else None

    state = wait_until(two_waiting, 10,
                       message=lambda: f'not both waiting: {monitor(server)}')
    assert state['status']['queue_size'] == 2
    for thread in threads:
        thread.join(30)
    assert results.count(200) == 3
    assert monitor(server)['pending_count'] == 0
