"""Run-once jobs with real processes: FileLock and RedisLock exclusion,
one leader among runners, failover when the leader is SIGKILLed, run-once
semantics, SIGTERM, failing jobs, pickling into a spawned runner.

Every process a test starts is stopped by PID at its end.
"""

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading

import pytest

from conftest import (
    APPS, ROOT, RecordingLog, running_redis, wait_until)
from uhttp.workers.jobs import Job, JobRunner, run_job_runner
from uhttp.workers.locks import FileLock, RedisLock, make_lock

RUNNER = os.path.join(APPS, 'singleton_runner.py')
HOLDER = os.path.join(APPS, 'singleton_holder.py')
TICK = 0.2      # singleton_jobs.TICK_INTERVAL



def read_lines(path):
    try:
        with open(path, encoding='ascii') as handle:
            return [line.split() for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def runs(path):
    """[(pid, time)] of the tick job's runs."""
    return [(int(pid), float(stamp)) for pid, stamp in read_lines(path)]


def assert_about_once_per_interval(entries, interval):
    # derived from the runs' own timestamps: two leaders would double it
    span = entries[-1][1] - entries[0][1]
    expected = span / interval + 1
    assert expected / 3 <= len(entries) <= 1.5 * expected + 1, (
        len(entries), expected)


def stop_process(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def runner_processes(tmp_path):
    """Factory: start singleton_runner.py processes; all stopped at the end."""
    procs = []
    env = dict(os.environ, RUNS_FILE=str(tmp_path / 'runs.txt'),
               MIGRATIONS_FILE=str(tmp_path / 'migrations.txt'),
               PYTHONUNBUFFERED='1')

    def start(*args, jobs='tick'):
        # pylint: disable-next=consider-using-with
        log = open(tmp_path / f'runner{len(procs)}.log', 'w')
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, RUNNER, *args], env=dict(env, JOBS=jobs),
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        procs.append(proc)
        return proc
    start.runs = env['RUNS_FILE']
    start.migrations = env['MIGRATIONS_FILE']
    yield start
    for proc in procs:
        stop_process(proc)


def test_file_lock_is_exclusive_across_processes(tmp_path):
    path = str(tmp_path / 'jobs.lock')
    holder = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, HOLDER, path], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == f'held {holder.pid}\n'
        with open(path, encoding='ascii') as handle:
            assert handle.read() == f'{holder.pid}\n'
        lock = FileLock(path)
        assert not lock.acquire() and not lock.held
        assert not FileLock(path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        # the kernel released it with the holder
        assert lock.acquire() and lock.held
        with open(path, encoding='ascii') as handle:
            assert handle.read() == f'{os.getpid()}\n'
        assert not FileLock(path).acquire()     # exclusive in-process too
        lock.release()
        assert not lock.held and FileLock(path).acquire()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)


def test_one_leader_runs_the_jobs_and_another_takes_over(runner_processes,
                                                          tmp_path):
    lock = str(tmp_path / 'jobs.lock')
    jobs = 'tick,migrate,migrate_for_good'
    first = runner_processes('file', lock, jobs=jobs)
    second = runner_processes('file', lock, jobs=jobs)
    entries = wait_until(lambda: (lambda r: len(r) >= 12 and r)(
        runs(runner_processes.runs)), 20)
    leader = entries[0][0]
    assert leader in (first.pid, second.pid)
    assert {pid for pid, _ in entries} == {leader}
    assert_about_once_per_interval(entries, TICK)

    other = second.pid if leader == first.pid else first.pid
    os.kill(leader, signal.SIGKILL)
    (first if leader == first.pid else second).wait(10)
    before = len(runs(runner_processes.runs))
    after = wait_until(lambda: (lambda r: len(r) >= 6 and r)(
        runs(runner_processes.runs)[before:]), 20,
        message='no runner took over')
    assert {pid for pid, _ in after} == {other}
    assert_about_once_per_interval(after, TICK)
    with open(lock, encoding='ascii') as handle:
        assert handle.read() == f'{other}\n'
    # run-once: once per acquisition, unless once_ever
    assert sorted(map(tuple, read_lines(runner_processes.migrations))) == \
        sorted([('migrate', str(leader)), ('migrate_for_good', str(leader)),
                ('migrate', str(other))])
    assert os.path.exists(f'{lock}.migrate_for_good.done')


def test_spawned_runner_stops_on_sigterm_and_releases(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(APPS)
    import singleton_jobs  # pylint: disable=import-outside-toplevel
    runs_file = tmp_path / 'runs.txt'
    monkeypatch.setenv('RUNS_FILE', str(runs_file))
    lock = str(tmp_path / 'jobs.lock')
    # decorated jobs pickle by reference, as the dispatcher will send them
    assert pickle.loads(pickle.dumps(singleton_jobs.tick)) is \
        singleton_jobs.tick
    process = multiprocessing.get_context('spawn').Process(
        target=run_job_runner, args=([singleton_jobs.tick], ('file', lock)),
        kwargs={'poll_interval': 0.1})
    process.start()
    try:
        wait_until(lambda: len(runs(runs_file)) >= 2, 20)
        assert {pid for pid, _ in runs(runs_file)} == {process.pid}
        with open(lock, encoding='ascii') as handle:
            assert handle.read() == f'{process.pid}\n'
        os.kill(process.pid, signal.SIGTERM)
        process.join(10)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            process.join(5)
    with open(lock, encoding='ascii') as handle:
        assert handle.read() == ''      # released on the way out
    assert FileLock(lock).acquire()


CALLS = []


def broken():
    raise RuntimeError('broken job')


def counted():
    CALLS.append('counted')


def flaky_once(context):
    CALLS.append(context.name)
    if CALLS.count(context.name) == 1:
        raise ValueError('first try fails')


def test_failing_jobs_are_logged_and_rescheduled(tmp_path):
    CALLS.clear()
    log = RecordingLog()
    lock = FileLock(str(tmp_path / 'jobs.lock'))
    runner = JobRunner([Job(broken, 0.05), Job(counted, 0.05),
                        Job(flaky_once, retry_delay=0.05)],
                       lock, poll_interval=0.05, log=log)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: CALLS.count('counted') >= 3 and
                   log.text().count('job broken failed') >= 2, 10)
        assert runner.is_leader
        assert CALLS.count('flaky_once') == 2   # failed, retried, done
        text = log.text()
        assert 'Traceback' in text and 'RuntimeError: broken job' in text
        assert 'job flaky_once failed (next try in 0.05s)' in text
        assert 'job flaky_once done' in text
    finally:
        runner.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert not lock.held and FileLock(lock.path).acquire()


def module_function():
    """A plain module-level job function."""


def test_jobs_locks_and_specs_pickle(tmp_path, monkeypatch):
    job = pickle.loads(pickle.dumps(Job(module_function, 5, name='plain')))
    assert (job.func, job.interval, job.name) == (module_function, 5, 'plain')
    lock = FileLock(str(tmp_path / 'a.lock'))
    assert lock.acquire()
    copy = pickle.loads(pickle.dumps(lock))
    assert copy.path == lock.path and not copy.held
    lock.release()
    assert isinstance(make_lock(('file', lock.path)), FileLock)
    redis_lock = make_lock(('redis', 'redis://127.0.0.1:1/0', 'key', 3))
    assert (redis_lock.key, redis_lock.ttl) == ('key', 3)
    assert pickle.loads(pickle.dumps(redis_lock)).url == redis_lock.url
    with pytest.raises(ValueError, match='bad lock spec'):
        make_lock(('etcd', 'x'))
    with pytest.raises(ValueError, match='once_ever applies to run-once'):
        Job(module_function, 5, once_ever=True)
    monkeypatch.setitem(sys.modules, 'redis', None)     # not installed
    with pytest.raises(ImportError, match='pip install redis'):
        RedisLock('redis://127.0.0.1:1/0', 'key').acquire()


# -- Redis --------------------------------------------------------------------

@pytest.fixture(scope='module')
def redis_url(tmp_path_factory):
    """A real redis-server on a free 127.0.0.1 port, for this module."""
    with running_redis(tmp_path_factory.mktemp('redis')) as (url, _client):
        yield url


def test_redis_lock_exclusion_renewal_and_tokens(redis_url):
    import redis  # pylint: disable=import-outside-toplevel
    key = 'uhttp-test:exclusion'
    raw = redis.Redis.from_url(redis_url)
    first, second = RedisLock(redis_url, key, 1.0), RedisLock(redis_url, key,
                                                               1.0)
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    token = raw.get(key)
    raw.pexpire(key, 100)       # about to expire: a renewal extends it
    assert first.renew() and raw.pttl(key) > 100
    assert not second.renew()
    second.release()            # not the holder: deletes nothing
    assert raw.get(key) == token

    raw.set(key, 'intruder')    # someone else's token now
    assert not first.renew() and not first.held
    first.release()
    assert raw.get(key) == b'intruder'
    raw.delete(key)
    assert second.acquire()
    second.release()
    assert raw.get(key) is None

    assert not first.is_done('migration')
    first.mark_done('migration')
    assert second.is_done('migration')
    raw.close()


def test_redis_runners_fail_over_after_the_ttl(runner_processes, redis_url):
    import redis  # pylint: disable=import-outside-toplevel
    ttl, key = 0.6, 'uhttp-test:runners'
    spec = ('redis', redis_url, key, str(ttl))
    first = runner_processes(*spec)
    second = runner_processes(*spec)
    wait_until(lambda: runs(runner_processes.runs), 20)
    raw = redis.Redis.from_url(redis_url)
    token = raw.get(key)
    # renewal keeps the lock, with the same token, for several ttls
    entries = wait_until(lambda: (lambda r: r[-1][1] - r[0][1] > 3 * ttl and
                                  r)(runs(runner_processes.runs)), 20)
    assert raw.get(key) == token
    raw.close()
    leader = entries[0][0]
    assert {pid for pid, _ in entries} == {leader}
    assert leader in (first.pid, second.pid)
    assert_about_once_per_interval(entries, TICK)

    other = second.pid if leader == first.pid else first.pid
    os.kill(leader, signal.SIGKILL)
    (first if leader == first.pid else second).wait(10)
    before = len(runs(runner_processes.runs))
    after = wait_until(lambda: (lambda r: len(r) >= 3 and r)(
        runs(runner_processes.runs)[before:]), 20,
        message='no runner took over after the key expired')
    assert {pid for pid, _ in after} == {other}
