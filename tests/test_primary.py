"""The primary worker: one live worker per pool (per host, or per service
through Redis) is primary, on_primary() runs in its loop thread once per
promotion, and a SIGKILLed primary is replaced by a waiting worker.

Workers are asked over HTTP: POST /ask/<pool> on the dispatcher broadcasts a
report request to every worker of the pool, which writes its pid and
is_primary_worker() into a file of RECORD_DIR.
"""

import json
import os
import signal
import threading
import uuid

import pytest

from conftest import APPS, Server, pid_alive, running_redis, wait_until
from uhttp.workers import Worker
from uhttp.workers.locks import FileLock
from uhttp.workers.primary import primary_lock_path

APP = os.path.join(APPS, 'primary_app.py')
TTL = 3.0       # the Redis lock's ttl in the service-scope test


def pool_pids(server, pool):
    """PIDs of the live, ready workers of `pool`."""
    for status in server.get('/monitor').json()['pools']:
        if status['name'] == pool:
            return {w['pid'] for w in status['workers']
                    if w['alive'] and w['ready']}
    raise AssertionError(f'no pool {pool}')


def read_report(record_dir, pool, pid):
    try:
        with open(os.path.join(record_dir, f'{pool}.{pid}.json'),
                  encoding='utf-8') as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def primaries(servers, record_dir, pool, workers):
    """Ask every worker of `pool` on each server; once all `workers` live
    workers have answered this round, the set of the pids that say they
    are primary (None when some did not answer: a worker was replaced
    meanwhile, ask again)."""
    token = uuid.uuid4().hex
    pids = set()
    for server in servers:
        pids |= pool_pids(server, pool)     # before asking: they all hear it
    if len(pids) < workers:
        return None
    for server in servers:
        assert server.request('POST', f'/ask/{pool}',
                              {'token': token}).status == 200

    def answered():
        reports = [read_report(record_dir, pool, pid) for pid in pids]
        if all(r is not None and r['token'] == token for r in reports):
            return reports
        return None
    try:
        reports = wait_until(answered, 3)
    except AssertionError:
        return None
    return {r['pid'] for r in reports if r['primary']}


def one_primary(servers, record_dir, pool, workers, exclude=()):
    """Poll until exactly one worker of `pool` says it is primary (and it
    is not one of `exclude`); return its pid."""
    def found():
        pids = primaries(servers, record_dir, pool, workers)
        if pids is not None and len(pids) == 1 and not pids & set(exclude):
            return pids
        return None
    pids = wait_until(found, 20, interval=0.1,
                      message=lambda: f'{pool}: not exactly one primary:\n'
                      + '\n'.join(s.log for s in servers))
    return pids.pop()


def promotions(record_dir, pool):
    """(pid, loop thread ident, main thread ident) of every on_primary()."""
    try:
        with open(os.path.join(record_dir, f'{pool}.promotions'),
                  encoding='ascii') as handle:
            return [tuple(int(x) for x in line.split()) for line in handle]
    except FileNotFoundError:
        return []


def promoted(record_dir, pool, pid, servers=()):
    """Wait until on_primary() of `pid` is recorded; return every record."""
    return wait_until(
        lambda: [r for r in promotions(record_dir, pool) if r[0] == pid]
        and promotions(record_dir, pool), 10,
        message=lambda: f'{pool}: on_primary() of {pid} not recorded in '
        f'{promotions(record_dir, pool)}:\n'
        + '\n'.join(s.log for s in servers))


@pytest.fixture
def servers():
    """Factory: start primary_app.py dispatchers; all stopped at the end."""
    started = []

    def start(record_dir, workers=3, **env):
        server = Server(APP, env=dict(
            {key: str(value) for key, value in env.items()},
            RECORD_DIR=str(record_dir), WORKERS=str(workers)))
        started.append(server)
        return server.start(ready_workers=2 * workers)

    yield start
    for server in started:
        server.stop()


def test_one_primary_per_pool_and_on_primary_in_the_loop_thread(
        servers, tmp_path):
    server = servers(tmp_path, workers=3)
    for pool in ('alpha', 'beta'):
        primary = one_primary([server], tmp_path, pool, 3)
        records = promoted(tmp_path, pool, primary)
        # one promotion, and on_primary() ran in the worker's main thread
        # (its loop), not in the thread that waits for the lock
        assert len(records) == 1, records
        pid, thread, main = records[0]
        assert (pid, thread) == (primary, main)
        answer = server.get(f'/{pool}/whoami').json()
        assert answer['primary'] == (answer['pid'] == primary)


def test_sigkill_of_the_primary_promotes_a_waiting_worker(servers, tmp_path):
    server = servers(tmp_path, workers=3)
    for pool in ('alpha', 'beta'):
        first = one_primary([server], tmp_path, pool, 3)
        promoted(tmp_path, pool, first)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not pid_alive(first), 10)
        second = one_primary([server], tmp_path, pool, 3, exclude=[first])
        records = promoted(tmp_path, pool, second)
        assert [r[0] for r in records] == [first, second]
        assert all(thread == main for _, thread, main in records), records
        # the replacement of the killed worker waits: still one primary,
        # still two promotions
        assert one_primary([server], tmp_path, pool, 3) == second
        assert len(promotions(tmp_path, pool)) == 2


def test_the_lock_file_names_the_primary_and_lock_dir_is_honoured(
        servers, tmp_path):
    lock_dir = tmp_path / 'locks'
    lock_dir.mkdir()
    server = servers(tmp_path, workers=2, LOCK_DIR=lock_dir)
    primary = one_primary([server], tmp_path, 'alpha', 2)
    path = lock_dir / 'alpha.primary.lock'
    assert path.read_text(encoding='ascii').split() == [str(primary)]
    # held by a live worker: nobody else can take it
    assert not FileLock(str(path)).acquire()


def test_the_default_lock_file_is_named_after_the_pool_and_the_port():
    path = primary_lock_path('my pool', 8080)
    assert os.path.basename(path) == 'uhttp.workers.primary.8080.my_pool.lock'
    assert primary_lock_path('p', 8080, '/run/app') == '/run/app/p.primary.lock'
    with pytest.raises(RuntimeError, match='PRIMARY_LOCK_DIR'):
        primary_lock_path('p')


class Lone(Worker):
    """A worker built without a pool (its lock directory set by the test)."""


def lone(lock_dir):
    worker = Lone(pool_name='lone')
    worker.PRIMARY_LOCK_DIR = str(lock_dir)
    return worker


def election_threads():
    return [t for t in threading.enumerate()
            if t.name == 'uhttp.workers.primary' and t.is_alive()]


def test_the_election_starts_on_first_use_and_waits_in_a_thread(tmp_path):
    first, second = lone(tmp_path), lone(tmp_path)
    assert not election_threads()
    try:
        assert first.is_primary_worker()
        assert not election_threads()   # the holder waits for nothing
        assert not second.is_primary_worker()
        assert len(election_threads()) == 1     # the other waits in flock
        first._primary_at_exit()  # pylint: disable=protected-access
        wait_until(second.is_primary_worker, 10)
        wait_until(lambda: not election_threads(), 10)
    finally:
        first._primary_at_exit()  # pylint: disable=protected-access
        second._primary_at_exit()  # pylint: disable=protected-access


def test_a_worker_takes_part_in_one_scope_only(tmp_path):
    worker = lone(tmp_path)
    try:
        assert worker.is_primary_worker() is True
        assert worker.is_primary_worker('host') is True
        assert not FileLock(str(tmp_path / 'lone.primary.lock')).acquire()
        with pytest.raises(ValueError, match='scope'):
            worker.is_primary_worker('service')
    finally:
        worker._primary_at_exit()  # pylint: disable=protected-access
    assert FileLock(str(tmp_path / 'lone.primary.lock')).acquire()


def test_worker_lock_is_the_file_lock():
    import uhttp.workers  # pylint: disable=import-outside-toplevel
    assert uhttp.workers.WorkerLock is FileLock


# -- across hosts: Redis --------------------------------------------------------

@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server on a free 127.0.0.1 port: (url, client)."""
    with running_redis(tmp_path, 'redis-server is not installed: the '
                       'service-wide primary needs a Redis server to test '
                       'against') as server:
        yield server


def test_service_scope_one_primary_across_dispatchers_and_failover(
        servers, tmp_path, redis_url):
    url, client = redis_url
    env = {'SCOPE': 'service', 'REDIS_URL': url, 'TTL': TTL}
    # two dispatchers stand for two hosts: one primary per pool among all
    both = [servers(tmp_path, workers=2, **env),
            servers(tmp_path, workers=2, **env)]
    first = one_primary(both, tmp_path, 'alpha', 4)
    promoted(tmp_path, 'alpha', first, both)
    assert one_primary(both, tmp_path, 'beta', 4)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not pid_alive(first), 10)
    # the dead worker's key expires within the ttl; another worker takes it
    second = one_primary(both, tmp_path, 'alpha', 4, exclude=[first])
    records = promoted(tmp_path, 'alpha', second, both)
    assert [r[0] for r in records] == [first, second]
    assert all(thread == main for _, thread, main in records), records
    # a live primary whose key is taken over steps down (on_primary_lost),
    # and the election goes on once the intruder's key expires
    client.set('uhttp.workers.primary:alpha', 'intruder', px=int(TTL * 1000))
    wait_until(lambda: any(
        s.count_log(f'pid {second} is no longer the primary worker') for s in
        both), 10, message=lambda: '\n'.join(s.log for s in both))
    third = one_primary(both, tmp_path, 'alpha', 4)
    promoted(tmp_path, 'alpha', third, both)
