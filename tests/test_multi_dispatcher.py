"""Several dispatchers per host (`dispatchers=N`, `--dispatchers N`).

Real processes: a supervisor forks N dispatchers that serve on the socket
it bound. Both take connections; a SIGKILLed one is replaced; SIGTERM stops
them all gracefully; owned services and run-once jobs run once per host; a
bind error stays one line and exit status 1.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import uhttp.workers as _workers
from uhttp.workers.supervisor import MAX_DELAY, restart_delay

from conftest import APPS, Server, free_port, pid_alive, wait_until
from test_cli import CliServer, cli_env

APP = os.path.join(APPS, 'multi_app.py')
STARTED = re.compile(r'dispatcher (\d+) started \(pid (\d+)\)')


def dispatcher_pids(server):
    """{index: pid} of the dispatchers the supervisor started last."""
    pids = {}
    for line in server.log.splitlines():
        match = STARTED.search(line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
    return pids


def children_of(pid):
    """PIDs of the live children of `pid` (from /proc)."""
    path = f'/proc/{pid}/task/{pid}/children'
    if not os.path.exists(path):
        pytest.skip('this kernel does not list /proc children')
    with open(path, encoding='ascii') as handle:
        return [int(child) for child in handle.read().split()]


def seen_dispatchers(server, wanted, path='/pid', key='pid'):
    """Send fresh requests until the dispatchers of `wanted` pids all
    answered; every answer must be a 200 of one of them."""
    seen = set()

    def all_seen():
        result = server.get(path)
        assert result.status == 200, result
        pid = result.json()[key]
        assert pid in wanted, (pid, wanted)
        seen.add(pid)
        return seen >= set(wanted)
    wait_until(all_seen, 20, interval=0,
               message=f'not every dispatcher answered: {seen} of {wanted}')
    return seen


@pytest.fixture
def multi():
    servers = []

    def start(env=None, ready_workers=2):
        server = Server(APP, env=env)
        servers.append(server)
        server.start(ready_workers)
        wait_until(lambda: server.count_log('listening on') >= 2, 20)
        return server

    yield start
    for server in servers:
        server.stop()


def test_two_dispatchers_share_the_connections(multi):
    server = multi()
    pids = dispatcher_pids(server)
    assert sorted(pids) == [0, 1]
    assert server.pid not in pids.values()
    assert set(children_of(server.pid)) == set(pids.values())
    seen_dispatchers(server, set(pids.values()))
    # the pool route: each dispatcher's own worker answers
    seen_dispatchers(server, set(pids.values()), '/api/where', 'dispatcher')


def test_a_killed_dispatcher_is_replaced(multi):
    server = multi()
    pids = dispatcher_pids(server)
    victim = pids[1]
    victim_workers = children_of(victim)
    assert victim_workers
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r'dispatcher 1 killed by signal 9; restarting it')
    # the survivor answers meanwhile: the listening socket stays open
    for _ in range(10):
        assert server.get('/pid').json()['pid'] == pids[0]
    wait_until(lambda: dispatcher_pids(server)[1] != victim, 20)
    replacement = dispatcher_pids(server)[1]
    wait_until(lambda: all(not pid_alive(pid) for pid in victim_workers),
               20, message='the dead dispatcher\'s workers stayed')
    seen_dispatchers(server, {pids[0], replacement})
    seen_dispatchers(server, {pids[0], replacement}, '/api/where',
                     'dispatcher')
    assert set(children_of(server.pid)) == {pids[0], replacement}


def test_sigterm_stops_every_dispatcher_after_in_flight_requests(
        multi, tmp_path):
    started = tmp_path / 'started'
    started.touch()
    server = multi(env={'WORKERS': '2', 'STARTED_FILE': str(started)},
                   ready_workers=4)
    pids = dispatcher_pids(server)
    results = []

    def call():
        results.append(server.get('/api/sleep/1500', timeout=30))
    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(started.read_text().split()) == 3, 20)
    server.signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert [r.status for r in results] == [200, 200, 200]
    assert server.wait_exit() == 0
    assert all(not pid_alive(pid) for pid in pids.values())
    assert server.count_log(r'dispatcher \d exited with status 0') == 2


def test_sigquit_stops_every_dispatcher_at_once(multi):
    server = multi()
    pids = dispatcher_pids(server)
    server.signal(signal.SIGQUIT)
    assert server.wait_exit() == 0
    assert all(not pid_alive(pid) for pid in pids.values())


def test_services_and_run_once_jobs_run_once_per_host(multi, tmp_path):
    job_file = tmp_path / 'job'
    starts = tmp_path / 'service-starts'
    server = multi(env={'JOB_FILE': str(job_file),
                        'SERVICE_PORT': str(free_port()),
                        'SERVICE_STARTS': str(starts)})
    pids = dispatcher_pids(server)
    # the workers of both dispatchers reach the one service
    seen_dispatchers(server, set(pids.values()), '/api/helper', 'dispatcher')
    wait_until(job_file.exists, 20)
    assert len(job_file.read_text().split()) == 1
    assert len(starts.read_text().split()) == 1
    assert server.count_log(r'job process started') == 1
    assert len({server.get('/api/helper').json()['service']
                for _ in range(6)}) == 1


def test_a_bind_error_is_one_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(APP, env={'PORT': str(port)})
        try:
            code = server.wait_exit()
        finally:
            server.stop()
    assert code == 1
    assert server.log.splitlines() == [
        f'cannot listen on 127.0.0.1:{port}: address already in use']


def test_the_command_line_option(tmp_path):
    pid_file = tmp_path / 'app.pid'
    server = CliServer('cli_app:CliDispatcher', '--bind', '127.0.0.1:0',
                       '--dispatchers', '2', '--pid', str(pid_file),
                       env=cli_env())
    try:
        server.start()
        wait_until(lambda: server.count_log('listening on') >= 2, 20)
        pids = set(dispatcher_pids(server).values())
        assert len(pids) == 2
        assert int(pid_file.read_text()) == server.pid
        seen = set()

        def both():
            seen.add(server.get('/api/hello').json()['pid'])
            return len(seen) >= 2
        # one worker per dispatcher at least: two different workers answer
        wait_until(both, 20, interval=0)
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert not pid_file.exists()
    finally:
        server.stop()


def test_clients_of_a_killed_dispatcher_see_a_closed_connection(
        multi, tmp_path):
    started = tmp_path / 'started'
    started.touch()
    server = multi(env={'STARTED_FILE': str(started)})
    outcome = []

    def call():
        try:
            outcome.append(server.get('/api/sleep/20000', timeout=30))
        except (ConnectionError, http.client.HTTPException) as err:
            outcome.append(err)
    thread = threading.Thread(target=call)
    thread.start()
    wait_until(lambda: started.read_text().strip(), 20)
    worker = int(started.read_text().split()[0])
    owner = [pid for pid in dispatcher_pids(server).values()
             if worker in children_of(pid)]
    assert len(owner) == 1
    os.kill(owner[0], signal.SIGKILL)
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], (ConnectionError, http.client.HTTPException))
    # the host still answers on the survivor, then on both
    assert server.get('/pid').status == 200


def test_the_restart_back_off_doubles_up_to_its_cap():
    assert [restart_delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert restart_delay(50) == MAX_DELAY


def test_a_killed_supervisor_takes_its_dispatchers_along(multi):
    server = multi()
    pids = dispatcher_pids(server)
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait_exit() == -signal.SIGKILL
    wait_until(lambda: all(not pid_alive(pid) for pid in pids.values()), 20,
               message='dispatchers outlived their supervisor')


def test_sigttin_reaches_every_dispatcher(multi):
    server = multi()
    pids = dispatcher_pids(server)
    assert len([w for pid in pids.values() for w in children_of(pid)]) == 2
    server.signal(signal.SIGTTIN)   # one more worker in each dispatcher
    wait_until(lambda: server.count_log(r'resized to 2 workers') == 2, 20)
    wait_until(lambda: all(len(children_of(pid)) == 2
                           for pid in pids.values()), 20)
    seen_dispatchers(server, set(pids.values()), '/api/where', 'dispatcher')


class Load:
    """A client thread sending GET `path` until stopped (bounded in count
    and time), on new connections or on one kept-alive connection; keeps
    every status, or the error instead.

    On a kept-alive connection the server may close an idle connection
    just as the next request leaves (RFC 9112 §9.6): like any HTTP client
    it then sends that GET again on a new connection once, counted in
    `retried`, not as a failure."""

    def __init__(self, server, path, keep_alive, limit=50_000, seconds=60):
        self.server, self.path, self.keep_alive = server, path, keep_alive
        self.limit, self.deadline = limit, time.monotonic() + seconds
        self.results, self.retried, self.closed_by_server = [], 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _more(self):
        return not self._stop.is_set() and len(self.results) < self.limit \
            and time.monotonic() < self.deadline

    def _run(self):
        if not self.keep_alive:
            while self._more():
                try:
                    self.results.append(self.server.get(self.path).status)
                except Exception as err:  # pylint: disable=broad-except
                    self.results.append(repr(err))
            return
        connection, used = None, 0
        while self._more():
            if connection is None:
                connection, used = http.client.HTTPConnection(
                    '127.0.0.1', self.server.port, timeout=10), 0
            try:
                connection.request('GET', self.path)
                response = connection.getresponse()
                response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as err:
                connection.close()
                connection = None
                if used:
                    self.retried += 1   # sent again on a new connection
                else:
                    self.results.append(repr(err))
                continue
            except Exception as err:  # pylint: disable=broad-except
                self.results.append(repr(err))
                connection.close()
                connection = None
                continue
            used += 1
            self.results.append(response.status)
            if response.will_close:
                self.closed_by_server += 1
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        return self.results


def test_sighup_replaces_every_dispatcher_without_a_failed_request(multi):
    server = multi()
    old = dispatcher_pids(server)
    old_workers = [w for pid in old.values() for w in children_of(pid)]
    loads = [Load(server, '/api/where', keep_alive=False),
             Load(server, '/api/where', keep_alive=True)]
    try:
        wait_until(lambda: all(len(load.results) >= 20 for load in loads), 20)
        server.signal(signal.SIGHUP)
        server.wait_log(r'replacing the 2 dispatchers one at a time')
        server.signal(signal.SIGHUP)   # during the roll: ignored
        server.wait_log(r'SIGHUP ignored: a rolling restart of the '
                        r'dispatchers is under way')
        server.wait_log(r'rolling restart of the dispatchers done', 60)
        counts = [len(load.results) for load in loads]
        wait_until(lambda: all(len(load.results) >= count + 20
                               for load, count in zip(loads, counts)), 20)
    finally:
        results = [load.stop() for load in loads]
    for load, statuses in zip(loads, results):
        failures = [r for r in statuses if r != 200]
        assert statuses and not failures, (load.keep_alive, failures[:5])
    # the kept-alive connection was handed over: closed after an answer
    assert loads[1].closed_by_server >= 1
    new = dispatcher_pids(server)
    assert sorted(new) == [0, 1]
    assert not set(new.values()) & set(old.values())
    assert set(children_of(server.pid)) == set(new.values())
    wait_until(lambda: not any(pid_alive(pid) for pid in
                               list(old.values()) + old_workers), 20)
    seen_dispatchers(server, set(new.values()), '/api/where', 'dispatcher')
    assert server.count_log(r'restarting it in') == 0


def test_a_replacement_that_fails_keeps_the_old_dispatcher(multi, tmp_path):
    fail = tmp_path / 'fail'
    server = multi(env={'FAIL_FILE': str(fail)})
    old = dispatcher_pids(server)
    fail.touch()   # the replacement's worker cannot start: it exits
    server.signal(signal.SIGHUP)
    server.wait_log(r'dispatcher 0: its replacement \(pid \d+\) exited with '
                    r'status \d+ before it was ready; keeping pid '
                    rf'{old[0]}; rolling restart stopped', 60)
    wait_until(lambda: set(children_of(server.pid)) == set(old.values()), 20)
    seen_dispatchers(server, set(old.values()), '/api/where', 'dispatcher')
    fail.unlink()   # a later SIGHUP goes through
    server.signal(signal.SIGHUP)
    server.wait_log(r'rolling restart of the dispatchers done', 60)
    assert not set(children_of(server.pid)) & set(old.values())


def test_sighup_replaces_dispatcher_0_with_its_services_after_it(
        multi, tmp_path):
    starts = tmp_path / 'service-starts'
    server = multi(env={'SERVICE_PORT': str(free_port()),
                        'SERVICE_STARTS': str(starts)})
    old = dispatcher_pids(server)
    wait_until(lambda: starts.exists() and starts.read_text().strip(), 20)
    load = Load(server, '/pid', keep_alive=False)
    try:
        wait_until(lambda: len(load.results) >= 20, 20)
        server.signal(signal.SIGHUP)
        server.wait_log(r'dispatcher 0 \(pid \d+\) hands over its services')
        server.wait_log(r'rolling restart of the dispatchers done', 60)
        count = len(load.results)
        wait_until(lambda: len(load.results) >= count + 20, 20)
    finally:
        results = load.stop()
    assert set(results) == {200}, [r for r in results if r != 200][:5]
    new = dispatcher_pids(server)
    assert not set(new.values()) & set(old.values())
    # the new dispatcher 0 started the service again: the workers of both
    # reach it
    wait_until(lambda: len(starts.read_text().split()) == 2, 20)
    seen_dispatchers(server, set(new.values()), '/api/helper', 'dispatcher')


def test_status_reports_the_whole_host(multi):
    server = multi()
    pids = dispatcher_pids(server)

    def host_view():
        status = server.get('/status').json()
        # a snapshot is up to a second old: the other dispatcher's may
        # still be one from before its workers ran
        if len(status.get('dispatchers', ())) == 2 and all(
                d['workers'] == 1 for d in status['dispatchers']):
            return status
        return None
    for _ in range(2):   # ask both dispatchers (new connections)
        status = wait_until(host_view, 20)
        assert status['pid'] in pids.values()
        assert {(d['index'], d['pid']) for d in status['dispatchers']} == \
            set(pids.items())
        assert all(d['state'] == 'running' for d in status['dispatchers'])
        [pool] = status['pools']
        assert pool['name'] == 'MultiWorker' and pool['alive_count'] == 2
        assert sorted(w['dispatcher'] for w in pool['workers']) == [0, 1]
    seen_dispatchers(server, set(pids.values()), '/status')


def test_a_dead_dispatchers_snapshot_is_ignored(tmp_path):
    from uhttp.workers import host_status  # pylint: disable=import-outside-toplevel
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    live = host_status.HostReport(str(tmp_path), 1)
    live.write(0.0, 'running', {'status': {'state': 'running', 'pending': 3}})
    record = {'pid': gone.pid, 'index': 0, 'status': {'pending': 5}}
    (tmp_path / f'dispatcher-{gone.pid}.json').write_text(json.dumps(record))
    (tmp_path / 'dispatcher-1.json').write_text('{half a fi')  # skipped
    found = host_status.read_snapshots(str(tmp_path))
    assert [r['pid'] for r in found] == [os.getpid()]
    merged = host_status.merge_status(
        {'state': 'running', 'pending': 1, 'pools': []}, 0, found)
    assert merged['pending'] == 4
    assert [d['index'] for d in merged['dispatchers']] == [0, 1]


def _counts(requests):
    return {'requests': [['MultiWorker', '/api/where', 200, requests]],
            'latency': [['MultiWorker', [requests] + [0] * 15, 0.5, requests]],
            'exits': [], 'pending': 2, 'streams': 1,
            'pools': [['MultiWorker', 3, 1, 0]],
            'ws': {'open': 1, 'messages_in': 4, 'messages_out': 5}}


def test_an_exited_dispatchers_counters_are_folded_once(tmp_path):
    from uhttp.workers import host_status  # pylint: disable=import-outside-toplevel
    run_dir = str(tmp_path)
    # a live process stands for a dispatcher that exited, not yet reaped
    exited = subprocess.Popen([sys.executable, '-c',
                               'import time; time.sleep(30)'])
    try:
        path = tmp_path / f'dispatcher-{exited.pid}.json'
        path.write_text(json.dumps({
            'pid': exited.pid, 'index': 1, 'token': f'{exited.pid}-1',
            'status': {'state': 'stopped'}, 'metrics': _counts(7)}))
        (tmp_path / 'dispatcher-1.json').write_text('{half a fi')
        reader = host_status.HostReport(run_dir, 0)
        [found] = reader.peer_metrics()
        assert found['requests'][0][-1] == 7
        retired = host_status.RetiredCounts(run_dir)
        retired.fold(exited.pid)
        assert not path.exists()
        [found] = reader.peer_metrics()
        # counters and histograms kept, gauges not
        assert found['requests'] == [['MultiWorker', '/api/where', 200, 7]]
        assert found['latency'][0][3] == 7
        assert (found['pending'], found['streams'], found['pools']) == \
            (0, 0, [])
        assert found['ws'] == {'open': 0, 'messages_in': 4,
                               'messages_out': 5}
        # a snapshot the retired file lists is skipped, should a reader
        # still find it: its counts are taken once
        path.write_text(json.dumps({
            'pid': exited.pid, 'index': 1, 'token': f'{exited.pid}-1',
            'metrics': _counts(7)}))
        assert host_status.read_snapshots(run_dir) == []
        assert len(reader.peer_metrics()) == 1
        # a malformed snapshot is reported, and removed all the same
        path.write_text(json.dumps({
            'pid': exited.pid, 'token': 'x', 'metrics': {'requests': 3}}))
        with pytest.raises(ValueError):
            retired.fold(exited.pid)
        assert not path.exists()
        assert reader.peer_metrics()[0]['requests'][0][-1] == 7
    finally:
        exited.kill()
        exited.wait()


def test_metrics_count_the_requests_of_every_dispatcher(multi):
    server = multi(env={'METRICS': '1'})
    pids = dispatcher_pids(server)
    sent, answered_by = 0, set()
    while sent < 200 or len(answered_by) < 2:
        assert sent < 2000, answered_by   # new connections reach both
        result = server.get('/api/where')
        assert result.status == 200
        answered_by.add(result.json()['dispatcher'])
        sent += 1
    assert answered_by == set(pids.values())

    def total(name, **labels):
        return scraped_total(server, name, **labels)
    # the other dispatcher's figures are up to a second old, and each
    # scrape may reach either dispatcher: every check polls
    wait_until(lambda: total('uhttp_requests_total', status='200') == sent,
               20, message=lambda: f'{total("uhttp_requests_total")} != {sent}')
    wait_until(lambda: total('uhttp_request_duration_seconds_count') == sent,
               20)
    wait_until(lambda: total('uhttp_workers_alive', pool='MultiWorker') == 2,
               20)


def scraped_total(server, name, **labels):
    """The sum of the samples `name` (with `labels`) of one scrape."""
    found = 0
    for family in text_string_to_metric_families(
            server.get('/metrics').body.decode()):
        for sample in family.samples:
            if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def test_counters_do_not_go_down_when_dispatchers_are_replaced(multi):
    server = multi(env={'METRICS': '1'})
    old = dispatcher_pids(server)

    def requests():
        return scraped_total(server, 'uhttp_requests_total')
    load = Load(server, '/api/where', keep_alive=False, limit=2000)
    scraped = []
    try:
        wait_until(lambda: len(load.results) >= 100, 20)
        server.signal(signal.SIGHUP)

        def roll_done():
            scraped.append(requests())
            return server.count_log(r'rolling restart of the dispatchers '
                                    r'done')
        wait_until(roll_done, 60, interval=0.05)
        wait_until(lambda: all(not pid_alive(pid) for pid in old.values()),
                   20)
        scraped.append(requests())
    finally:
        results = load.stop()
    assert set(results) == {200}
    assert not set(dispatcher_pids(server).values()) & set(old.values())
    # each scrape, whichever dispatcher answered it, shows at least what
    # the one before showed, though every dispatcher that counted the
    # first requests has exited
    assert len(scraped) >= 2 and scraped[0] > 0, scraped
    assert scraped == sorted(scraped), scraped
    sent = len(results)
    wait_until(lambda: requests() == sent, 20,
               message=lambda: f'{requests()} != {sent}')
    wait_until(lambda: scraped_total(
        server, 'uhttp_request_duration_seconds_count') == sent, 20)


def test_sigttin_reaches_a_replacement_not_ready_yet(multi, tmp_path):
    hold = tmp_path / 'hold'
    server = multi(env={'HOLD_FILE': str(hold)})
    old = dispatcher_pids(server)
    hold.touch()   # the replacement's worker waits in setup(): not ready
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.count_log(r'dispatcher \d started') == 3, 20)
    replacement = dispatcher_pids(server)[0]
    assert replacement != old[0]
    wait_until(lambda: len(children_of(replacement)) == 1, 20)
    server.signal(signal.SIGTTIN)   # one more worker in each dispatcher
    wait_until(lambda: server.count_log(r'resized to 2 workers') == 3, 20,
               message=lambda: server.log[-2000:])
    hold.unlink()
    server.wait_log(r'dispatcher 0: replacement \(pid \d+\) is ready', 30)
    wait_until(lambda: len(children_of(replacement)) == 2, 20)
    server.wait_log(r'rolling restart of the dispatchers done', 60)
    assert replacement in children_of(server.pid)


def test_a_replacement_deaf_to_sigterm_is_killed_at_stop(multi, tmp_path):
    hold, deaf = tmp_path / 'hold', tmp_path / 'deaf'
    server = multi(env={'HOLD_FILE': str(hold), 'DEAF_FILE': str(deaf),
                        'SHUTDOWN_TIMEOUT': '1'})
    old = dispatcher_pids(server)
    hold.touch()   # the replacement is not ready when the stop comes
    replacement = None
    try:
        server.signal(signal.SIGHUP)
        wait_until(lambda: server.count_log(r'dispatcher \d started') == 3,
                   20)
        replacement = dispatcher_pids(server)[0]
        deaf.write_text(f'{replacement}\n')
        wait_until(lambda: len(children_of(replacement)) == 1, 20)
        server.signal(signal.SIGTERM)
        server.wait_log(r'rolling restart cut short')
        server.wait_log(r'SIGTERM ignored \(DEAF_FILE\)')
        server.wait_log(rf'dispatcher \(pid {replacement}\) did not exit '
                        r'in \d+s: killing it', 30)
        assert server.wait_exit(30) == 0
    finally:
        hold.unlink()
        if replacement is not None and pid_alive(replacement):
            os.kill(replacement, signal.SIGKILL)   # deaf to the fixture
    assert server.count_log(rf'dispatcher \(pid {replacement}\) killed by '
                            r'signal 9') == 1
    assert not any(pid_alive(pid) for pid in [replacement, *old.values()])


def test_the_ready_timeout_follows_the_pools_and_services():
    from uhttp.workers import supervisor  # pylint: disable=import-outside-toplevel
    assert supervisor.ready_timeout([]) == supervisor.READY_TIMEOUT
    quick = _workers.WorkerPool(_workers.Worker, num_workers=2,
                                setup_timeout=5)
    assert supervisor.ready_timeout([quick]) == supervisor.READY_TIMEOUT
    paced = _workers.WorkerPool(_workers.Worker, num_workers=4,
                                setup_timeout=300, start_worker_delay=2,
                                start_worker_delay_rand=1)
    assert supervisor.ready_timeout([quick, paced]) == 300 + 4 * 3
    service = _workers.Service(name='slow', command=['true'], port=1,
                               startup_timeout=30)
    assert supervisor.ready_timeout([paced], [service]) == 312 + 30


def test_an_idle_connection_does_not_hold_a_roll(multi):
    # a client that connects and sends nothing (a browser's preconnect)
    # must not keep a replaced dispatcher until shutdown_timeout (or until
    # the idle connection times out), longer than this test may run
    server = multi(env={'SHUTDOWN_TIMEOUT': '120',
                        'KEEP_ALIVE_TIMEOUT': '120'})
    old = dispatcher_pids(server)
    idle = [socket.create_connection(('127.0.0.1', server.port), timeout=30)
            for _ in range(4)]
    try:
        wait_until(lambda: server.get('/status').json()['connections'] >= 5,
                   20, message='the idle connections were not accepted')
        server.signal(signal.SIGHUP)
        server.wait_log(r'rolling restart of the dispatchers done', 40)
        for sock in idle:   # closed by the dispatcher that had it
            assert sock.recv(1) == b''
    finally:
        for sock in idle:
            sock.close()
    assert not set(children_of(server.pid)) & set(old.values())
