"""Services with real processes: the connect() race, owner failover, the
restart policy, output files, process-group stop, Unix sockets, the example.

Every process a test starts is stopped by PID at its end; services started
by the test process itself are stopped through their manager or close().
"""

import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading

import pytest

from conftest import (
    APPS, ROOT, RecordingLog, free_port, pid_alive, wait_until)
from uhttp.workers.service import (
    Service, ServiceManager, ServiceUnavailable)

SERVER = os.path.join(APPS, 'service_server.py')
CRASH = os.path.join(APPS, 'service_crash.py')
RACER = os.path.join(APPS, 'service_racer.py')



def server_command(*extra):
    return [sys.executable, SERVER, '--port', '{port}', *extra]


class Racer:
    """A service_racer.py process; commands on stdin, JSON lines back."""

    def __init__(self, port, lock_port, starts):
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, RACER, str(port), str(lock_port), starts],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=ROOT)
        self.pid = self.proc.pid
        self.answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith('{'):
                self.answers.put(json.loads(line))

    def send(self, command):
        self.proc.stdin.write(command + '\n')
        self.proc.stdin.flush()

    def answer(self, timeout=20):
        return self.answers.get(timeout=timeout)

    def stop(self):
        """Let it leave normally (its owner stops the service at exit);
        SIGKILL it by PID if it does not."""
        if self.proc.poll() is None:
            try:
                self.send('exit')
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)


def started_pids(path):
    try:
        with open(path, encoding='ascii') as handle:
            return [int(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def kill_leftovers(pids):
    """Fail loudly, but never leak: SIGKILL service processes still alive."""
    alive = [pid for pid in pids if pid_alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


@pytest.fixture
def race(tmp_path):
    """Factory of racers sharing one service; stops them all at the end."""
    port, lock_port = free_port(), free_port()
    starts = str(tmp_path / 'starts.txt')
    racers = []

    def start(count):
        new = [Racer(port, lock_port, starts) for _ in range(count)]
        for racer in new:
            assert 'ready' in racer.answer()
        racers.extend(new)
        return new
    start.starts = starts
    yield start
    for racer in racers:
        racer.stop()
    servers = started_pids(starts)
    try:
        wait_until(lambda: not any(pid_alive(pid) for pid in servers), 10,
                   message='a service process outlived its owner')
    finally:
        kill_leftovers(servers)


@pytest.fixture
def manage():
    """Factory of started ServiceManagers, stopped at the end."""
    managers = []

    def start(*services):
        log = RecordingLog()
        manager = ServiceManager(list(services), log)
        managers.append(manager)
        manager.start()
        return manager, log
    yield start
    for manager in managers:
        pids = [entry['pid'] for entry in manager.status() if entry['pid']]
        manager.stop()
        kill_leftovers(pids)


def test_eight_racers_start_exactly_one_server(race):
    racers = race(8)
    for racer in racers:    # all of them connect at once
        racer.send('go')
    answers = [racer.answer() for racer in racers]
    assert all('error' not in answer for answer in answers), answers
    assert len({answer['server'] for answer in answers}) == 1
    assert sum(answer['owner'] for answer in answers) == 1
    assert started_pids(race.starts) == [answers[0]['server']]


def test_owner_killed_the_next_connect_takes_over(race):
    first, second, third = race(3)
    first.send('go')
    owned = first.answer()
    assert owned['owner'] is True
    second.send('go')
    assert second.answer() == {'pid': second.pid, 'owner': False,
                               'server': owned['server']}

    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    # PR_SET_PDEATHSIG: the server does not outlive its killed owner
    wait_until(lambda: not pid_alive(owned['server']), 10,
               message='the server outlived its SIGKILLed owner')

    second.send('go')
    taken = second.answer()
    assert taken['owner'] is True and taken['server'] != owned['server']
    third.send('go')
    assert third.answer() == {'pid': third.pid, 'owner': False,
                              'server': taken['server']}
    assert started_pids(race.starts) == [owned['server'], taken['server']]


def test_crashing_service_is_restarted_then_failed(manage, tmp_path):
    out, err, merged = (str(tmp_path / name) for name in
                        ('out.log', 'err.log', 'merged.log'))
    crasher = Service('crasher', [sys.executable, CRASH], port=free_port(),
                      stdout=out, stderr=err, max_restarts=2,
                      restart_delay=0.05, startup_timeout=5)
    once = Service('once', [sys.executable, CRASH], port=free_port(),
                   stdout=merged, stderr='stdout', restart_on_failure=False)
    manager, log = manage(crasher, once)
    changes = []
    manager.on_change(lambda name, state: changes.append((name, state)))
    assert manager.wait_ready(20) is False
    wait_until(lambda: manager.states() == {
        'crasher': 'failed', 'once': 'failed'}, 20)

    status = {entry['name']: entry for entry in manager.status()}
    assert status['crasher']['restarts'] == 2
    assert status['crasher']['pid'] is None
    assert 'exited with exit code 3' in status['crasher']['last_error']
    assert status['once']['restarts'] == 0
    assert [state for name, state in changes if name == 'crasher'] == [
        'restarting', 'starting', 'restarting', 'starting', 'failed']
    assert 'service crasher exited with exit code 3; giving up after 2 ' \
        'restarts' in log.text()

    with open(out, encoding='utf-8') as handle:
        assert handle.read().count('starting\n') == 3
    with open(err, encoding='utf-8') as handle:
        assert handle.read().count('crasher: fatal') == 3
    with open(merged, encoding='utf-8') as handle:
        both = handle.read()
    assert 'starting' in both and 'crasher: fatal' in both

    # a worker's view: the pickled service, told the state by its owner
    remote = pickle.loads(pickle.dumps(crasher))
    remote.state_getter = lambda: manager.status_of('crasher')
    with pytest.raises(ServiceUnavailable) as caught:
        remote.client(timeout=30)
    assert caught.value.state == 'failed'
    assert "service 'crasher' has failed after 2 restarts" in str(caught.value)
    assert 'exit code 3' in str(caught.value)


def test_client_never_starts_a_service_and_says_why(tmp_path):
    starts = str(tmp_path / 'starts.txt')
    service = Service('idle', server_command(), port=free_port(),
                      env={'SERVICE_STARTS': starts},
                      health_check_url='/health')
    with pytest.raises(ServiceUnavailable) as caught:
        service.client(timeout=0.3)
    message = str(caught.value)
    assert "service 'idle' at http://127.0.0.1:" in message
    assert 'did not pass its health check /health within 0.3s' in message
    assert 'refused' in message.lower()
    assert started_pids(starts) == []
    service.state_getter = lambda: 'starting'
    with pytest.raises(ServiceUnavailable) as caught:
        service.client(timeout=0.2)
    assert caught.value.state == 'starting'
    assert '(state: starting)' in str(caught.value)

    with pytest.raises(ValueError, match='exactly one of port= or socket='):
        Service('both', server_command(), port=1, socket='/tmp/x.sock')
    with pytest.raises(ValueError, match='list of str'):
        Service('text', 'python server.py', port=8000)


def test_manager_restarts_a_killed_and_an_unhealthy_service(manage):
    service = Service('flaky', server_command(), port=free_port(),
                      health_check_url='/health', health_check_interval=0.1,
                      restart_delay=0.05)
    manager, log = manage(service)
    assert manager.wait_ready(15) and manager.all_ready()
    first = manager.status()[0]
    assert first['state'] == 'ready' and first['restarts'] == 0
    assert first['address'] == service.address
    with service.client(timeout=5) as client:
        assert client.get('/').json() == {'pid': first['pid']}

    os.kill(first['pid'], signal.SIGKILL)
    second = wait_until(lambda: (lambda e: e['state'] == 'ready' and e['pid']
                                 != first['pid'] and e)(manager.status()[0]),
                        15)
    assert second['restarts'] == 1
    assert 'exited with signal SIGKILL' in second['last_error']

    with service.client(timeout=5) as client:
        assert client.post('/sicken').status == 200
    third = wait_until(lambda: (lambda e: e['state'] == 'ready' and e['pid']
                                not in (first['pid'], second['pid']) and e)(
        manager.status()[0]), 15)
    assert third['restarts'] == 2
    assert 'health check failed 3 times in a row' in third['last_error']
    assert 'GET /health answered 500' in third['last_error']
    assert 'health check failed (GET /health answered 500)' in log.text()
    assert not pid_alive(second['pid'])


def test_stop_ends_the_whole_process_group(manage, tmp_path):
    grandchild_file = tmp_path / 'grandchild.pid'
    service = Service('family', server_command(), port=free_port(),
                      env={'SERVICE_GRANDCHILD': str(grandchild_file)},
                      shutdown_timeout=5)
    manager, _ = manage(service)
    assert manager.wait_ready(15)
    server = manager.status()[0]['pid']
    grandchild = int(wait_until(lambda: grandchild_file.exists() and
                                grandchild_file.read_text().strip(), 10))
    assert pid_alive(grandchild)
    manager.stop(wait=False)    # the dispatcher's way: never block
    wait_until(lambda: manager.stopped, 10)
    assert manager.states() == {'family': 'stopped'}
    assert manager.status()[0]['pid'] is None
    assert not pid_alive(server)
    try:
        wait_until(lambda: not pid_alive(grandchild), 10,
                   message='the grandchild outlived stop()')
    finally:
        kill_leftovers([grandchild])


def test_unix_socket_service_standalone(tmp_path):
    name = f'unix-{os.getpid()}-{tmp_path.name}'
    service = Service(name, [sys.executable, SERVER, '--socket', '{socket}'],
                      socket=str(tmp_path / 'svc.sock'),
                      health_check_url='/health')
    assert service.address == f'unix:{tmp_path / "svc.sock"}'
    server = None
    try:
        with service.connect(timeout=15) as client:
            assert service.owned
            server = client.get('/').json()['pid']
            echoed = client.post('/echo', json={'hello': 'world'})
            assert echoed.status == 200 and echoed.json() == {'hello': 'world'}
            assert echoed.headers['content-type'] == 'application/json'
            assert client.post('/echo', data='plain').text == 'plain'

        # a pickled copy owns nothing: it finds the lock taken, and the
        # service healthy
        copy = pickle.loads(pickle.dumps(service))
        assert not copy.owned
        with copy.connect(timeout=5) as client:
            assert client.get('/').json() == {'pid': server}
        assert not copy.owned
    finally:
        service.close()
    assert not service.owned
    assert server is not None and not pid_alive(server)
