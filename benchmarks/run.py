#!/usr/bin/env python3
"""Side-by-side benchmark of uhttp.workers (this checkout) against its peers.

    python benchmarks/run.py            full run (3 rounds, about 13 minutes)
    python benchmarks/run.py --quick    one short round (about 3 minutes)
    python benchmarks/run.py --baseline REF
                                        also measure commit REF of this
                                        repository as one more server
    python benchmarks/run.py --profile  cProfile of the dispatcher and a worker
                                        during a c=32 run on the pool route
    python benchmarks/run.py --ws       the WebSocket benchmark (ws_bench.py)

Peers, each in its own virtual environment under benchmarks/.venvs/ (created
on first use, reused afterwards):
  uhttp-workers==1.8.1 with uhttp-server==2.6.2 (the PyPI implementation),
  gunicorn (latest) with 2 sync workers serving the same endpoints as WSGI,
  uvicorn[standard] (httptools, uvloop) and granian[uvloop] (its ASGI
  interface), each with 2 workers serving the same endpoints as raw ASGI.

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

import hol
import targets
from baseline import Baseline, BaselineError

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

PEER_1X_CHECK = ("import importlib.metadata as m; "
                 "assert m.version('uhttp-workers') == '1.8.1'; "
                 "assert m.version('uhttp-server') == '2.6.2'; "
                 "import uhttp.workers; "
                 "print(m.version('uhttp-workers'), m.version('uhttp-server'))")

# kind -> (venv under .venvs/, pip requirements, check run by the venv's
# python: it must exit 0 and print the version shown in the report)
PEERS = {
    'peer1x': ('uhttp-workers-1.8.1',
               ['uhttp-workers==1.8.1', 'uhttp-server==2.6.2'],
               PEER_1X_CHECK),
    'gunicorn': ('gunicorn', ['gunicorn'],
                 "import gunicorn; print(gunicorn.__version__)"),
    'uvicorn': ('uvicorn', ['uvicorn[standard]'],
                "import uvicorn, uvloop, httptools; print(uvicorn.__version__,"
                " '(uvloop', uvloop.__version__ + ', httptools',"
                " httptools.__version__ + ')')"),
    'granian': ('granian', ['granian[uvloop]'],
                "import granian, uvloop; print(granian.__version__,"
                " '(uvloop', uvloop.__version__ + ')')"),
}
SELF_VERSION = ("import importlib.metadata as m; "
                "print(m.version('uhttp-workers'), m.version('uhttp-server'))")

# the kinds that run apps/workers_app.py (a dispatcher with /monitor)
UHTTP_KINDS = ('self', 'baseline', 'peer1x')
ASGI_KINDS = ('uvicorn', 'granian')
# entries measured in the rounds, in this base order (rotated per round)
ENTRY_ORDER = ('self', 'baseline', 'peer1x', 'gunicorn', 'uvicorn',
               'granian')

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
    'baseline': 'uhttp.workers (baseline)',
    'peer1x': 'uhttp-workers 1.8.1',
    'gunicorn': 'gunicorn sync',
    'uvicorn': 'uvicorn (httptools, uvloop)',
    'granian': 'granian asgi',
}

# column names of the ratio tables
SHORT_NAMES = {
    'baseline': 'baseline',
    'peer1x': '1.8.1',
    'gunicorn': 'gunicorn',
    'uvicorn': 'uvicorn',
    'granian': 'granian',
}


def log(message):
    """Progress to stderr (the table goes to stdout)."""
    sys.stderr.write(f'[bench {time.strftime("%H:%M:%S")}] {message}\n')
    sys.stderr.flush()


# -- environments ---------------------------------------------------------------

def _venv_python(name):
    return os.path.join(VENVS, name, 'bin', 'python')


def _python_output(python, code):
    """What `python -c code` prints, or None when it fails."""
    if not os.path.exists(python):
        return None
    try:
        # cwd '/': from the repo root, `import uhttp.workers` would find
        # the checkout's package before the one installed in the venv
        done = subprocess.run([python, '-c', code], capture_output=True,
                              text=True, cwd='/', timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _python_ok(python, code):
    return _python_output(python, code) is not None


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
    """(ppid, cpu ticks incl. reaped children, start time, own cpu ticks)
    or None."""
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii',
                  errors='replace') as handle:
            text = handle.read()
    except OSError:
        return None
    rest = text[text.rindex(')') + 2:].split()
    # rest[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17,
    # starttime=22
    own = int(rest[11]) + int(rest[12])
    ticks = own + int(rest[13]) + int(rest[14])
    return int(rest[1]), ticks, int(rest[19]), own


def process_tree(root):
    """{pid: (ticks, starttime, own ticks)} of root and all its
    descendants."""
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
        tree[pid] = stats[pid][1:]
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

    def __init__(self, key, kind, port, cmd, env, workers=WORKERS,
                 title=None):
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
        self.ready_dir = None    # ASGI apps: one file per started worker
        self._title = title or KIND_TITLES[kind]

    @property
    def title(self):
        return self._title if self.workers == WORKERS else \
            f'{self._title}, {self.workers} workers'

    @property
    def has_monitor(self):
        """True when /monitor reports the pending table and the pools."""
        return self.kind in UHTTP_KINDS

    def start(self):
        self.starts += 1
        suffix = '' if self.starts == 1 else f'.{self.starts}'
        self.log_path = os.path.join(RESULTS, 'logs',
                                     f'{self.key}{suffix}.log')
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        env = self.env
        if self.kind in ASGI_KINDS:
            self.ready_dir = os.path.join(RESULTS, 'ready',
                                          f'{self.key}{suffix}')
            shutil.rmtree(self.ready_dir, ignore_errors=True)
            os.makedirs(self.ready_dir)
            env = dict(env, BENCH_READY_DIR=self.ready_dir)
        with open(self.log_path, 'wb') as log_file:
            self.proc = subprocess.Popen(
                self.cmd, env=env, cwd=BENCH, stdout=log_file,
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
        for pid, (_ticks, start, _own) in tree.items():
            self.known[pid] = start
        return tree

    def cpu_ticks(self):
        """(CPU ticks of the whole tree, CPU ticks of the root process
        alone: the dispatcher of uhttp.workers, the master of the others)."""
        tree = self.tree()
        root = tree.get(self.pid)
        return (sum(ticks for ticks, _, _ in tree.values()),
                root[2] if root else None)

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
            if len(self.tree()) - 1 < self.workers:
                return False
        elif self.kind in ASGI_KINDS:
            # each worker marks its lifespan startup with a file named after
            # its PID; count those of processes of this tree
            tree = self.tree()
            started = [name for name in os.listdir(self.ready_dir)
                       if name.isdigit() and int(name) in tree]
            if len(started) < self.workers:
                return False
        else:
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


def make_servers(pythons, static_dir, include_4w=True, baseline=None):
    """The servers to start: pythons maps a kind to its interpreter (None:
    not available); baseline is (python, title) of --baseline or None.

    Every server gets the same listen backlog (1024: the default of this
    project and granian; gunicorn's and uvicorn's is 2048) and the same
    graceful timeout (SHUTDOWN_TIMEOUT); everything else is each server's
    default (apps/workers_app.py says what 1.8.1 is given)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    for name in ('JOURNAL_STREAM', 'BENCH_PROFILE_DIR', 'PYTHONPATH',
                 'BENCH_READY_DIR'):
        env.pop(name, None)
    app = os.path.join(APPS, 'workers_app.py')
    static_env = dict(env, BENCH_STATIC_DIR=static_dir)
    grace = str(int(SHUTDOWN_TIMEOUT))
    servers = []

    def workers_cmd(python, port, workers):
        return [python, app, '--port', str(port), '--workers', str(workers),
                '--static-dir', static_dir, '--shutdown-timeout',
                str(SHUTDOWN_TIMEOUT)]

    def tool(python, name):
        return os.path.join(os.path.dirname(python), name)

    def add(key, kind, build, server_env=env, **extra):
        port = free_port()
        servers.append(Server(key, kind, port, build(port), server_env,
                              **extra))

    python_self = pythons['self']
    add('self', 'self', lambda port: workers_cmd(python_self, port, WORKERS))
    if include_4w:
        add('self_4w', 'self', lambda port: workers_cmd(python_self, port, 4),
            workers=4)
    if baseline:
        add('baseline', 'baseline',
            lambda port: workers_cmd(baseline[0], port, WORKERS),
            title=baseline[1])
    if pythons.get('peer1x'):
        add('peer1x', 'peer1x',
            lambda port: workers_cmd(pythons['peer1x'], port, WORKERS))
    if pythons.get('gunicorn'):
        add('gunicorn', 'gunicorn', lambda port: [
            tool(pythons['gunicorn'], 'gunicorn'), '-w', str(WORKERS),
            '-k', 'sync', '-b', f'{HOST}:{port}', '--backlog', '1024',
            '--chdir', APPS, '--graceful-timeout', grace,
            '--no-control-socket', '--log-level', 'warning',
            'gunicorn_app:app'], static_env)
    if pythons.get('uvicorn'):
        add('uvicorn', 'uvicorn', lambda port: [
            tool(pythons['uvicorn'], 'uvicorn'), 'asgi_app:app',
            '--app-dir', APPS, '--host', HOST, '--port', str(port),
            '--workers', str(WORKERS), '--backlog', '1024',
            '--timeout-graceful-shutdown', grace, '--lifespan', 'on',
            '--log-level', 'warning', '--no-access-log'], static_env)
    if pythons.get('granian'):
        add('granian', 'granian', lambda port: [
            tool(pythons['granian'], 'granian'), '--interface', 'asgi',
            '--workers', str(WORKERS), '--host', HOST, '--port', str(port),
            '--backlog', '1024', '--workers-kill-timeout', grace,
            '--log-level', 'warning', '--working-dir', APPS,
            'asgi_app:app'], static_env)
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

    def sleep():
        status, data, _ = http_request(port, 'GET', '/api/sleep/10')
        if status != 200 or json.loads(data) != {'ms': 10}:
            return f'HTTP {status} {data[:80]!r}'
        return None

    def monitor():
        status, data, _ = http_request(port, 'GET', '/monitor')
        if status != 200 or 'pending' not in json.loads(data):
            return f'HTTP {status} {data[:80]!r}'
        return None

    for name, func in (('health', health), ('static', static),
                       ('item', item), ('echo', echo), ('work', work),
                       ('sleep', sleep), ('monitor', monitor)):
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
    """wrk plus CPU time of the server's process tree, and of its root
    process alone, around it."""
    name, path, connections, post = scenario
    tree_before, root_before = server.cpu_ticks()
    result = run_wrk(wrk, server.port, path, connections, duration,
                     body_file if post else None)
    tree_after, root_after = server.cpu_ticks() if server.alive() \
        else (None, None)
    if 'error' not in result:
        served = result['requests']
        if tree_after is not None and served:
            result['cpu_us_per_req'] = (tree_after - tree_before) \
                / CLK_TCK / served * 1e6
        if None not in (root_before, root_after) and served:
            result['disp_cpu_us_per_req'] = (root_after - root_before) \
                / CLK_TCK / served * 1e6
        result['cpu_s'] = None if tree_after is None else \
            (tree_after - tree_before) / CLK_TCK
    if not server.alive():
        result['server_crashed'] = True
    return result


# -- idle CPU ----------------------------------------------------------------------------

def idle_cpu(servers, seconds):
    """CPU % of each server's tree while nothing talks to it (together)."""
    before = {s.key: s.cpu_ticks()[0] for s in servers}
    started = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    result = {}
    for server in servers:
        ticks = server.cpu_ticks()[0] - before[server.key]
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
    if not server.has_monitor:
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
    """({kind: python or None}, {kind: version}, {kind: why unavailable})."""
    pythons = {'self': self_python()}
    versions = {'self': _python_output(pythons['self'], SELF_VERSION)}
    notes = {}
    for kind, (venv, packages, check) in PEERS.items():
        try:
            pythons[kind] = ensure_venv(venv, packages, check)
            versions[kind] = _python_output(pythons[kind], check)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            pythons[kind] = None
            notes[kind] = str(err)
            log(f'{KIND_TITLES[kind]} unavailable: {err}')
    return pythons, versions, notes


def setup_baseline(ref):
    """The --baseline commit checked out and installed; its interpreter is
    in .python. Raises BaselineError."""
    base = Baseline(REPO, ref)
    log(f'baseline {ref} = {base.commit[:12]}: checking it out')
    base.checkout()
    try:
        base.install(ensure_venv, VENVS)
    except BaselineError:
        base.remove()
        raise
    return base


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


class Plan:
    """Durations and sizes of one run (full or --quick)."""

    def __init__(self, args):
        quick = args.quick
        self.quick = quick
        self.rounds = args.rounds or (1 if quick else 3)
        self.duration = args.duration or (2 if quick else 5)
        self.pause = 0.1 if quick else 0.2        # between two wrk runs
        self.idle_seconds = 5 if quick else 10
        self.hol_seconds = 2 if quick else 4
        self.sse_clients = 200 if quick else 1000
        self.sse_events = 20
        self.sse_timeout = 15 if quick else 30    # per phase
        self.sse_close_wait = 2 if quick else 3
        # abandoned clients: wrk seconds, raw burst, follow-up timeout,
        # drain limit; then SIGTERM, waited for up to shutdown_timeout +
        # stop_grace
        self.abandon = (1, 64, 4, 2) if quick else (3, 256, 10, 5)
        self.stop_grace = 1 if quick else 2


def bench(args):
    wrk = check_wrk()
    t_start = time.monotonic()
    plan = Plan(args)
    os.makedirs(RESULTS, exist_ok=True)
    info = machine_info(wrk)
    base = None
    if args.baseline:
        try:
            base = setup_baseline(args.baseline)
        except BaselineError as err:
            sys.stderr.write(f'--baseline {args.baseline}: {err}\n')
            return 2
    try:
        pythons, versions, notes = setup_environments()
        if base:
            versions['baseline'] = (
                f'{_python_output(base.python, SELF_VERSION)}, commit '
                f'{base.commit[:12]} "{base.subject}"')
        files = prepare_files()
        servers = make_servers(
            pythons, files[0],
            baseline=(base.python, base.title) if base else None)
        report = {
            'command': ' '.join(['python', 'benchmarks/run.py']
                                + sys.argv[1:]),
            'mode': 'quick' if plan.quick else 'full',
            'rounds': plan.rounds, 'duration_s': plan.duration,
            'machine': info, 'versions': versions, 'setup_notes': notes,
            'checkout': git_state(),
            'servers': {s.key: {'title': s.title, 'kind': s.kind,
                                'port': s.port, 'workers': s.workers}
                        for s in servers},
            'started_at': time.strftime('%Y-%m-%d %H:%M:%S'),
        }
        log(f'environments ready in {time.monotonic() - t_start:.1f}s')
        try:
            run_phases(report, wrk, servers, plan, files)
        except Exception:  # pylint: disable=broad-except
            report['aborted'] = traceback.format_exc()
            log('run aborted:\n' + report['aborted'])
        finally:
            report['crashes'] = {s.key: s.crashes for s in servers
                                 if s.crashes}
            for server in servers:
                if server.alive():
                    server.stop()
                server.kill_leftovers()
    finally:
        cleanup_problem = base.remove() if base else None
    if cleanup_problem:
        log(f'removing the baseline worktree: {cleanup_problem}')
        report['setup_notes']['baseline cleanup'] = cleanup_problem
    report['elapsed_s'] = time.monotonic() - t_start
    write_report(report)
    return 0


def run_phases(report, wrk, servers, plan, files):
    """Start everything, then each phase of the method in order; the
    results go into report."""
    _static_dir, static_bytes, body_path, echo_body = files
    by_key = {s.key: s for s in servers}
    log(f'starting {", ".join(s.key for s in servers)} together')
    report['start_failures'] = start_all(servers)
    up = [s for s in servers if s.alive()
          and s.key not in report['start_failures']]

    report['smoke'] = {s.key: smoke_check(s, static_bytes, echo_body)
                       for s in up}
    log(f'smoke: {json.dumps(report["smoke"])}')

    log(f'idle CPU over {plan.idle_seconds}s (all servers idle together)')
    time.sleep(0.5)
    report['idle_cpu_pct'] = idle_cpu(up, plan.idle_seconds)
    report['pss_idle_kb'] = {s.key: s.pss_kb() for s in up}
    if 'self_4w' in by_key:
        four = by_key['self_4w']
        report['self_4w_stop_s'] = four.stop()
        up = [s for s in up if s is not four]

    entries = round_entries(by_key, up)
    report['entries'] = [name for name, _ in entries]
    servers_once = [server for name, server in entries if name != 'self_aa']

    log('warm-up')
    for server in servers_once:
        run_wrk(wrk, server.port, '/api/item/1', 32, 1)
        if not plan.quick:
            run_wrk(wrk, server.port, '/api/echo', 8, 1, body_path)

    report['runs'] = measure_rounds(wrk, entries, plan, body_path)
    report['summary'] = summarize(report['runs'])
    report['targets'] = {name: targets.evaluate(report['summary'], name)
                         for name in ('self', 'self_aa', 'baseline')
                         if name in report['entries']}
    report['pss_after_load_kb'] = {s.key: s.pss_kb() for s in up
                                   if s.alive()}

    report['hol'] = {}
    for server in servers_once:
        if not server.responsive(1) and not revive(
                server, 'before the head-of-line test'):
            continue
        log(f'head-of-line: {server.key}')
        report['hol'][server.key] = hol.head_of_line_test(
            HOST, server.port, plan.hol_seconds)

    report['sse'] = {}
    for server in servers_once:
        report['sse'][server.key] = sse_phase(server, plan)

    report['abandoned'] = {}
    report['shutdown'] = {}
    for server in servers_once:
        if not server.responsive(1) and not revive(
                server, 'before the abandoned-client test'):
            continue
        log(f'abandoned clients, then SIGTERM: {server.key}')
        report['abandoned'][server.key] = abandoned_test(
            wrk, server, *plan.abandon)
        report['shutdown'][server.key] = shutdown_test(
            server, plan.stop_grace)


def round_entries(by_key, up):
    """[(entry name, server)] in the base order of the rounds. This
    project is in twice ('self' and its A/A copy 'self_aa', spaced apart)."""
    entries = [(key, by_key[key]) for key in ENTRY_ORDER
               if by_key.get(key) in up]
    if entries and entries[0][0] == 'self':
        entries.insert(max(1, (len(entries) + 1) // 2),
                       ('self_aa', entries[0][1]))
    return entries


def measure_rounds(wrk, entries, plan, body_path):
    """Every scenario on every entry, for plan.rounds rounds; the order of
    the entries is rotated every round. {entry: {scenario: [runs]}}."""
    runs = {name: {sc[0]: [] for sc in SCENARIOS} for name, _ in entries}
    for round_index in range(plan.rounds):
        shift = round_index % len(entries)
        order = entries[shift:] + entries[:shift]
        log(f'round {round_index + 1}/{plan.rounds}: order '
            f'{[name for name, _ in order]}')
        for scenario in SCENARIOS:
            for name, server in order:
                if not server.alive() and not revive(server, 'between runs'):
                    runs[name][scenario[0]].append(
                        {'error': 'server down', 'round': round_index + 1})
                    continue
                result = measured_run(wrk, server, scenario, plan.duration,
                                      body_path)
                result['round'] = round_index + 1
                runs[name][scenario[0]].append(result)
                if result.get('server_crashed') or not server.responsive():
                    result['server_crashed'] = True
                    result['crash'] = server.failure_text()
                    revive(server, f'{scenario[0]} round {round_index + 1}')
                time.sleep(plan.pause * (3 if scenario[2] >= 1024 else 1))
    return runs


def sse_phase(server, plan):
    """The SSE test of one server, or why it was not run."""
    if server.kind == 'gunicorn':
        return {'error': 'n/a (sync workers)'}
    if not server.has_monitor:
        return {'error': 'n/a (no broadcast across worker processes in a '
                         'plain ASGI app)'}
    if not server.alive() and not revive(server, 'before the SSE test'):
        return {'error': 'server down'}
    log(f'SSE: {plan.sse_clients} clients x {plan.sse_events} events on '
        f'{server.key}')
    try:
        result = sse_test(server, plan.sse_clients, plan.sse_events,
                          plan.sse_timeout, plan.sse_close_wait)
    except Exception as err:  # pylint: disable=broad-except
        result = {'error': repr(err)}
    if not server.responsive(1):
        result.setdefault('error', 'server down after the test: '
                          + server.failure_text())
    return result


# -- statistics and the report --------------------------------------------------------

_METRICS = ('ok_per_s', 'p50_ms', 'p99_ms', 'cpu_us_per_req',
            'disp_cpu_us_per_req')
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
    for section in (_md_header, _md_targets, _md_throughput, _md_ratios,
                    _md_resources, _md_hol, _md_sse, _md_abandoned,
                    _md_shutdown, _md_crashes):
        lines.extend(section(report))
    return '\n'.join(lines)


def _entry_title(report, name):
    if name == 'self_aa':
        return report['servers']['self']['title'] + ' (A/A copy)'
    return report['servers'][name]['title']


def _entry_kind(report, name):
    return report['servers']['self' if name == 'self_aa' else name]['kind']


def _md_header(report):
    lines = []
    add = lines.append
    machine = report['machine']
    versions = report.get('versions', {})
    add(f'# Benchmark results ({report["mode"]} run)')
    add('')
    add(f'- command: `{report["command"]}`')
    add(f'- started: {report["started_at"]}, took '
        f'{report.get("elapsed_s", 0):.0f} s; {report["rounds"]} round(s) '
        f'of {report["duration_s"]} s wrk runs, medians shown')
    add(f'- machine: {machine["nproc"]} cores, {machine["cpu_model"]}, '
        f'{machine.get("mem_total", "?")} RAM, kernel {machine["kernel"]}, '
        f'Python {machine["python"]}, {machine["wrk"]}')
    add(f'- checkout: {report.get("checkout", "?")}')
    add(f'- versions: this checkout uhttp-workers/uhttp-server '
        f'{versions.get("self", "?")}'
        + (f'; baseline {versions["baseline"]}' if 'baseline' in versions
           else '')
        + f'; peer {versions.get("peer1x", "n/a")}; gunicorn '
        f'{versions.get("gunicorn", "n/a")}; uvicorn '
        f'{versions.get("uvicorn", "n/a")}; granian '
        f'{versions.get("granian", "n/a")}')
    add('- every server: 127.0.0.1, 2 workers, listen backlog 1024, '
        f'graceful timeout {SHUTDOWN_TIMEOUT:g} s, otherwise its defaults; '
        'wrk -t1 (one thread) on the same 2 cores')
    if report.get('aborted'):
        add('- **the run was aborted**: '
            + report['aborted'].strip().splitlines()[-1])
    for key, note in report.get('setup_notes', {}).items():
        add(f'- **{key} unavailable**: {note}' if key in KIND_TITLES
            else f'- **{key}**: {note}')
    for key, text in report.get('start_failures', {}).items():
        add(f'- **{key} failed to start**: {text}')
    for key, checks in report.get('smoke', {}).items():
        bad = {k: v for k, v in checks.items() if v != 'ok'}
        if bad:
            add(f'- **smoke check of {key} failed**: {bad}')
    add('')
    return lines


def _md_targets(report):
    results = report.get('targets')
    if not results:
        return []
    names = list(results)
    lines = ['## Targets', '',
             'Computed from the medians below. Each column is one entry of '
             'the rounds; this checkout\'s A/A copy is the same server '
             'measured again: where the two columns disagree, the result is '
             'within the noise.', '']
    lines.append('| target | threshold | '
                 + ' | '.join(_entry_title(report, name) for name in names)
                 + ' |')
    lines.append('|---|---|' + '---|' * len(names))
    for index, row in enumerate(results[names[0]]):
        cells = []
        for name in names:
            item = results[name][index]
            cells.append(f'{targets.verdict(item["met"])}: {item["value"]}')
        lines.append(f'| {row["target"]} | {row["threshold"]} | '
                     + ' | '.join(cells) + ' |')
    lines.append('')
    return lines


def _md_throughput(report):
    summary = report.get('summary', {})
    if not summary:
        return []
    lines = ['## Throughput and latency', '',
             '2xx/s and latency are medians over rounds; error counts are '
             'summed over all rounds (non-2xx = HTTP status ≥ 400 as wrk '
             'counts them; socket errors: connect/read/write/timeout). '
             'CPU/req = CPU time of the server\'s whole process tree per '
             'completed response; disp. CPU/req = that of the root process '
             'alone, the dispatcher of uhttp.workers (— for the peers whose '
             'root is a supervisor that does not see requests; its figure '
             'is in latest.json).', '',
             '| scenario | server | 2xx/s | non-2xx | sock err c/r/w/t | '
             'p50 ms | p99 ms | CPU µs/req | disp. CPU µs/req |',
             '|---|---|---:|---:|---|---:|---:|---:|---:|']
    for scenario, *_ in SCENARIOS:
        for name in report['entries']:
            row = summary[name][scenario]
            errors = '/'.join(str(row[k]) for k in (
                'connect_errors', 'read_errors', 'write_errors', 'timeouts'))
            extra = f' **crashed ×{row["crashes"]}**' if row['crashes'] \
                else ''
            disp = row['disp_cpu_us_per_req'] \
                if _entry_kind(report, name) in UHTTP_KINDS else None
            lines.append(
                f'| {SCENARIO_TITLES[scenario]} | '
                f'{_entry_title(report, name)}{extra} | '
                f'{_fmt(row["ok_per_s"])} | {row["non_2xx"]} | {errors} | '
                f'{_fmt(row["p50_ms"], 2)} | {_fmt(row["p99_ms"], 2)} | '
                f'{_fmt(row["cpu_us_per_req"])} | {_fmt(disp)} |')
    lines.append('')
    return lines


def _md_ratios(report):
    summary = report.get('summary', {})
    if 'self' not in summary:
        return []
    peers = [name for name in SHORT_NAMES if name in summary]
    lines = ['## This project against each peer', '',
             'Ratios of medians, this checkout ÷ the other server. A/A = '
             'the same server measured as a second entry in the same '
             'rounds: |difference| ÷ mean, the noise floor of these '
             'numbers.', '']
    for metric, title, better in (
            ('ok_per_s', '2xx/s', '> 1 is better for this checkout'),
            ('p99_ms', 'p99 latency', '< 1 is better'),
            ('cpu_us_per_req', 'CPU per request (whole tree)',
             '< 1 is better')):
        lines.append(f'**{title}** ({better}):')
        lines.append('')
        header = '| scenario |' + ''.join(f' vs {SHORT_NAMES[p]} |'
                                         for p in peers)
        rule = '|---|' + '---:|' * len(peers)
        if 'self_aa' in summary:
            header += ' A/A |'
            rule += '---:|'
        lines.extend([header, rule])
        for scenario, *_ in SCENARIOS:
            mine = summary['self'][scenario][metric]
            row = f'| {SCENARIO_TITLES[scenario]} |' + ''.join(
                f' {_ratio(mine, summary[p][scenario][metric])} |'
                for p in peers)
            if 'self_aa' in summary:
                row += f' {_noise(mine, summary["self_aa"][scenario][metric])} |'
            lines.append(row)
        lines.append('')
    return lines


def _md_resources(report):
    lines = ['## Resources', '',
             '| server | idle CPU % | PSS idle MiB | PSS after load MiB |',
             '|---|---:|---:|---:|']
    for key, meta in report['servers'].items():
        idle = report.get('idle_cpu_pct', {}).get(key)
        pss0 = report.get('pss_idle_kb', {}).get(key)
        pss1 = report.get('pss_after_load_kb', {}).get(key)
        lines.append(f'| {meta["title"]} | {_fmt(idle, 2)} | '
                     f'{_fmt(pss0 / 1024 if pss0 else None, 1)} | '
                     f'{_fmt(pss1 / 1024 if pss1 else None, 1)} |')
    lines += ['', 'Idle CPU: all servers up and idle together, CPU time of '
              'each process tree over the idle window.', '']
    return lines


def _md_hol(report):
    results = report.get('hol')
    if not results:
        return []
    first = next(iter(results.values()))
    lines = ['## Head-of-line blocking', '',
             f'One client keeps `GET /api/sleep/{first["slow_ms"]}` running '
             f'(back to back; the handler sleeps) while '
             f'{first["fast_clients"]} clients send `GET /api/item/1` on '
             f'keep-alive connections for {first["seconds"]} s (Python '
             'threads, http.client). Latency of the fast requests; '
             f'"delayed" = fast requests of {first["delayed_threshold_ms"]} '
             'ms or more, which can only have waited for the slow one '
             '(none in a pool that acts as one shared queue).', '',
             '| server | fast requests | p50 ms | p99 ms | max ms | delayed '
             '| errors | slow requests done |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for key, item in results.items():
        bad = {k: v for k, v in item['fast_statuses'].items() if k != '200'}
        errors = str(item['fast_errors']) + (f', statuses {bad}' if bad
                                             else '')
        delayed = item['delayed'] if not item['delayed'] \
            else f'**{item["delayed"]}**'
        lines.append(
            f'| {report["servers"][key]["title"]} | {item["fast_requests"]} '
            f'| {_fmt(item["p50_ms"], 2)} | {_fmt(item["p99_ms"], 2)} | '
            f'{_fmt(item["max_ms"], 1)} | {delayed} | {errors} | '
            f'{item["slow_completed"]} {item["slow_statuses"]} |')
    lines.append('')
    return lines


def _md_sse(report):
    if not report.get('sse'):
        return []
    lines = ['## SSE broadcast', '',
             '| server | clients subscribed | events | delivered / expected '
             '| every client got every event | events/s delivered | '
             'pending after clients left | notes |',
             '|---|---:|---:|---:|---|---:|---:|---|']
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
            lines.append(f'| {title} | {sse.get("subscribed", "—")} | '
                         f'{sse.get("events", "—")} | — | — | — | '
                         f'{sse.get("pending_after_close", "—")} | '
                         f'{"; ".join(notes) or "—"} |')
            continue
        lines.append(
            f'| {title} | {sse["subscribed"]}/{sse["clients"]} | '
            f'{sse["events"]} | {sse["delivered"]}/{sse["expected"]} | '
            f'{"yes" if sse["all_received_all"] else "**no**"} | '
            f'{_fmt(sse.get("events_per_s"))} | '
            f'{sse.get("pending_after_close", "—")} | '
            f'{"; ".join(notes) or "—"} |')
    lines.append('')
    return lines


def _md_abandoned(report):
    if not report.get('abandoned'):
        return []
    first = next(iter(report['abandoned'].values()))
    lines = ['## Abandoned clients', '',
             'wrk -t1 -c256 --timeout 1s on /api/work/50 (2 workers, 50 ms '
             'of CPU each), stopped with its requests in flight; then '
             '"burst" raw clients that send the same request and close at '
             'once; then one GET /api/item/1 (given up after '
             f'{first.get("followup_timeout_s")} s), and /monitor polled '
             'until nothing is pending or queued (servers without a pending '
             'table: n/a). wrk\'s --timeout only counts late responses (it '
             'keeps the connection), so the abandonment is wrk exiting and '
             'the raw burst. The SIGTERM test below follows each server\'s '
             'abandoned-client test at once.', '',
             '| server | wrk 2xx/s | burst clients | follow-up status | '
             'follow-up ms | drained (pending 0) after s | pending left |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for key, item in report['abandoned'].items():
        title = report['servers'][key]['title']
        drained = item.get('drained_after_s')
        lines.append(
            f'| {title} | {_fmt(item["wrk"].get("ok_per_s"))} | '
            f'{item.get("burst_sent")} | {item.get("followup_status")} | '
            f'{_fmt(item.get("followup_ms"), 1)} | '
            f'{_fmt(drained, 2) if drained is not None else "not drained"} | '
            f'{item.get("pending_left")} |')
    lines.append('')
    return lines


def _md_shutdown(report):
    if not report.get('shutdown'):
        return []
    lines = ['## SIGTERM with requests in flight', '',
             '4 × GET /api/work/300 in flight, then SIGTERM to the root '
             'process; shutdown_timeout (graceful timeout) = '
             f'{SHUTDOWN_TIMEOUT:g} s.', '',
             '| server | seconds until the whole tree exited | within '
             'timeout | in-flight requests got |',
             '|---|---:|---|---|']
    for key, item in report['shutdown'].items():
        title = report['servers'][key]['title']
        if 'error' in item:
            lines.append(f'| {title} | — | — | {item["error"]} |')
            continue
        lines.append(f'| {title} | {_fmt(item["seconds"], 2)} | '
                     f'{"yes" if item["within_timeout"] else "**no**"} | '
                     f'{item["inflight_statuses"]} |')
    if report.get('self_4w_stop_s') is not None:
        lines += ['', f'(idle 4-worker instance of this project stopped in '
                  f'{report["self_4w_stop_s"]:.2f} s)']
    lines.append('')
    return lines


def _md_crashes(report):
    if not report.get('crashes'):
        return []
    lines = ['## Crashes during the run', '']
    for key, texts in report['crashes'].items():
        for text in texts:
            lines.append(f'- {report["servers"][key]["title"]}: {text}')
    lines.append('')
    return lines


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
    server = make_servers({'self': python_self}, static_dir,
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
    parser.add_argument('--baseline', metavar='REF',
                        help='also measure this commit of the repository '
                        '(any git revision: a hash, a branch, HEAD~1) as '
                        'one more server, in the same rounds')
    parser.add_argument('--ws', action='store_true',
                        help='the WebSocket benchmark instead (ws_bench.py: '
                        'echo and fan-out against uvicorn; with --quick, '
                        'its quick run)')
    args = parser.parse_args()
    if args.ws:
        import ws_bench  # pylint: disable=import-outside-toplevel
        return ws_bench.main(['--quick'] if args.quick else [])
    if args.profile and args.baseline:
        parser.error('--baseline measures in the rounds; --profile has none')
    if args.profile:
        return profile(args)
    return bench(args)


if __name__ == '__main__':
    sys.exit(main())
