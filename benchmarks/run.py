#!/usr/bin/env python3
"""Side-by-side benchmark of uhttp.workers (this checkout) against its peers.

    python benchmarks/run.py            full run (3 rounds, < 10 minutes)
    python benchmarks/run.py --quick    one short round (< 2 minutes)
    python benchmarks/run.py --profile  cProfile of the dispatcher and a worker
                                        during a c=32 run on the pool route

Peers, each in its own virtual environment under benchmarks/.venvs/ (created
on first use, reused afterwards):
  uhttp-workers==1.8.1 with uhttp-server==2.6.2 (the PyPI implementation),
  gunicorn (latest) with 2 sync workers serving the same endpoints as WSGI.

Every server listens on 127.0.0.1 only, with two workers. The results go to
stdout and to benchmarks/results/latest.md and latest.json. See README.md for
what is measured and how.
"""

import argparse
import http.client
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, 'apps')
VENVS = os.path.join(BENCH, '.venvs')
RESULTS = os.path.join(BENCH, 'results')
LUA = os.path.join(BENCH, 'wrk', 'report.lua')
HOST = '127.0.0.1'
CLK_TCK = os.sysconf('SC_CLK_TCK')
SHUTDOWN_TIMEOUT = 5.0          # given to every server (app flag / gunicorn)
WORKERS = 2

PEER_1X_PACKAGES = ['uhttp-workers==1.8.1', 'uhttp-server==2.6.2']
PEER_1X_CHECK = ("import importlib.metadata as m; "
                 "assert m.version('uhttp-workers') == '1.8.1'; "
                 "assert m.version('uhttp-server') == '2.6.2'; "
                 "import uhttp.workers")
GUNICORN_CHECK = "import gunicorn; print(gunicorn.__version__)"

ECHO_BODY_SIZE = 1024

# name, path, connections, POST body?  (pool_c1024 last: a server that cannot
# hold 1024 sockets crashes there, and is restarted for the next round)
SCENARIOS = [
    ('pool_c32', '/api/item/1', 32, False),
    ('pool_c256', '/api/item/1', 256, False),
    ('health_c32', '/health', 32, False),
    ('static_c32', '/static/file4k.bin', 32, False),
    ('echo_c32', '/api/echo', 32, True),
    ('work5_c32', '/api/work/5', 32, False),
    ('pool_c1024', '/api/item/1', 1024, False),
]

SCENARIO_TITLES = {
    'pool_c32': 'GET /api/item/{id} c=32 (pool)',
    'pool_c256': 'GET /api/item/{id} c=256 (pool)',
    'pool_c1024': 'GET /api/item/{id} c=1024 (pool)',
    'health_c32': 'GET /health c=32 (@sync)',
    'static_c32': 'GET /static/file4k.bin c=32',
    'echo_c32': 'POST /api/echo 1 KiB c=32 (pool)',
    'work5_c32': 'GET /api/work/5 c=32 (pool, 5 ms CPU)',
}

KIND_TITLES = {
    'self': 'uhttp.workers (this checkout)',
    'peer1x': 'uhttp-workers 1.8.1',
    'gunicorn': 'gunicorn sync',
}


def log(message):
    """Progress to stderr (the table goes to stdout)."""
    sys.stderr.write(f'[bench {time.strftime("%H:%M:%S")}] {message}\n')
    sys.stderr.flush()


# -- environments ---------------------------------------------------------------

def _venv_python(name):
    return os.path.join(VENVS, name, 'bin', 'python')


def _python_ok(python, code):
    if not os.path.exists(python):
        return False
    try:
        # cwd '/': from the repo root, `import uhttp.workers` would find
        # the checkout's package before the one installed in the venv
        return subprocess.run([python, '-c', code], capture_output=True,
                              cwd='/', timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv(name, packages, check, editable=None):
    """Create (once) and return the python of benchmarks/.venvs/<name>."""
    python = _venv_python(name)
    if _python_ok(python, check):
        return python
    path = os.path.join(VENVS, name)
    log(f'creating {path} ({" ".join(packages) or editable})')
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(VENVS, exist_ok=True)
    subprocess.run([sys.executable, '-m', 'venv', path], check=True,
                   capture_output=True)
    cmd = [python, '-m', 'pip', 'install', '--disable-pip-version-check',
           '-q', *packages]
    if editable:
        cmd += ['-e', editable]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not _python_ok(python, check):
        output = [line for line in (done.stderr + done.stdout).splitlines()
                  if line.strip() and not line.startswith('WARNING: ')]
        raise RuntimeError(
            f'cannot set up {name} (pip exit {done.returncode}): '
            + (' | '.join(output[-5:]) or 'installed, but the import check '
               f'failed: {check}'))
    return python


def self_python():
    """An interpreter that imports uhttp.workers from this checkout."""
    check = ("import os, uhttp.workers as w; "
             f"assert os.path.realpath(w.__file__).startswith("
             f"{os.path.realpath(os.path.join(REPO, 'uhttp'))!r})")
    if _python_ok(sys.executable, check):
        return sys.executable
    return ensure_venv('self', [], check, editable=REPO)


def check_wrk():
    wrk = shutil.which('wrk')
    if wrk is None:
        sys.stderr.write(
            'wrk is not installed. Install it with:\n'
            '    apt-get install -y wrk\n'
            '(Debian/Ubuntu; on macOS: brew install wrk)\n')
        sys.exit(2)
    return wrk


def machine_info(wrk):
    info = {
        'nproc': os.cpu_count(),
        'cpu_model': None,
        'python': platform.python_version(),
        'kernel': platform.release(),
        'wrk': None,
    }
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('model name'):
                    info['cpu_model'] = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        out = subprocess.run([wrk, '-v'], capture_output=True, text=True,
                             timeout=10)
        info['wrk'] = (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    try:
        with open('/proc/meminfo', encoding='utf-8') as handle:
            info['mem_total'] = handle.readline().split(':', 1)[1].strip()
    except (OSError, IndexError):
        pass
    return info


# -- /proc: process trees, CPU and memory ---------------------------------------

def _read_stat(pid):
    """(ppid, cpu ticks incl. reaped children, start time) or None."""
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii',
                  errors='replace') as handle:
            text = handle.read()
    except OSError:
        return None
    rest = text[text.rindex(')') + 2:].split()
    # rest[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17,
    # starttime=22
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return int(rest[1]), ticks, int(rest[19])


def process_tree(root):
    """{pid: (ticks, starttime)} of root and all its descendants."""
    stats = {}
    children = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        stat = _read_stat(int(name))
        if stat is None:
            continue
        stats[int(name)] = stat
        children.setdefault(stat[0], []).append(int(name))
    tree = {}
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        tree[pid] = (stats[pid][1], stats[pid][2])
        todo.extend(children.get(pid, ()))
    return tree


def pss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/smaps_rollup', encoding='ascii') as handle:
                for line in handle:
                    if line.startswith('Pss:'):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# -- HTTP helpers ------------------------------------------------------------------

def http_request(port, method, path, body=None, headers=None, timeout=10.0):
    """(status, body bytes, seconds) or raises OSError/HTTPException."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, data, time.monotonic() - started
    finally:
        conn.close()


def get_json(port, path, timeout=5.0):
    status, data, _ = http_request(port, 'GET', path, timeout=timeout)
    if status != 200:
        raise RuntimeError(f'{path}: HTTP {status}')
    return json.loads(data)


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# -- servers ------------------------------------------------------------------------

class Server:
    """One server under test: its command, process tree and log."""

    def __init__(self, key, kind, port, cmd, env, workers=WORKERS):
        self.key = key
        self.kind = kind
        self.port = port
        self.cmd = cmd
        self.env = env
        self.workers = workers
        self.proc = None
        self.known = {}          # pid -> starttime, every process of its tree
        self.starts = 0
        self.crashes = []        # failure texts of unexpected exits
        self.log_path = None

    @property
    def title(self):
        title = KIND_TITLES[self.kind]
        return title if self.workers == WORKERS else \
            f'{title}, {self.workers} workers'

    def start(self):
        self.starts += 1
        suffix = '' if self.starts == 1 else f'.{self.starts}'
        self.log_path = os.path.join(RESULTS, 'logs',
                                     f'{self.key}{suffix}.log')
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, 'wb') as log_file:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=BENCH, stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.known[self.proc.pid] = None

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def tree(self):
        tree = process_tree(self.pid) if self.alive() else {}
        for pid, (_ticks, start) in tree.items():
            self.known[pid] = start
        return tree

    def cpu_ticks(self):
        return sum(ticks for ticks, _ in self.tree().values())

    def pss_kb(self):
        return pss_kb(self.tree())

    def wait_ready(self, timeout=30.0):
        """Until /health answers and every worker is up."""
        deadline = time.monotonic() + timeout
        last = 'no answer'
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f'{self.key} exited during start-up: '
                                   f'{self.failure_text()}')
            try:
                if self._ready():
                    self.tree()
                    return
                last = 'workers not ready'
            except (OSError, http.client.HTTPException, ValueError,
                    RuntimeError) as err:
                last = repr(err)
            time.sleep(0.1)
        raise RuntimeError(f'{self.key} not ready after {timeout}s: {last}')

    def _ready(self):
        status, _, _ = http_request(self.port, 'GET', '/health', timeout=2)
        if status != 200:
            return False
        if self.kind == 'gunicorn':
            workers = len(self.tree()) - 1
            return workers >= self.workers and \
                http_request(self.port, 'GET', '/api/item/1')[0] == 200
        pools = get_json(self.port, '/monitor')['pools']
        for pool in pools:
            for worker in pool['workers']:
                if not worker.get('ready', worker.get('alive')):
                    return False
        return http_request(self.port, 'GET', '/api/item/1')[0] == 200

    def failure_text(self):
        """The last exception line (or last line) of the server's log."""
        try:
            with open(self.log_path, encoding='utf-8',
                      errors='replace') as handle:
                lines = [line.rstrip() for line in handle if line.strip()]
        except OSError:
            return 'no log'
        for line in reversed(lines):
            if re.match(r'^[A-Za-z_.]+(Error|Exception|Exit)\b', line):
                return line
        return lines[-1] if lines else 'empty log'

    def responsive(self, attempts=2):
        """True when /health answers 200 (a server can be alive but gone
        deaf: 1.8.1 shuts down gracefully after its loop raised)."""
        for attempt in range(attempts):
            if not self.alive():
                return False
            try:
                if http_request(self.port, 'GET', '/health',
                                timeout=5)[0] == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            if attempt + 1 < attempts:
                time.sleep(1.0)
        return False

    def note_crash(self, where):
        code = self.proc.poll()
        state = f'exited with code {code}' if code is not None else \
            'stopped answering /health'
        text = f'{where}: {state}: {self.failure_text()}'
        self.crashes.append(text)
        log(f'{self.key} crashed ({text}); restarting it')
        self.kill_leftovers()
        self.start()
        self.wait_ready()

    def stop(self, timeout=SHUTDOWN_TIMEOUT + 5):
        """SIGTERM the root; seconds until the whole tree is gone."""
        if not self.alive():
            self.kill_leftovers()
            return None
        self.tree()
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            # the root is gone: give its children a moment to follow
            deadline = time.monotonic() + 2
            while self._leftovers() and time.monotonic() < deadline:
                time.sleep(0.02)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - started
        clean = self.proc.poll() is not None and not self._leftovers()
        self.kill_leftovers()
        return elapsed if clean else None

    def _leftovers(self):
        alive = []
        for pid, start in self.known.items():
            stat = _read_stat(pid)
            if stat is None or (start is not None and stat[2] != start):
                continue
            try:
                with open(f'/proc/{pid}/stat', encoding='ascii') as handle:
                    if handle.read().rsplit(')', 1)[1].split()[0] == 'Z':
                        continue  # zombie: exited, not yet reaped
            except (OSError, IndexError):
                continue
            alive.append(pid)
        return alive

    def kill_leftovers(self):
        """SIGKILL, by PID, every process of this server still running."""
        self.tree()
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def make_servers(python_self, python_1x, python_gunicorn, static_dir,
                 include_4w=True):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    for name in ('JOURNAL_STREAM', 'BENCH_PROFILE_DIR', 'PYTHONPATH'):
        env.pop(name, None)
    app = os.path.join(APPS, 'workers_app.py')
    servers = []

    def workers_cmd(python, port, workers):
        return [python, app, '--port', str(port), '--workers', str(workers),
                '--static-dir', static_dir, '--shutdown-timeout',
                str(SHUTDOWN_TIMEOUT)]

    port = free_port()
    servers.append(Server('self', 'self', port,
                          workers_cmd(python_self, port, WORKERS), env))
    if include_4w:
        port = free_port()
        servers.append(Server('self_4w', 'self', port,
                              workers_cmd(python_self, port, 4), env,
                              workers=4))
    if python_1x:
        port = free_port()
        servers.append(Server('peer1x', 'peer1x', port,
                              workers_cmd(python_1x, port, WORKERS), env))
    if python_gunicorn:
        port = free_port()
        gunicorn = os.path.join(os.path.dirname(python_gunicorn), 'gunicorn')
        genv = dict(env, BENCH_STATIC_DIR=static_dir)
        servers.append(Server('gunicorn', 'gunicorn', port, [
            gunicorn, '-w', str(WORKERS), '-k', 'sync',
            '-b', f'{HOST}:{port}', '--chdir', APPS,
            '--graceful-timeout', str(int(SHUTDOWN_TIMEOUT)),
            '--no-control-socket', '--log-level', 'warning',
            'gunicorn_app:app'], genv))
    return servers


# -- smoke checks --------------------------------------------------------------------

def smoke_check(server, static_bytes, echo_body):
    """One real request per endpoint; {endpoint: 'ok' or what went wrong}."""
    port = server.port
    checks = {}

    def check(name, func):
        try:
            problem = func()
            checks[name] = 'ok' if problem is None else problem
        except (OSError, http.client.HTTPException, ValueError,
                RuntimeError) as err:
            checks[name] = f'error: {err!r}'

    def health():
        status, data, _ = http_request(port, 'GET', '/health')
        if status != 200 or json.loads(data) != {'status': 'ok'}:
            return f'HTTP {status} {data[:80]!r}'
        return None

    def static():
        status, data, _ = http_request(port, 'GET', '/static/file4k.bin')
        if status != 200 or data != static_bytes:
            return f'HTTP {status}, {len(data)} bytes (want 4096 equal bytes)'
        return None

    def item():
        status, data, _ = http_request(port, 'GET', '/api/item/123')
        if status != 200 or json.loads(data) != {'id': 123}:
            return f'HTTP {status} {data[:80]!r}'
        return None

    def echo():
        status, data, _ = http_request(
            port, 'POST', '/api/echo', body=echo_body,
            headers={'Content-Type': 'application/json'})
        if status != 200 or json.loads(data) != json.loads(echo_body):
            return f'HTTP {status} {data[:80]!r}'
        return None

    def work():
        status, data, _ = http_request(port, 'GET', '/api/work/5')
        if status != 200 or json.loads(data) != {'ms': 5}:
            return f'HTTP {status} {data[:80]!r}'
        return None

    def monitor():
        status, data, _ = http_request(port, 'GET', '/monitor')
        if status != 200 or 'pending' not in json.loads(data):
            return f'HTTP {status} {data[:80]!r}'
        return None

    for name, func in (('health', health), ('static', static),
                       ('item', item), ('echo', echo), ('work', work),
                       ('monitor', monitor)):
        check(name, func)
    return checks


# -- wrk --------------------------------------------------------------------------------

def run_wrk(wrk, port, path, connections, duration, body_file=None,
            timeout='5s'):
    """One wrk run; its counters and latency percentiles."""
    env = dict(os.environ)
    env.pop('WRK_BODY_FILE', None)
    if body_file:
        env['WRK_BODY_FILE'] = body_file
    cmd = [wrk, '-t1', f'-c{connections}', f'-d{duration}s',
           '--timeout', timeout, '-s', LUA, f'http://{HOST}:{port}{path}']
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return {'error': 'wrk did not finish'}
    for line in done.stdout.splitlines():
        if line.startswith('WRKJSON '):
            raw = json.loads(line[len('WRKJSON '):])
            seconds = raw['duration_us'] / 1e6 or 1e-9
            ok = raw['requests'] - raw['status']
            return {
                'requests': raw['requests'],
                'ok_per_s': ok / seconds,
                'non_2xx': raw['status'],
                'connect_errors': raw['connect'],
                'read_errors': raw['read'],
                'write_errors': raw['write'],
                'timeouts': raw['timeout'],
                'p50_ms': raw['p50_us'] / 1000,
                'p90_ms': raw['p90_us'] / 1000,
                'p99_ms': raw['p99_us'] / 1000,
                'max_ms': raw['max_us'] / 1000,
                'seconds': seconds,
            }
    return {'error': f'no result from wrk (exit {done.returncode}): '
                     f'{(done.stderr or done.stdout).strip()[-300:]}'}


def measured_run(wrk, server, scenario, duration, body_file):
    """wrk plus CPU time of the server's process tree around it."""
    name, path, connections, post = scenario
    before = server.cpu_ticks()
    result = run_wrk(wrk, server.port, path, connections, duration,
                     body_file if post else None)
    after = server.cpu_ticks() if server.alive() else None
    if 'error' not in result:
        served = result['requests']
        if after is not None and served:
            result['cpu_us_per_req'] = (after - before) / CLK_TCK \
                / served * 1e6
        result['cpu_s'] = None if after is None else \
            (after - before) / CLK_TCK
    if not server.alive():
        result['server_crashed'] = True
    return result


# -- idle CPU ----------------------------------------------------------------------------

def idle_cpu(servers, seconds):
    """CPU % of each server's tree while nothing talks to it (together)."""
    before = {s.key: s.cpu_ticks() for s in servers}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    result = {}
    for server in servers:
        ticks = server.cpu_ticks() - before[server.key]
        result[server.key] = ticks / CLK_TCK / wall * 100
    return result


# -- abandoned clients --------------------------------------------------------------

def abandoned_test(wrk, server, duration, burst, followup_timeout,
                   drain_limit):
    """wrk with a 1 s timeout on /api/work/50 at c=256, stopped with requests
    in flight, plus `burst` raw clients that send a request and close at once;
    then: latency of a follow-up request, time until /monitor shows nothing
    pending."""
    result = {'burst': burst, 'followup_timeout_s': followup_timeout}
    result['wrk'] = run_wrk(wrk, server.port, '/api/work/50', 256, duration,
                            timeout='1s')
    request = (f'GET /api/work/50 HTTP/1.1\r\nHost: {HOST}\r\n\r\n').encode()
    sent = 0
    for _ in range(burst):
        try:
            with socket.create_connection((HOST, server.port), timeout=2) \
                    as sock:
                sock.sendall(request)
                sent += 1
        except OSError:
            pass
    result['burst_sent'] = sent
    stopped = time.monotonic()
    try:
        status, _, seconds = http_request(server.port, 'GET', '/api/item/1',
                                          timeout=followup_timeout)
        result['followup_status'] = status
        result['followup_ms'] = seconds * 1000
    except socket.timeout:
        result['followup_status'] = f'no answer in {followup_timeout}s'
        result['followup_ms'] = None
    except (OSError, http.client.HTTPException) as err:
        result['followup_status'] = f'error: {err!r}'
        result['followup_ms'] = None
    if server.kind == 'gunicorn':
        result['drained_after_s'] = 'n/a'
        result['pending_left'] = 'n/a'
        return result
    deadline = stopped + drain_limit
    pending = None
    while True:
        try:
            monitor = get_json(server.port, '/monitor', timeout=10)
            pending = monitor['pending']
            queued = sum(pool.get('queue_size') or 0
                         for pool in monitor['pools'])
            if pending == 0 and queued == 0:
                result['drained_after_s'] = time.monotonic() - stopped
                break
        except (OSError, http.client.HTTPException, ValueError,
                RuntimeError) as err:
            pending = f'error: {err!r}'
        if time.monotonic() >= deadline:
            result['drained_after_s'] = None
            break
        time.sleep(0.1)
    result['pending_left'] = pending
    return result


# -- SSE ---------------------------------------------------------------------------------

class _SseClient:
    __slots__ = ('sock', 'state', 'head', 'events', 'tail', 'last_event',
                 'error')

    def __init__(self, sock):
        self.sock = sock
        self.state = 'connecting'
        self.head = b''
        self.events = 0
        self.tail = b''
        self.last_event = None
        self.error = None


_MARK = b'event: tick'


class _SseRun:
    """Many SSE clients on one selector, with running counters (so the
    stop conditions cost nothing per wake-up)."""

    def __init__(self, port, clients, target):
        self.sel = selectors.DefaultSelector()
        self.request = (f'GET /api/sse HTTP/1.1\r\nHost: {HOST}\r\n'
                        'Accept: text/event-stream\r\n\r\n').encode()
        self.target = target
        self.settled = 0        # streaming, failed or closed
        self.finished = 0       # got `target` events, or stream ended
        self.clients = []
        for _ in range(clients):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((HOST, port))
            client = _SseClient(sock)
            self.clients.append(client)
            self.sel.register(sock, selectors.EVENT_WRITE, client)

    def pump(self, until, done, server):
        check = 0.0
        while time.monotonic() < until and not done():
            for key, _mask in self.sel.select(0.05):
                self._on_event(key.data)
            now = time.monotonic()
            if now >= check:
                check = now + 0.25
                if not server.alive():
                    return

    def close(self):
        for client in self.clients:
            try:
                client.sock.close()
            except OSError:
                pass
        self.sel.close()

    def _settle(self, client, state, error=None):
        before = client.state
        client.state = state
        client.error = error
        if before in ('connecting', 'head'):
            self.settled += 1
        elif before == 'streaming' and client.events < self.target:
            self.finished += 1  # ended early: nothing more will come
        if state != 'streaming':
            try:
                self.sel.unregister(client.sock)
            except (KeyError, ValueError):
                pass

    def _on_event(self, client):
        sock = client.sock
        if client.state == 'connecting':
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._settle(client, 'failed',
                             f'connect: {os.strerror(err)}')
                return
            try:
                sock.send(self.request)  # small: fits the empty buffer
            except OSError as exc:
                self._settle(client, 'failed', f'send: {exc!r}')
                return
            client.state = 'head'
            self.sel.modify(sock, selectors.EVENT_READ, client)
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._settle(client, 'failed', f'recv: {exc!r}')
            return
        if not data:
            if client.state == 'streaming':
                self._settle(client, 'closed', 'closed by the server')
            else:
                self._settle(client, 'failed',
                             'closed before the stream started: '
                             f'{client.head[:120]!r}')
            return
        if client.state == 'head':
            client.head += data
            end = client.head.find(b'\r\n\r\n')
            if end < 0:
                return
            status_line = client.head.split(b'\r\n', 1)[0]
            if b' 200' not in status_line:
                self._settle(client, 'failed',
                             status_line.decode('latin-1'))
                return
            data = client.head[end + 4:]
            self._settle(client, 'streaming')
        window = client.tail + data
        found = window.count(_MARK)
        if found:
            before = client.events
            client.events += found
            client.last_event = time.monotonic()
            if before < self.target <= client.events:
                self.finished += 1
        client.tail = window[-(len(_MARK) - 1):]


def sse_test(server, clients, events, phase_timeout, close_wait):
    """`clients` SSE subscribers on /api/sse, then `events` broadcasts
    (POST /broadcast); counts what each client received."""
    result = {'clients': clients, 'events': events}
    run = _SseRun(server.port, clients, events)
    try:
        started = time.monotonic()
        run.pump(started + phase_timeout,
                 lambda: run.settled >= clients, server)
        subscribed = [c for c in run.clients if c.state == 'streaming']
        result['subscribed'] = len(subscribed)
        result['subscribe_s'] = time.monotonic() - started
        failures = [c.error or c.state for c in run.clients
                    if c.state != 'streaming']
        if failures:
            result['subscribe_failures'] = len(failures)
            result['first_failure'] = failures[0]
        if not subscribed:
            result['error'] = 'no client subscribed: ' + str(
                failures[0] if failures else 'timeout')
            return result
        time.sleep(0.2)  # let the last subscriptions reach their workers

        trigger = {'statuses': [], 'error': None}

        def fire():
            conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
            try:
                for seq in range(1, events + 1):
                    conn.request('POST', '/broadcast',
                                 body=json.dumps({'seq': seq}),
                                 headers={'Content-Type': 'application/json'})
                    response = conn.getresponse()
                    response.read()
                    trigger['statuses'].append(response.status)
            except (OSError, http.client.HTTPException) as err:
                trigger['error'] = repr(err)
            finally:
                conn.close()

        thread = threading.Thread(target=fire, daemon=True)
        t_first = time.monotonic()
        thread.start()
        run.pump(t_first + phase_timeout,
                 lambda: run.finished >= len(subscribed), server)
        thread.join(5)
        delivered = sum(min(c.events, events) for c in subscribed)
        last = max((c.last_event for c in subscribed
                    if c.last_event is not None), default=None)
        result['delivered'] = delivered
        result['expected'] = clients * events
        result['all_received_all'] = delivered == clients * events
        result['clients_complete'] = sum(1 for c in subscribed
                                         if c.events >= events)
        result['streams_closed_early'] = sum(1 for c in subscribed
                                             if c.state != 'streaming')
        result['broadcast_statuses'] = sorted(set(trigger['statuses']))
        if trigger['error']:
            result['broadcast_error'] = trigger['error']
        if last is not None and last > t_first:
            result['seconds'] = last - t_first
            result['events_per_s'] = delivered / (last - t_first)
        if not server.alive():
            result['error'] = 'server exited: ' + server.failure_text()
    finally:
        run.close()
    # The streams are gone: the server must notice and forget them.
    if server.alive():
        deadline = time.monotonic() + close_wait
        pending = None
        while time.monotonic() < deadline:
            try:
                pending = get_json(server.port, '/monitor')['pending']
            except (OSError, http.client.HTTPException, ValueError,
                    RuntimeError) as err:
                pending = f'error: {err!r}'
            if pending == 0:
                break
            time.sleep(0.1)
        result['pending_after_close'] = pending
    return result


# -- graceful stop under load -------------------------------------------------------

def shutdown_test(server, grace):
    """SIGTERM with 4 requests of 300 ms CPU in flight: seconds until the
    whole process tree is gone, and what those requests got."""
    if not server.alive():
        return {'error': 'not running'}
    statuses = []

    def slow():
        try:
            status, _, _ = http_request(server.port, 'GET', '/api/work/300',
                                        timeout=30)
            statuses.append(status)
        except (OSError, http.client.HTTPException) as err:
            statuses.append(type(err).__name__)

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.15)
    seconds = server.stop(SHUTDOWN_TIMEOUT + grace)
    for thread in threads:
        thread.join(10)
    return {
        'seconds': seconds,
        'within_timeout': seconds is not None
        and seconds <= SHUTDOWN_TIMEOUT + 0.5,
        'shutdown_timeout': SHUTDOWN_TIMEOUT,
        'inflight_statuses': statuses,
    }


# -- the benchmark ------------------------------------------------------------------------

def prepare_files():
    static_dir = os.path.join(RESULTS, 'static')
    os.makedirs(static_dir, exist_ok=True)
    static_path = os.path.join(static_dir, 'file4k.bin')
    static_bytes = bytes((i * 131 + 7) % 256 for i in range(4096))
    with open(static_path, 'wb') as handle:
        handle.write(static_bytes)
    skeleton = json.dumps({'name': 'bench', 'values': list(range(8)),
                           'pad': ''})
    body = json.dumps({'name': 'bench', 'values': list(range(8)),
                       'pad': 'x' * (ECHO_BODY_SIZE - len(skeleton))})
    assert len(body) == ECHO_BODY_SIZE
    body_path = os.path.join(RESULTS, 'echo_body.json')
    with open(body_path, 'w', encoding='ascii') as handle:
        handle.write(body)
    return static_dir, static_bytes, body_path, body.encode()


def setup_environments():
    """Interpreters for (self, 1.8.1 peer, gunicorn); peers may be None."""
    python_self = self_python()
    notes = {}
    try:
        python_1x = ensure_venv('uhttp-workers-1.8.1', PEER_1X_PACKAGES,
                                PEER_1X_CHECK)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        python_1x = None
        notes['peer1x'] = str(err)
        log(f'uhttp-workers 1.8.1 unavailable: {err}')
    try:
        python_gunicorn = ensure_venv('gunicorn', ['gunicorn'],
                                      GUNICORN_CHECK)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        python_gunicorn = None
        notes['gunicorn'] = str(err)
        log(f'gunicorn unavailable: {err}')
    versions = {}
    for key, python, code in (
            ('self', python_self, "import importlib.metadata as m; "
             "print(m.version('uhttp-workers'), m.version('uhttp-server'))"),
            ('peer1x', python_1x, "import importlib.metadata as m; "
             "print(m.version('uhttp-workers'), m.version('uhttp-server'))"),
            ('gunicorn', python_gunicorn, GUNICORN_CHECK)):
        if python:
            out = subprocess.run([python, '-c', code], capture_output=True,
                                 text=True, cwd='/', timeout=60)
            versions[key] = out.stdout.strip()
    return python_self, python_1x, python_gunicorn, versions, notes


def revive(server, where):
    """Restart a server that exited; False when it does not come back."""
    try:
        server.note_crash(where)
        time.sleep(0.5)  # let its start-up CPU settle before the next run
        return True
    except (RuntimeError, OSError) as err:
        server.crashes.append(f'restart failed: {err}')
        log(f'{server.key} cannot be restarted: {err}')
        return False


def start_all(servers):
    for server in servers:
        server.start()
    failed = {}
    for server in servers:
        try:
            server.wait_ready()
        except RuntimeError as err:
            failed[server.key] = str(err)
            log(str(err))
    return failed


def bench(args):
    wrk = check_wrk()
    t_start = time.monotonic()
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    duration = args.duration or (2 if quick else 5)
    pause = 0.1 if quick else 0.2        # between two wrk runs
    idle_seconds = 5 if quick else 10
    sse_clients = 200 if quick else 1000
    sse_events = 20
    sse_timeout = 15 if quick else 30    # per phase (subscribe, deliver)
    # abandoned clients: wrk seconds, raw burst, follow-up timeout, drain
    # limit; then SIGTERM, waited for up to shutdown_timeout + stop_grace
    abandon = (1, 64, 4, 2) if quick else (3, 256, 10, 5)
    stop_grace = 1 if quick else 2
    os.makedirs(RESULTS, exist_ok=True)
    info = machine_info(wrk)
    python_self, python_1x, python_gunicorn, versions, notes = \
        setup_environments()
    static_dir, static_bytes, body_path, echo_body = prepare_files()
    servers = make_servers(python_self, python_1x, python_gunicorn,
                           static_dir)
    by_key = {s.key: s for s in servers}
    report = {
        'command': ' '.join(['python', 'benchmarks/run.py']
                            + sys.argv[1:]),
        'mode': 'quick' if quick else 'full',
        'rounds': rounds, 'duration_s': duration,
        'machine': info, 'versions': versions, 'setup_notes': notes,
        'checkout': git_state(),
        'servers': {s.key: {'title': s.title, 'port': s.port,
                            'workers': s.workers} for s in servers},
        'started_at': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    try:
        env_seconds = time.monotonic() - t_start
        log(f'environments ready in {env_seconds:.1f}s; starting '
            f'{", ".join(s.key for s in servers)} together')
        report['start_failures'] = start_all(servers)
        up = [s for s in servers if s.alive()
              and s.key not in report['start_failures']]

        report['smoke'] = {}
        for server in up:
            report['smoke'][server.key] = smoke_check(server, static_bytes,
                                                      echo_body)
        log(f'smoke: {json.dumps(report["smoke"])}')

        log(f'idle CPU over {idle_seconds}s (all servers idle together)')
        time.sleep(0.5)
        report['idle_cpu_pct'] = idle_cpu(up, idle_seconds)
        report['pss_idle_kb'] = {s.key: s.pss_kb() for s in up}
        if 'self_4w' in by_key:
            four = by_key['self_4w']
            report['self_4w_stop_s'] = four.stop()
            up = [s for s in up if s is not four]

        entries = []      # (entry name, server)
        for key in ('self', 'peer1x', 'gunicorn'):
            server = by_key.get(key)
            if server in up:
                entries.append((key, server))
                if key == 'self':
                    entries.append(('self_aa', server))
        # spread the A/A pair apart in the base order
        if len(entries) >= 3 and entries[1][0] == 'self_aa':
            entries.append(entries.pop(1))
        report['entries'] = [name for name, _ in entries]

        log('warm-up')
        for _name, server in entries:
            if _name == 'self_aa':
                continue
            run_wrk(wrk, server.port, '/api/item/1', 32, 1)
            if not quick:
                run_wrk(wrk, server.port, '/api/echo', 8, 1, body_path)

        runs = {name: {sc[0]: [] for sc in SCENARIOS} for name, _ in entries}
        for round_index in range(rounds):
            shift = round_index % len(entries)
            order = entries[shift:] + entries[:shift]
            log(f'round {round_index + 1}/{rounds}: order '
                f'{[name for name, _ in order]}')
            for scenario in SCENARIOS:
                for name, server in order:
                    if not server.alive() and \
                            not revive(server, 'between runs'):
                        runs[name][scenario[0]].append(
                            {'error': 'server down', 'round':
                             round_index + 1})
                        continue
                    result = measured_run(wrk, server, scenario, duration,
                                          body_path)
                    result['round'] = round_index + 1
                    runs[name][scenario[0]].append(result)
                    if result.get('server_crashed') or \
                            not server.responsive():
                        result['server_crashed'] = True
                        result['crash'] = server.failure_text()
                        revive(server, f'{scenario[0]} round '
                                       f'{round_index + 1}')
                    time.sleep(pause * (3 if scenario[2] >= 1024 else 1))
        report['runs'] = runs
        report['summary'] = summarize(runs)
        report['pss_after_load_kb'] = {s.key: s.pss_kb() for s in up
                                       if s.alive()}

        report['sse'] = {}
        for _name, server in entries:
            if _name == 'self_aa':
                continue
            if server.kind == 'gunicorn':
                report['sse'][server.key] = {'error': 'n/a (sync workers)'}
                continue
            if not server.alive() and not revive(server,
                                                 'before the SSE test'):
                continue
            log(f'SSE: {sse_clients} clients x {sse_events} events on '
                f'{server.key}')
            try:
                report['sse'][server.key] = sse_test(
                    server, sse_clients, sse_events, sse_timeout,
                    2 if quick else 3)
            except Exception as err:  # pylint: disable=broad-except
                report['sse'][server.key] = {'error': repr(err)}
            if not server.responsive(1):
                report['sse'][server.key].setdefault(
                    'error', 'server down after the test: '
                    + server.failure_text())

        report['abandoned'] = {}
        report['shutdown'] = {}
        for _name, server in entries:
            if _name == 'self_aa':
                continue
            if not server.responsive(1) and not revive(
                    server, 'before the abandoned-client test'):
                continue
            log(f'abandoned clients, then SIGTERM: {server.key}')
            report['abandoned'][server.key] = abandoned_test(
                wrk, server, *abandon)
            report['shutdown'][server.key] = shutdown_test(
                server, stop_grace)
    except Exception:  # pylint: disable=broad-except
        report['aborted'] = traceback.format_exc()
        log('run aborted:\n' + report['aborted'])
    finally:
        report['crashes'] = {s.key: s.crashes for s in servers if s.crashes}
        for server in servers:
            if server.alive():
                server.stop()
            server.kill_leftovers()
    report['elapsed_s'] = time.monotonic() - t_start
    write_report(report)
    return 0


# -- statistics and the report --------------------------------------------------------

_METRICS = ('ok_per_s', 'p50_ms', 'p99_ms', 'cpu_us_per_req')
_COUNTS = ('non_2xx', 'connect_errors', 'read_errors', 'write_errors',
           'timeouts')


def summarize(runs):
    summary = {}
    for name, scenarios in runs.items():
        summary[name] = {}
        for scenario, results in scenarios.items():
            good = [r for r in results if 'error' not in r]
            entry = {'runs': len(results), 'failed_runs': len(results)
                     - len(good),
                     'crashes': sum(1 for r in results
                                    if r.get('server_crashed'))}
            for metric in _METRICS:
                values = [r[metric] for r in good
                          if r.get(metric) is not None]
                entry[metric] = statistics.median(values) if values else None
            for count in _COUNTS:
                entry[count] = sum(r.get(count, 0) for r in good)
            summary[name][scenario] = entry
    return summary


def _fmt(value, digits=0):
    if value is None:
        return '—'
    if isinstance(value, str):
        return value
    if digits == 0:
        return f'{value:,.0f}'
    return f'{value:,.{digits}f}'


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return '—'
    return f'{a / b:.2f}×'


def render_markdown(report):
    lines = []
    add = lines.append
    machine = report['machine']
    add(f'# Benchmark results ({report["mode"]} run)')
    add('')
    add(f'- command: `{report["command"]}`')
    add(f'- started: {report["started_at"]}, took '
        f'{report.get("elapsed_s", 0):.0f} s; {report["rounds"]} round(s) '
        f'of {report["duration_s"]} s wrk runs, medians shown')
    add(f'- machine: {machine["nproc"]} cores, {machine["cpu_model"]}, '
        f'{machine.get("mem_total", "?")} RAM, kernel {machine["kernel"]}, '
        f'Python {machine["python"]}, {machine["wrk"]}')
    versions = report.get('versions', {})
    add(f'- checkout: {report.get("checkout", "?")}')
    add(f'- versions: this checkout uhttp-workers/uhttp-server '
        f'{versions.get("self", "?")}; peer {versions.get("peer1x", "n/a")}; '
        f'gunicorn {versions.get("gunicorn", "n/a")}')
    add('- every server: 127.0.0.1, 2 workers; wrk -t1 (one thread) on the '
        'same 2 cores')
    if report.get('aborted'):
        add('- **the run was aborted**: '
            + report['aborted'].strip().splitlines()[-1])
    for key, note in report.get('setup_notes', {}).items():
        add(f'- **{key} unavailable**: {note}')
    for key, text in report.get('start_failures', {}).items():
        add(f'- **{key} failed to start**: {text}')
    for key, checks in report.get('smoke', {}).items():
        bad = {k: v for k, v in checks.items() if v != 'ok'}
        if bad:
            add(f'- **smoke check of {key} failed**: {bad}')
    add('')

    summary = report.get('summary', {})
    entries = report.get('entries', [])
    titles = {name: (report['servers'][name]['title'] if name in
                     report['servers'] else
                     report['servers']['self']['title'] + ' (A/A copy)')
              for name in entries}
    if summary:
        add('## Throughput and latency')
        add('')
        add('2xx/s and latency are medians over rounds; error counts are '
            'summed over all rounds (non-2xx = HTTP status ≥ 400 as wrk '
            'counts them; socket errors: connect/read/write/timeout). '
            'CPU/req = CPU time of the server\'s whole process tree per '
            'completed response.')
        add('')
        add('| scenario | server | 2xx/s | non-2xx | sock err c/r/w/t | '
            'p50 ms | p99 ms | CPU µs/req |')
        add('|---|---|---:|---:|---|---:|---:|---:|')
        for scenario, *_ in SCENARIOS:
            for name in entries:
                row = summary[name][scenario]
                errors = '/'.join(str(row[k]) for k in (
                    'connect_errors', 'read_errors', 'write_errors',
                    'timeouts'))
                extra = ''
                if row['crashes']:
                    extra = f' **crashed ×{row["crashes"]}**'
                add(f'| {SCENARIO_TITLES[scenario]} | {titles[name]}{extra} '
                    f'| {_fmt(row["ok_per_s"])} | {row["non_2xx"]} | '
                    f'{errors} | {_fmt(row["p50_ms"], 2)} | '
                    f'{_fmt(row["p99_ms"], 2)} | '
                    f'{_fmt(row["cpu_us_per_req"])} |')
        add('')
        add('## This project against each peer')
        add('')
        add('Ratios of medians, this checkout ÷ peer: 2xx/s (> 1 is better '
            'for this project), p99 and CPU/req (< 1 is better). '
            'A/A = the same server measured as a second entry in the same '
            'rounds: |difference| ÷ mean, the noise floor of these numbers.')
        add('')
        header = '| scenario |'
        rule = '|---|'
        peers = [p for p in ('peer1x', 'gunicorn') if p in summary]
        for peer in peers:
            short = '1.8.1' if peer == 'peer1x' else 'gunicorn'
            header += (f' 2xx/s vs {short} | p99 vs {short} | '
                       f'CPU/req vs {short} |')
            rule += '---:|---:|---:|'
        if 'self_aa' in summary:
            header += ' A/A 2xx/s | A/A p99 |'
            rule += '---:|---:|'
        add(header)
        add(rule)
        for scenario, *_ in SCENARIOS:
            mine = summary['self'][scenario]
            row = f'| {SCENARIO_TITLES[scenario]} |'
            for peer in peers:
                theirs = summary[peer][scenario]
                row += (f' {_ratio(mine["ok_per_s"], theirs["ok_per_s"])} |'
                        f' {_ratio(mine["p99_ms"], theirs["p99_ms"])} |'
                        f' {_ratio(mine["cpu_us_per_req"], theirs["cpu_us_per_req"])} |')
            if 'self_aa' in summary:
                copy = summary['self_aa'][scenario]
                row += (f' {_noise(mine["ok_per_s"], copy["ok_per_s"])} |'
                        f' {_noise(mine["p99_ms"], copy["p99_ms"])} |')
            add(row)
        add('')

    add('## Resources')
    add('')
    add('| server | idle CPU % | PSS idle MiB | PSS after load MiB |')
    add('|---|---:|---:|---:|')
    for key, meta in report['servers'].items():
        idle = report.get('idle_cpu_pct', {}).get(key)
        pss0 = report.get('pss_idle_kb', {}).get(key)
        pss1 = report.get('pss_after_load_kb', {}).get(key)
        add(f'| {meta["title"]} | {_fmt(idle, 2)} | '
            f'{_fmt(pss0 / 1024 if pss0 else None, 1)} | '
            f'{_fmt(pss1 / 1024 if pss1 else None, 1)} |')
    add('')
    add('Idle CPU: all servers up and idle together, CPU time of each '
        'process tree over the idle window.')
    add('')

    if report.get('sse'):
        add('## SSE broadcast')
        add('')
        add('| server | clients subscribed | events | delivered / expected '
            '| every client got every event | events/s delivered | '
            'pending after clients left | notes |')
        add('|---|---:|---:|---:|---|---:|---:|---|')
        for key, sse in report['sse'].items():
            title = report['servers'][key]['title']
            notes = []
            for field in ('error', 'first_failure', 'broadcast_error'):
                if sse.get(field):
                    notes.append(f'{field}: {sse[field]}')
            if sse.get('streams_closed_early'):
                notes.append(f'{sse["streams_closed_early"]} streams closed '
                             'early')
            if 'delivered' not in sse:
                add(f'| {title} | {sse.get("subscribed", "—")} | '
                    f'{sse.get("events", "—")} | — | — | — | '
                    f'{sse.get("pending_after_close", "—")} | '
                    f'{"; ".join(notes) or "—"} |')
                continue
            add(f'| {title} | {sse["subscribed"]}/{sse["clients"]} | '
                f'{sse["events"]} | {sse["delivered"]}/{sse["expected"]} | '
                f'{"yes" if sse["all_received_all"] else "**no**"} | '
                f'{_fmt(sse.get("events_per_s"))} | '
                f'{sse.get("pending_after_close", "—")} | '
                f'{"; ".join(notes) or "—"} |')
        add('')

    if report.get('abandoned'):
        add('## Abandoned clients')
        add('')
        first = next(iter(report['abandoned'].values()))
        add('wrk -t1 -c256 --timeout 1s on /api/work/50 (2 workers, 50 ms '
            'of CPU each), stopped with its requests in flight; then '
            '"burst" raw clients that send the same request and close at '
            'once; then one GET /api/item/1 (given up after '
            f'{first.get("followup_timeout_s")} s), and /monitor polled '
            'until nothing is pending or queued. wrk\'s --timeout only '
            'counts late responses (it keeps the connection), so the '
            'abandonment is wrk exiting and the raw burst. The SIGTERM test '
            'below follows each server\'s abandoned-client test at once.')
        add('')
        add('| server | wrk 2xx/s | burst clients | follow-up status | '
            'follow-up ms | drained (pending 0) after s | pending left |')
        add('|---|---:|---:|---:|---:|---:|---:|')
        for key, item in report['abandoned'].items():
            title = report['servers'][key]['title']
            drained = item.get('drained_after_s')
            add(f'| {title} | {_fmt(item["wrk"].get("ok_per_s"))} | '
                f'{item.get("burst_sent")} | {item.get("followup_status")} | '
                f'{_fmt(item.get("followup_ms"), 1)} | '
                f'{_fmt(drained, 2) if drained is not None else "not drained"} | '
                f'{item.get("pending_left")} |')
        add('')

    if report.get('shutdown'):
        add('## SIGTERM with requests in flight')
        add('')
        add(f'4 × GET /api/work/300 in flight, then SIGTERM to the root '
            f'process; shutdown_timeout (graceful timeout) = '
            f'{SHUTDOWN_TIMEOUT:g} s.')
        add('')
        add('| server | seconds until the whole tree exited | within timeout '
            '| in-flight requests got |')
        add('|---|---:|---|---|')
        for key, item in report['shutdown'].items():
            title = report['servers'][key]['title']
            if 'error' in item:
                add(f'| {title} | — | — | {item["error"]} |')
                continue
            add(f'| {title} | {_fmt(item["seconds"], 2)} | '
                f'{"yes" if item["within_timeout"] else "**no**"} | '
                f'{item["inflight_statuses"]} |')
        if report.get('self_4w_stop_s') is not None:
            add('')
            add(f'(idle 4-worker instance of this project stopped in '
                f'{report["self_4w_stop_s"]:.2f} s)')
        add('')

    if report.get('crashes'):
        add('## Crashes during the run')
        add('')
        for key, texts in report['crashes'].items():
            for text in texts:
                add(f'- {report["servers"][key]["title"]}: {text}')
        add('')
    return '\n'.join(lines)


def _noise(a, b):
    if a is None or b is None or (a + b) == 0:
        return '—'
    return f'{abs(a - b) / ((a + b) / 2) * 100:.1f}%'


def write_report(report):
    text = render_markdown(report)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'latest.md'), 'w',
              encoding='utf-8') as handle:
        handle.write(text + '\n')
    with open(os.path.join(RESULTS, 'latest.json'), 'w',
              encoding='utf-8') as handle:
        json.dump(report, handle, indent=1, default=str)
    chart = write_chart(report)
    log(f'wrote {RESULTS}/latest.md, latest.json'
        + (f', {os.path.basename(chart)}' if chart else '')
        + f' ({report.get("elapsed_s", 0):.0f}s)')


def write_chart(report):
    """A bar chart of 2xx/s per scenario, if matplotlib is importable."""
    summary = report.get('summary')
    if not summary:
        return None
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    names = [n for n in report['entries'] if n != 'self_aa']
    scenarios = [sc[0] for sc in SCENARIOS]
    fig, axis = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        values = [summary[name][sc]['ok_per_s'] or 0 for sc in scenarios]
        axis.bar([i + index * width for i in range(len(scenarios))], values,
                 width, label=report['servers'][name]['title'])
    axis.set_xticks([i + width * (len(names) - 1) / 2
                     for i in range(len(scenarios))])
    axis.set_xticklabels(scenarios, rotation=20)
    axis.set_ylabel('2xx responses / s (median)')
    axis.legend()
    fig.tight_layout()
    path = os.path.join(RESULTS, 'latest.png')
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- profile mode -----------------------------------------------------------------------

_PER_REQUEST_CALLS = (
    ('epoll.poll', "'poll' of 'select.epoll' objects"),
    ('socket.recv', "'recv' of '_socket.socket' objects"),
    ('socket.send', "'send' of '_socket.socket' objects"),
    ('socket.sendall', "'sendall' of '_socket.socket' objects"),
    ('pickle.dumps', "_pickle.dumps"),
    ('pickle.loads', "_pickle.loads"),
)


def _category(func):
    filename, _line, name = func
    if "'poll' of 'select.epoll'" in name:
        return 'waiting in epoll.poll'
    if '_socket.socket' in name:
        return 'socket syscalls (send/recv/accept)'
    if '_pickle' in name:
        return 'pickle dumps/loads'
    if filename.endswith(os.path.join('uhttp', 'server.py')):
        return 'uhttp-server: HTTP parse + response build'
    if filename.endswith(os.path.join('workers', 'routing.py')):
        return 'uhttp.workers routing'
    if os.sep + 'json' + os.sep in filename:
        return 'json encode/decode'
    if os.path.join('uhttp', 'workers') in filename:
        return 'uhttp.workers: ' + os.path.basename(filename)
    if filename.endswith('selectors.py') or 'epoll' in name:
        return 'selectors wrapper / epoll register/modify'
    if filename.endswith('workers_app.py'):
        return 'application handler'
    return 'other (stdlib, builtins)'


def _categories(stats, requests):
    """tottime grouped by where it is spent, per request."""
    totals = {}
    for func, value in stats.stats.items():
        key = _category(func)
        totals[key] = totals.get(key, 0.0) + value[2]
    busy = sum(v for k, v in totals.items() if k != 'waiting in epoll.poll')
    lines = [f'where the time goes, per request (tottime; busy = all but '
             f'the wait: {busy / requests * 1e6:.0f} µs/request under '
             'the profiler):']
    for key, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = '' if key == 'waiting in epoll.poll' or not busy else \
            f' ({value / busy * 100:.0f}% of busy)'
        lines.append(f'  {value / requests * 1e6:8.1f} µs  {key}{share}')
    return '\n'.join(lines)


def git_state():
    """Commit and dirtiness of the checkout (read-only git commands)."""
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                              cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--',
                                'uhttp'], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + (' (uhttp/ modified)' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def profile(args):
    import pstats  # pylint: disable=import-outside-toplevel
    import io  # pylint: disable=import-outside-toplevel
    wrk = check_wrk()
    duration = args.duration or (3 if args.quick else 8)
    os.makedirs(RESULTS, exist_ok=True)
    static_dir, _static_bytes, _body_path, _echo = prepare_files()
    python_self = self_python()
    prof_dir = os.path.join(RESULTS, 'profile')
    shutil.rmtree(prof_dir, ignore_errors=True)
    os.makedirs(prof_dir)
    server = make_servers(python_self, None, None, static_dir,
                          include_4w=False)[0]
    server.env = dict(server.env, BENCH_PROFILE_DIR=prof_dir)
    server.start()
    out = io.StringIO()
    try:
        server.wait_ready()
        run_wrk(wrk, server.port, '/api/item/1', 32, 1)
        monitor0 = get_json(server.port, '/monitor')
        log(f'profiling: wrk -c32 -d{duration}s on /api/item/1')
        result = run_wrk(wrk, server.port, '/api/item/1', 32, duration)
        time.sleep(1.5)  # 'handled' arrives with the 1 s heartbeats
        monitor1 = get_json(server.port, '/monitor')
    finally:
        stopped = server.stop()
    handled = {w['index']: w['handled'] for p in monitor1['pools']
               for w in p['workers']}
    handled0 = {w['index']: w['handled'] for p in monitor0['pools']
                for w in p['workers']}
    total = sum(handled.values())
    print(f'# Profile: wrk -t1 -c32 -d{duration}s GET /api/item/1 '
          f'(dispatcher and workers under cProfile; checkout '
          f'{git_state()})', file=out)
    print(f'wrk: {result.get("ok_per_s", 0):,.0f} 2xx/s under the '
          f'profiler, p50 {result.get("p50_ms")} ms, p99 '
          f'{result.get("p99_ms")} ms; requests handled per worker since '
          f'start {handled} (before the measured run {handled0}); '
          f'stop took {stopped}s', file=out)
    files = [('dispatcher', os.path.join(prof_dir, 'dispatcher.prof'),
              total)]
    for index in sorted(handled):
        files.append((f'worker {index}',
                      os.path.join(prof_dir, f'worker-{index}.prof'),
                      handled[index]))
    for label, path, requests in files:
        if not os.path.exists(path):
            print(f'\n## {label}: no profile written ({path})', file=out)
            continue
        stats = pstats.Stats(path, stream=out)
        print(f'\n## {label}: top 25 by tottime ({requests} requests '
              f'over the process lifetime)', file=out)
        stats.sort_stats('tottime').print_stats(25)
        if requests:
            print(_categories(stats, requests), file=out)
            calls = []
            for short, needle in _PER_REQUEST_CALLS:
                count = sum(value[1] for func, value in stats.stats.items()
                            if needle in str(func))
                if count:
                    calls.append(f'{short} {count / requests:.2f}')
            total_tt = sum(value[2] for value in stats.stats.values())
            print(f'calls per request: {", ".join(calls)}; total profiled '
                  f'time per request {total_tt / requests * 1e6:.0f} µs '
                  '(includes time blocked in poll)', file=out)
    text = out.getvalue()
    print(text)
    with open(os.path.join(RESULTS, 'profile.txt'), 'w',
              encoding='utf-8') as handle:
        handle.write(text)
    log(f'wrote {RESULTS}/profile.txt and the .prof files in {prof_dir}')
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='one short round (under 2 minutes)')
    parser.add_argument('--profile', action='store_true',
                        help='profile this project instead of comparing')
    parser.add_argument('--rounds', type=int, help='override the rounds')
    parser.add_argument('--duration', type=int,
                        help='seconds per wrk run (default 2 quick, 5 full)')
    args = parser.parse_args()
    if args.profile:
        return profile(args)
    return bench(args)


if __name__ == '__main__':
    sys.exit(main())
