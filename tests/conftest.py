"""Shared helpers: start a real dispatcher process, talk HTTP to it, wait.

Every end-to-end test runs an application file as `python app.py` with
PORT=0 and ADDRESS=127.0.0.1; the dispatcher binds an ephemeral port and
logs it, and the harness reads it from the log. Processes are stopped by
PID only.
"""

import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
APPS = os.path.join(TESTS, 'apps')

_LISTENING = re.compile(r'listening on https?://\S+:(\d+) \(pid (\d+)')


# Ports handed out below the kernel's ephemeral range (32768 and up here):
# a server bound to port 0 meanwhile can never be given the same one. The
# lock port of a service (port + 10000) stays below that range too.
FREE_PORTS = range(20000, 22768)


def free_port():
    """A TCP port of 127.0.0.1 that nobody listens on, nor on port + 10000."""
    for _ in range(200):
        port = random.choice(FREE_PORTS)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError('no free port found in %r' % (FREE_PORTS,))


def _bindable(port):
    with socket.socket() as sock:
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_redis(directory, why='redis-server is not installed'):
    """A real redis-server on a free 127.0.0.1 port, its data in
    `directory`: yields (url, client); skips the test (with `why`) when
    redis-server or the redis package is missing."""
    binary = shutil.which('redis-server')
    if binary is None:
        pytest.skip(why)
    redis = pytest.importorskip(
        'redis',
        reason='the redis package is not installed (pip install redis)')
    port = free_port()
    server = subprocess.Popen(  # pylint: disable=consider-using-with
        [binary, '--port', str(port), '--bind', '127.0.0.1', '--save', '',
         '--appendonly', 'no', '--dir', str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host='127.0.0.1', port=port)

    def answers():
        assert server.poll() is None, 'redis-server exited'
        try:
            return client.ping()
        except redis.ConnectionError:
            return False
    try:
        wait_until(answers, 10, interval=0.05)
        yield f'redis://127.0.0.1:{port}/0', client
    finally:
        client.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def wait_until(predicate, timeout=10.0, interval=0.02, message=None):
    """Poll `predicate` until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            if callable(message):
                message = message()
            raise AssertionError(message or f'condition not met in {timeout}s')
        time.sleep(interval)


class HttpResult:
    """Status, headers (lowercase keys) and body of one HTTP exchange."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        """The body parsed as JSON."""
        return json.loads(self.body)

    def __repr__(self):
        return f'<HttpResult {self.status} {self.body[:80]!r}>'


class Server:
    """A dispatcher running in a subprocess."""

    def __init__(self, script, env=None, args=(), cwd=None, pass_fds=()):
        self.script = script
        full_env = dict(os.environ, PORT='0', ADDRESS='127.0.0.1',
                        PYTHONUNBUFFERED='1')
        full_env.pop('JOURNAL_STREAM', None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, script, *args], env=full_env, cwd=cwd or ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            pass_fds=pass_fds)
        self.pid = self.proc.pid
        self.lines = []
        self._lock = threading.Lock()
        self.port = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip('\n'))

    @property
    def log(self):
        """Everything the server printed so far, as one string."""
        with self._lock:
            return '\n'.join(self.lines)

    def wait_log(self, pattern, timeout=15.0):
        """Wait until a log line matches the regex; return the match."""
        regex = re.compile(pattern)

        def search():
            with self._lock:
                for line in self.lines:
                    match = regex.search(line)
                    if match:
                        return match
            return None

        def found():
            match = search()
            if match is None and self.proc.poll() is not None:
                # it exited: what it printed last may still be in the pipe
                self._reader.join(5)
                match = search()
            if match is not None:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(
                    f'server exited ({self.proc.returncode}) before logging '
                    f'{pattern!r}:\n{self.log}')
            return None
        return wait_until(found, timeout, message=(
            f'no log line matched {pattern!r}'))

    def count_log(self, pattern):
        """How many log lines match the regex."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self.lines if regex.search(line))

    def start(self, ready_workers=0, timeout=20.0):
        """Wait for the listening line and for `ready_workers` workers."""
        match = self.wait_log(_LISTENING.pattern, timeout)
        self.port = int(match.group(1))
        if ready_workers:
            wait_until(lambda: self.count_log(r'worker .* ready') >=
                       ready_workers, timeout,
                       message=f'{ready_workers} workers not ready:\n'
                       f'{self.log}')
        return self

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        """One HTTP request on a fresh connection."""
        connection = http.client.HTTPConnection(
            '127.0.0.1', self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = dict(headers or {})
                headers.setdefault('Content-Type', 'application/json')
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return HttpResult(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read())
        finally:
            connection.close()

    def get(self, path, **kwargs):
        """GET `path`."""
        return self.request('GET', path, **kwargs)

    def raw(self, data, timeout=5.0):
        """Send raw bytes, return everything the server sends until close."""
        with socket.create_connection(('127.0.0.1', self.port),
                                      timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b''.join(chunks)

    def signal(self, signum):
        """Send a signal to the dispatcher."""
        os.kill(self.pid, signum)

    def wait_exit(self, timeout=20.0):
        """Wait for the dispatcher to exit; return its exit code."""
        return self.proc.wait(timeout)

    def stop(self):
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def worker_pids(server, path='/monitor'):
    """PIDs of the live workers of every pool, from the app's /monitor."""
    status = server.get(path).json()
    return [w['pid'] for pool in status['pools'] for w in pool['workers']
            if w['alive']]


def pid_alive(pid):
    """True when a process with this PID exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii') as stat:
            return stat.read().split(')')[-1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        # (ProcessLookupError: it was reaped between the open and the read)
        return False


def parse_response(buffer):
    """(status, headers, body, used) of the first complete response, or None."""
    end = buffer.find(b'\r\n\r\n')
    if end < 0:
        return None
    lines = bytes(buffer[:end]).decode('latin-1').split('\r\n')
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(':')
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get('content-length', '0'))
    if len(buffer) < end + 4 + length:
        return None
    body = bytes(buffer[end + 4:end + 4 + length])
    return status, headers, body, end + 4 + length


class RecordingLog:
    """A log object (ServiceManager, JobRunner) that keeps every line."""

    def __init__(self):
        self.lines = []
        self._lock = threading.Lock()

    def _add(self, level, message, *args):
        with self._lock:
            self.lines.append(f'{level} {message % args}')

    def info(self, message, *args):
        self._add('INFO', message, *args)

    def warning(self, message, *args):
        self._add('WARNING', message, *args)

    def error(self, message, *args):
        self._add('ERROR', message, *args)

    def critical(self, message, *args):
        self._add('CRITICAL', message, *args)

    def text(self):
        with self._lock:
            return '\n'.join(self.lines)


@pytest.fixture
def start_server():
    """Factory: start_server('app.py', env={...}, ready_workers=N)."""
    servers = []

    def start(script, env=None, ready_workers=0, args=(), cwd=None):
        path = script if os.path.isabs(script) else os.path.join(APPS, script)
        server = Server(path, env=env, args=args, cwd=cwd)
        servers.append(server)
        return server.start(ready_workers)

    yield start
    for server in servers:
        server.stop()
