"""The lifecycle against a real dispatcher: lifecycle hooks, teardown on
every stop a worker can see, SIGTERM then SIGKILL, paced starts, SIGCONT
stack dumps. Hooks of tests/apps/lifecycle_app.py write `<pid> <hook> ...`
lines to a file, so each test sees which process ran what, in which order.
"""

import os
import signal
import threading

import pytest

import uhttp.workers as _workers
from uhttp.workers import stackdump

from conftest import pid_alive, wait_until

APP = 'lifecycle_app.py'


def events(path):
    """[(pid, hook, args...)] in the order they were written."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def calls(path, hook, pid=None):
    return [e for e in events(path) if e[1] == hook
            and (pid is None or e[0] == str(pid))]


def start(start_server, tmp_path, ready_workers=2, **env):
    path = tmp_path / 'events'
    env = {'EVENTS': str(path), **{k: str(v) for k, v in env.items()}}
    server = start_server(APP, env=env, ready_workers=ready_workers)
    return server, path


def replaced(server, old):
    """The pid of the one live worker once it is not `old`, else None."""
    pids = live_pids(server)
    return pids[0] if pids and pids[0] != old else None


def live_pids(server):
    return [w['pid'] for w in server.get('/monitor').json()['pools'][0]
            ['workers'] if w['alive'] and w['ready']]


def in_thread(server, path, results):
    thread = threading.Thread(
        target=lambda: results.append(server.get(path, timeout=30)),
        daemon=True)
    thread.start()
    return thread


def busy_pid(server):
    def find():
        for worker in server.get('/monitor').json()['pools'][0]['workers']:
            if worker['current_request'] is not None:
                return worker['pid']
        return None
    return wait_until(find, 10, message='no worker got the request')


# -- hooks ----------------------------------------------------------------------

def test_each_hook_runs_once_in_its_process(start_server, tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=2)
    wait_until(lambda: calls(path, 'on_start'), 10, message='no on_start')
    workers = live_pids(server)
    assert len(workers) == 2
    dispatcher = str(server.pid)
    assert calls(path, 'on_start') == [(dispatcher, 'on_start')]
    assert sorted(calls(path, 'before_fork')) == [
        (dispatcher, 'before_fork', 'LifeWorker', '0'),
        (dispatcher, 'before_fork', 'LifeWorker', '1')]
    for pid in workers:
        after_fork = calls(path, 'after_fork', pid)
        setup = calls(path, 'setup', pid)
        assert len(after_fork) == 1 and len(setup) == 1
        log = events(path)
        assert log.index(after_fork[0]) < log.index(setup[0])
    # on_start comes once every worker is ready, after their setup()
    log = events(path)
    assert all(log.index(e) < log.index(calls(path, 'on_start')[0])
               for e in calls(path, 'setup'))
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    log = events(path)
    assert calls(path, 'on_stop') == [(dispatcher, 'on_stop')]
    for pid in workers:
        teardown = calls(path, 'teardown', pid)
        assert len(teardown) == 1
        assert log.index(teardown[0]) < log.index(calls(path, 'on_stop')[0])
    assert 'raised' not in server.log


@pytest.mark.parametrize('hook', ['before_fork', 'after_fork', 'on_start',
                                  'on_worker_recycle'])
def test_a_failing_hook_is_logged_and_serving_goes_on(start_server, tmp_path,
                                                     hook):
    server, path = start(start_server, tmp_path, WORKERS=1, FAIL_HOOK=hook,
                         MAX_REQUESTS=2, ready_workers=1)
    assert server.get('/api/pid').status == 200
    assert server.get('/api/pid').status == 200  # the 2nd recycles it
    server.wait_log(rf'{hook}\(\) raised')
    server.wait_log(rf'RuntimeError: {hook} failed on purpose')
    server.wait_log(r'File ".*lifecycle_app\.py", line \d+, in record')
    wait_until(lambda: calls(path, hook), 10)
    wait_until(lambda: server.get('/api/pid').status == 200, 10)
    assert server.proc.poll() is None


def test_a_failing_teardown_is_logged_and_the_worker_replaced(
        start_server, tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1,
                         FAIL_HOOK='teardown', ready_workers=1)
    old = live_pids(server)[0]
    os.kill(old, signal.SIGTERM)
    server.wait_log(r'teardown\(\) failed')
    server.wait_log(r'RuntimeError: teardown failed on purpose')
    wait_until(lambda: replaced(server, old), 15)
    assert server.get('/api/pid').status == 200


def test_a_failing_on_stop_does_not_spoil_the_shutdown(start_server,
                                                       tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1,
                         FAIL_HOOK='on_stop', ready_workers=1)
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert len(calls(path, 'on_stop')) == 1
    assert 'on_stop() raised' in server.log
    assert 'RuntimeError: on_stop failed on purpose' in server.log


# -- teardown on every stop, never on SIGKILL ---------------------------------------

def test_teardown_once_when_recycled_after_max_requests(start_server,
                                                        tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1, MAX_REQUESTS=3,
                         ready_workers=1)
    old = live_pids(server)[0]
    for _ in range(3):
        assert server.get('/api/pid').status == 200
    wait_until(lambda: not pid_alive(old), 15)
    assert calls(path, 'on_worker_recycle') == [
        (str(server.pid), 'on_worker_recycle', 'LifeWorker', '0',
         'max_requests')]
    wait_until(lambda: calls(path, 'teardown', old), 5)
    assert len(calls(path, 'teardown', old)) == 1
    server.wait_log(rf'worker LifeWorker\[0\] \(pid {old}\) stopped')


def test_teardown_once_per_worker_in_a_rolling_restart(start_server,
                                                       tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=2)
    old = live_pids(server)
    server.signal(signal.SIGHUP)
    server.wait_log(r'rolling restart done', timeout=30)
    wait_until(lambda: not any(pid_alive(pid) for pid in old), 15)
    recycled = calls(path, 'on_worker_recycle')
    assert sorted(e[3] for e in recycled) == ['0', '1']
    assert all(e[4] == 'rolling_restart' for e in recycled)
    for pid in old:
        assert len(calls(path, 'teardown', pid)) == 1
    assert not set(old) & set(live_pids(server))


def test_external_sigterm_finishes_the_running_request(start_server,
                                                       tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1, ready_workers=1)
    results = []
    thread = in_thread(server, '/api/nap/1', results)
    pid = busy_pid(server)
    # running, not merely sent (a request not started yet would be handed
    # back and run by the replacement)
    wait_until(lambda: calls(path, 'nap_started', pid), 10)
    os.kill(pid, signal.SIGTERM)
    thread.join(30)
    assert results and results[0].status == 200, results
    assert results[0].json()['pid'] == pid
    wait_until(lambda: not pid_alive(pid), 10)
    assert len(calls(path, 'teardown', pid)) == 1
    server.wait_log(rf'\(pid {pid}\) exited with code 0')
    wait_until(lambda: replaced(server, pid), 15)
    assert server.get('/api/pid').status == 200


def test_sigkill_runs_no_teardown(start_server, tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1, ready_workers=1)
    old = live_pids(server)[0]
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: replaced(server, old), 15)
    wait_until(lambda: calls(path, 'setup', new), 5)
    assert calls(path, 'teardown', old) == []
    assert len(calls(path, 'after_fork')) == 2


# -- SIGTERM, then SIGKILL ------------------------------------------------------

def test_a_worker_ignoring_sigterm_is_killed_after_graceful_timeout(
        start_server, tmp_path):
    # a rolling restart stops the worker gracefully once its replacement is
    # ready: it blocks SIGTERM, so SIGKILL follows graceful_timeout later
    server, path = start(start_server, tmp_path, WORKERS=1,
                         GRACEFUL_TIMEOUT=1, ready_workers=1)
    old = live_pids(server)[0]
    results = []
    thread = in_thread(server, '/api/ignore-term', results)
    wait_until(lambda: calls(path, 'sigterm_blocked', old), 10)
    server.signal(signal.SIGHUP)
    server.wait_log(rf'worker LifeWorker\[0\] \(pid {old}\) did not exit in '
                    r'time: SIGKILL', timeout=20)
    thread.join(30)
    assert results and results[0].status == 502, results
    wait_until(lambda: not pid_alive(old), 10)
    assert calls(path, 'teardown', old) == []
    assert server.get('/api/pid').json()['pid'] != old


def test_shutdown_caps_graceful_timeout_at_shutdown_timeout(start_server,
                                                            tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1,
                         GRACEFUL_TIMEOUT=600, SHUTDOWN_TIMEOUT=1,
                         ready_workers=1)
    results = []
    in_thread(server, '/api/ignore-term', results)
    pid = live_pids(server)[0]
    wait_until(lambda: calls(path, 'sigterm_blocked', pid), 10)
    server.signal(signal.SIGTERM)
    # it would wait 600 s for the worker if the cap did not hold
    assert server.wait_exit(timeout=30) == 0
    assert not pid_alive(pid)
    assert 'did not exit in time: SIGKILL' in server.log
    assert len(calls(path, 'on_stop')) == 1


# -- start pacing -------------------------------------------------------------------

def test_start_worker_delay_starts_workers_one_after_the_other(
        start_server, tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=3, START_DELAY=2,
                         ready_workers=3)
    log = events(path)
    forks = [e for e in log if e[1] == 'before_fork']
    assert [e[3] for e in forks] == ['0', '1', '2']
    for index in (0, 1):
        child = next(e for e in log if e[1] == 'after_fork'
                     and e[2] == str(index))
        # worker N+1 is started only after worker N ran its after_fork()
        assert log.index(child) < log.index(forks[index + 1])
    wait_until(lambda: calls(path, 'on_start'), 10)


@pytest.mark.parametrize('option', ['start_worker_delay',
                                    'start_worker_delay_rand',
                                    'restart_worker_interval',
                                    'graceful_timeout'])
@pytest.mark.parametrize('value', [-1, 'soon', None])
def test_pacing_options_are_validated(option, value):
    with pytest.raises(ValueError, match=option):
        _workers.WorkerPool(_workers.Worker, **{option: value})


def test_restart_worker_interval_grows_on_repeated_crashes(start_server,
                                                           tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=1,
                         RESTART_INTERVAL=0.5, ready_workers=1)
    for expected in ('0.5', '1.0'):
        old = live_pids(server)[0]
        os.kill(old, signal.SIGKILL)
        server.wait_log(rf'worker LifeWorker\[0\] starts again in '
                        rf'{expected}s')
        wait_until(lambda: replaced(server, old), 15)  # noqa: B023
    assert server.get('/api/pid').status == 200


# -- stack dumps ----------------------------------------------------------------------

def test_sigcont_dumps_every_stack_and_serving_goes_on(start_server,
                                                       tmp_path):
    server, path = start(start_server, tmp_path, WORKERS=2)
    results = []
    thread = in_thread(server, '/api/nap/3', results)
    pid = busy_pid(server)
    wait_until(lambda: calls(path, 'nap_started', pid), 10)
    server.signal(signal.SIGCONT)
    server.wait_log(r'stacks of dispatcher')
    server.wait_log(r'in _on_signal_readable')  # the dispatcher's own loop
    wait_until(lambda: server.count_log(r'stacks of worker') >= 2, 10)
    server.wait_log(r'line \d+, in napping_in_a_handler')
    thread.join(30)
    assert results and results[0].status == 200
    assert results[0].json()['pid'] == pid
    assert pid_alive(pid)
    assert server.get('/api/pid').status == 200


def test_dump_stacks_false_ignores_sigcont(start_server, tmp_path):
    server, _ = start(start_server, tmp_path, WORKERS=1, DUMP_STACKS=0,
                      ready_workers=1)
    server.signal(signal.SIGCONT)
    server.signal(signal.SIGTTIN)   # handled after it, in order
    server.wait_log(r'resized to 2 workers')
    assert 'stacks of' not in server.log
    assert server.get('/api/pid').status == 200


def test_format_stacks_names_every_thread():
    started, release = threading.Event(), threading.Event()

    def parked_in_a_known_place():
        started.set()
        release.wait(10)
    thread = threading.Thread(target=parked_in_a_known_place, name='parker')
    thread.start()
    started.wait(5)
    try:
        text = stackdump.format_stacks('test')
    finally:
        release.set()
        thread.join(5)
    assert 'Thread parker' in text
    assert 'in parked_in_a_known_place' in text
    assert 'in test_format_stacks_names_every_thread' in text


def test_crash_restart_interval_doubles_up_to_a_cap_and_starts_over():
    from uhttp.workers.pool import CRASH_STREAK_RESET
    from uhttp.workers.worker_handle import WorkerHandle
    pool = _workers.WorkerPool(_workers.Worker, restart_worker_interval=1)
    handle = WorkerHandle(pool, 0)
    now = 1000.0
    handle.started = now - 1    # crashed a second after it started
    delays = [pool._crash_delay(handle, now) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    handle.started = now - CRASH_STREAK_RESET - 1   # ran a long while
    assert pool._crash_delay(handle, now) == 1
    slow = _workers.WorkerPool(_workers.Worker, restart_worker_interval=45)
    assert [slow._crash_delay(handle, now) for _ in range(2)] == [45, 45]
    assert _workers.WorkerPool(_workers.Worker)._crash_delay(handle, now) == 0
