"""Operations against a real dispatcher: signals, rolling restarts with new
code, resizing, recycling, pid/log files, systemd notifications, metrics."""

import os
import signal
import socket
import threading
import time

import pytest

from conftest import pid_alive, wait_until

APP = 'ops_app.py'

WORKER_CODE = '''
import os
import time

import uhttp.workers as _workers

VERSION = {version!r}


class VersionWorker(_workers.Worker):
    def setup(self):
        time.sleep({setup_delay})
        self.config = None

    def on_config(self, config):
        self.config = config

    @_workers.api('/api/version', 'GET')
    def version(self, request):
        return {{'version': VERSION, 'pid': os.getpid(),
                 'config': self.config}}

    @_workers.api('/api/slow/{{seconds:float}}', 'GET')
    def slow(self, request):
        time.sleep(request.path_params['seconds'])
        return {{'version': VERSION, 'pid': os.getpid()}}

    @_workers.api('/api/item/{{id:int}}')
    def item(self, request):
        return {{'id': request.path_params['id']}}

    @_workers.api('/api/grow/{{mib:int}}', 'POST')
    def grow(self, request):
        self.ballast = bytearray(request.path_params['mib'] * 2**20)
        return {{'pid': os.getpid()}}
'''


def write_worker(directory, version, setup_delay=0):
    path = directory / 'versioned.py'
    path.write_text(WORKER_CODE.format(version=version,
                                       setup_delay=setup_delay))
    return path


@pytest.fixture
def app_dir(tmp_path):
    write_worker(tmp_path, 'v1')
    return tmp_path


def start(start_server, app_dir, workers=2, **env):
    env = {'APP_DIR': str(app_dir), 'WORKERS': str(workers),
           'PYTHONDONTWRITEBYTECODE': '1', **env}
    return start_server(APP, env=env, ready_workers=workers)


def pool_workers(server):
    return server.get('/monitor').json()['pools'][0]['workers']


def serving_pids(server):
    return {w['pid'] for w in pool_workers(server)
            if w['alive'] and not w['retiring']}


class SteadyLoad:
    """A client thread sending requests until stopped; keeps every status."""

    def __init__(self, server, path, limit=200_000, seconds=60):
        self.server = server
        self.path = path
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set() and len(self.results) < self.limit \
                and time.monotonic() < self.deadline:
            try:
                self.results.append(self.server.get(self.path).status)
            except Exception as err:  # pylint: disable=broad-except
                self.results.append(repr(err))

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        return self.results


def test_hup_rolls_new_code_out_without_a_failed_request(
        start_server, app_dir):
    server = start(start_server, app_dir)
    old_pids = serving_pids(server)
    assert server.get('/api/version').json()['version'] == 'v1'
    load = SteadyLoad(server, '/api/slow/0.02')
    wait_until(lambda: len(load.results) >= 20, 10)
    write_worker(app_dir, 'v2-new-code')
    server.signal(signal.SIGHUP)
    server.wait_log(r'pool VersionWorker: rolling restart done', 60)
    count = len(load.results)
    wait_until(lambda: len(load.results) >= count + 20, 10)
    results = load.stop()
    assert results and set(results) == {200}, [r for r in results if r != 200]
    new_pids = serving_pids(server)
    assert len(new_pids) == 2 and not new_pids & old_pids
    for pid in old_pids:
        wait_until(lambda pid=pid: not pid_alive(pid), 10)
    answer = server.get('/api/version').json()
    assert answer['version'] == 'v2-new-code'
    assert answer['config'] == {'reload': 1}  # on_reload() reached workers


def test_restart_keeps_in_flight_request(start_server, app_dir):
    server = start(start_server, app_dir, workers=1)
    results = []
    thread = threading.Thread(target=lambda: results.append(
        server.get('/api/slow/1.5', timeout=20)))
    thread.start()
    wait_until(lambda: pool_workers(server)[0]['current_request'], 10)
    old_pid = pool_workers(server)[0]['pid']
    server.signal(signal.SIGHUP)
    thread.join(20)
    assert results[0].status == 200 and results[0].json()['pid'] == old_pid
    server.wait_log(r'rolling restart done', 30)
    assert serving_pids(server) != {old_pid}


def test_ttin_and_ttou_resize_the_pool(start_server, app_dir):
    server = start(start_server, app_dir, workers=2)
    server.signal(signal.SIGTTIN)
    wait_until(lambda: len([w for w in pool_workers(server)
                            if w['ready']]) == 3, 20)
    # one signal at a time: the kernel merges a signal sent while the same
    # one is still pending
    server.signal(signal.SIGTTOU)
    wait_until(lambda: len(pool_workers(server)) == 2, 20)
    server.signal(signal.SIGTTOU)
    wait_until(lambda: len(pool_workers(server)) == 1, 20)
    assert server.get('/api/item/1').json() == {'id': 1}
    server.signal(signal.SIGTTOU)  # never below one worker
    assert server.get('/api/item/2').json() == {'id': 2}
    assert len(pool_workers(server)) == 1


def test_max_requests_recycles_workers_without_failures(
        start_server, app_dir):
    server = start(start_server, app_dir, workers=2, MAX_REQUESTS='10')
    first = serving_pids(server)
    statuses = [server.get(f'/api/item/{n}').status for n in range(60)]
    assert set(statuses) == {200}
    server.wait_log(r'replacing worker .*max_requests=10')
    wait_until(lambda: not serving_pids(server) & first, 20,
               message='workers were not recycled')


def test_quit_stops_at_once_and_removes_pid_file(
        start_server, app_dir, tmp_path):
    pid_file = tmp_path / 'service.pid'
    server = start(start_server, app_dir, PID_FILE=str(pid_file))
    assert int(pid_file.read_text()) == server.pid
    pids = serving_pids(server)
    results = []
    thread = threading.Thread(target=lambda: results.append(
        server.get('/api/slow/30', timeout=20)))
    thread.start()
    wait_until(lambda: any(w['current_request'] for w in
                           pool_workers(server)), 10)
    server.signal(signal.SIGQUIT)
    assert server.wait_exit(10) == 0
    thread.join(10)
    assert results[0].status == 503
    assert not pid_file.exists()
    for pid in pids:
        wait_until(lambda pid=pid: not pid_alive(pid), 10)


def test_stale_pid_file_is_replaced_and_live_one_refused(
        start_server, app_dir, tmp_path):
    pid_file = tmp_path / 'service.pid'
    pid_file.write_text('999999\n')  # no such process
    server = start(start_server, app_dir, workers=1, PID_FILE=str(pid_file))
    assert int(pid_file.read_text()) == server.pid
    from conftest import Server  # pylint: disable=import-outside-toplevel
    from conftest import APPS  # pylint: disable=import-outside-toplevel
    second = Server(os.path.join(APPS, APP), env={
        'APP_DIR': str(app_dir), 'PID_FILE': str(pid_file)})
    assert second.wait_exit(20) != 0
    assert 'names running process' in second.log
    second.stop()
    assert int(pid_file.read_text()) == server.pid


def test_usr1_reopens_the_log_file(app_dir, tmp_path):
    from conftest import APPS, Server  # pylint: disable=import-outside-toplevel
    log_file = tmp_path / 'service.log'
    server = Server(os.path.join(APPS, APP), env={
        'APP_DIR': str(app_dir), 'WORKERS': '1', 'LOG_FILE': str(log_file)})
    try:
        wait_until(lambda: log_file.exists() and 'ready' in
                   log_file.read_text(), 20)
        assert 'listening on' not in server.log  # the file, not stderr
        rotate_and_reopen(server, log_file, tmp_path)
    finally:
        server.stop()


def rotate_and_reopen(server, log_file, tmp_path):
    os.rename(log_file, tmp_path / 'service.log.1')
    server.signal(signal.SIGUSR1)
    wait_until(lambda: log_file.exists() and 'log file reopened' in
               log_file.read_text(), 10)
    assert 'listening on' in (tmp_path / 'service.log.1').read_text()


def test_systemd_notifications(start_server, app_dir, tmp_path):
    path = str(tmp_path / 'notify')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    server = start(start_server, app_dir, workers=2, NOTIFY_SOCKET=path,
                   WATCHDOG_USEC='400000')
    received = []

    def receive_until(text):
        while not any(text in message for message in received):
            received.append(listener.recv(4096).decode())
        return received
    receive_until('READY=1')
    receive_until('WATCHDOG=1')
    ready = next(m for m in received if 'READY=1' in m)
    assert f'MAINPID={server.pid}' in ready
    server.signal(signal.SIGTERM)
    receive_until('STOPPING=1')
    assert server.wait_exit(20) == 0
    listener.close()


def test_metrics_count_requests(start_server, app_dir):
    parser = pytest.importorskip('prometheus_client.parser')
    server = start(start_server, app_dir, workers=2, METRICS='/metrics')
    for number in range(7):
        assert server.get(f'/api/item/{number}').status == 200
    assert server.get('/api/version').status == 200
    assert server.get('/api/nothing').status == 404
    page = server.get('/metrics')
    assert page.status == 200
    assert page.headers['content-type'].startswith('text/plain')
    samples = {}
    for family in parser.text_string_to_metric_families(page.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = \
                sample.value

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))
    assert value('uhttp_requests_total', pool='VersionWorker',
                 route='/api/item/{id:int}', status='200') == 7
    assert value('uhttp_requests_total', pool='VersionWorker',
                 route='/api/version', status='200') == 1
    assert value('uhttp_requests_total', pool='VersionWorker', route='',
                 status='404') == 1
    assert value('uhttp_request_duration_seconds_count',
                 pool='VersionWorker') == 9
    assert value('uhttp_workers_alive', pool='VersionWorker') == 2
    assert value('uhttp_pending_requests') == 0


def test_process_titles_name_role_pool_and_index(start_server, app_dir):
    pytest.importorskip('setproctitle')
    server = start(start_server, app_dir, workers=2)

    def title(pid):
        with open(f'/proc/{pid}/cmdline', 'rb') as cmdline:
            return cmdline.read().replace(b'\0', b' ').decode().strip()
    assert title(server.pid).startswith('uhttp.workers: dispatcher ')
    titles = sorted(title(w['pid']) for w in pool_workers(server))
    assert titles == ['uhttp.workers: worker VersionWorker[0]',
                      'uhttp.workers: worker VersionWorker[1]']


def test_max_memory_replaces_a_bloated_worker(start_server, app_dir):
    server = start(start_server, app_dir, workers=1,
                   MAX_MEMORY=str(200 * 2**20))
    grown = server.request('POST', '/api/grow/300').json()['pid']
    server.wait_log(r'replacing worker .*max_memory=', 20)
    wait_until(lambda: grown not in serving_pids(server), 20)
    assert server.get('/api/item/3').json() == {'id': 3}
    wait_until(lambda: not pid_alive(grown), 20)


def test_socket_activation_serves_on_the_passed_socket(app_dir):
    from conftest import APPS, Server  # pylint: disable=import-outside-toplevel
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # systemd passes the socket as fd 3 and names the receiving pid
    launcher = (
        'import os, sys; os.dup2(int(sys.argv[1]), 3); '
        'os.environ["LISTEN_FDS"] = "1"; '
        'os.environ["LISTEN_PID"] = str(os.getpid()); '
        'os.execv(sys.executable, [sys.executable] + sys.argv[2:])')
    server = Server('-c', env={'APP_DIR': str(app_dir), 'WORKERS': '1'},
                    args=(launcher, str(listener.fileno()),
                          os.path.join(APPS, APP)),
                    pass_fds=(listener.fileno(),))
    try:
        server.wait_log(r'inherited listening socket \(from systemd\)')
        server.start(ready_workers=1)
        assert server.port == port
        listener.close()  # only the dispatcher's copy remains
        assert server.get('/api/item/5').json() == {'id': 5}
    finally:
        server.stop()


def test_usr2_replaces_the_dispatcher_without_refusing_a_connection(
        start_server, app_dir, tmp_path):
    pid_file = tmp_path / 'service.pid'
    # TIMEOUT below the new code's setup time: a request the new dispatcher
    # took before its worker was ready would come back 504
    server = start(start_server, app_dir, workers=1, PID_FILE=str(pid_file),
                   TIMEOUT='1')
    old_pid = server.pid
    load = SteadyLoad(server, '/api/item/1')
    wait_until(lambda: len(load.results) >= 20, 10)
    # the new code takes a while to set up: the old dispatcher must go on
    # serving everyone meanwhile (the new one takes no client before ready)
    write_worker(app_dir, 'v3-new-dispatcher', setup_delay=1.5)
    server.signal(signal.SIGUSR2)
    new_pid = int(server.wait_log(
        r'started new dispatcher \(pid (\d+)\)').group(1))
    try:
        assert server.wait_exit(30) == 0  # the old one drained and left
        count = len(load.results)
        wait_until(lambda: len(load.results) >= count + 20, 10,
                   message=lambda: f'{load.results[-5:]}\n{server.log}')
        results = load.stop()
        assert set(results) == {200}, server.log[-4000:]
        assert server.get('/api/version').json()['version'] == \
            'v3-new-dispatcher'
        assert int(pid_file.read_text()) == new_pid
        server.wait_log(rf'listening on .*\(pid {new_pid},')
        assert old_pid != new_pid
    finally:
        load.stop()
        if pid_alive(new_pid):
            os.kill(new_pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(new_pid), 20)


def test_usr2_with_broken_code_keeps_the_old_dispatcher(
        start_server, app_dir, tmp_path):
    pid_file = tmp_path / 'service.pid'
    server = start(start_server, app_dir, workers=1, PID_FILE=str(pid_file))
    (app_dir / 'versioned.py').write_text('this is not python\n')
    server.signal(signal.SIGUSR2)
    server.wait_log(r'will not take over: it ended before it was ready', 30)
    assert server.proc.poll() is None
    assert server.get('/api/item/9').json() == {'id': 9}
    assert int(pid_file.read_text()) == server.pid
