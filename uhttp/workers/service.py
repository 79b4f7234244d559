"""Services: helper processes (an internal API, a cache, a model server) that
many workers share, started once per host and kept healthy.

This module owns a service's process from spawn to reaping: the command line,
its own session and process group, output files, health checks over HTTP,
the restart policy, and stopping the whole group (so no grandchild outlives
it). It also gives a small HTTP client over TCP or a Unix socket.

Two ways of use share that code:

- managed: an owner process (the dispatcher) runs a `ServiceManager`; worker
  processes receive the pickled `Service` and call `Service.client()`, which
  waits for the service but never starts anything;
- standalone: any process on the host calls `Service.connect()`; the first
  one to bind the service's lock socket becomes its owner and starts it,
  the others wait until it answers. When the owner dies the kernel frees the
  lock (and kills its server), and the next `connect()` anywhere takes over.

Must never: leave a service process or its children running after a stop,
block the caller of `ServiceManager.start()`, call an `on_change` callback
while holding a lock, or put a process handle, thread or socket into the
pickled state of a `Service`.
"""

import atexit
import ctypes
import errno
import functools
import http.client
import json as _json
import logging
import multiprocessing.util
import os
import selectors
import signal
import socket as _socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import weakref

STATES = ('starting', 'ready', 'unhealthy', 'restarting', 'failed', 'stopped')

STARTUP_POLL = 0.1      # seconds between health checks while a service starts
UNHEALTHY_LIMIT = 3     # failed checks in a row before a running one restarts
EXIT_POLL = 0.5         # exit polling period where pidfd_open is missing
STOP_POLL = 0.02        # seconds between two looks at a group being stopped
HEALTH_TIMEOUT_MAX = 2.0
LOCK_PORT_OFFSET = 10000
LOCK_NAME_PREFIX = 'uhttp.workers.service.'
PR_SET_PDEATHSIG = 1

_LOG = logging.getLogger(__name__)


class ServiceError(Exception):
    """A service could not be started, reached or understood."""


class ServiceUnavailable(ServiceError):
    """The service is not ready within the wait, or has been given up.

    `state` is the last state known to the caller (None when unknown).
    """

    def __init__(self, message, state=None):
        super().__init__(message)
        self.state = state

    def __reduce__(self):
        return type(self), (str(self), self.state)


# -- HTTP client --------------------------------------------------------------

class HTTPStatusError(ServiceError):
    """raise_for_status() found a 4xx or 5xx answer; `response` is it."""

    def __init__(self, message, response):
        super().__init__(message)
        self.response = response


class Headers(dict):
    """Response headers: a dict with lowercase keys, looked up in any case."""

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


class ServiceResponse:
    """One answer of a service, shaped like a `requests` response:
    `status_code`, `reason`, `headers` (keys in any case), `content` (bytes),
    `text`, `json()`, `ok`, `raise_for_status()`, `url`. The older names
    `status` and `body` are the same values."""

    def __init__(self, status, reason, headers, body, url=''):
        self.status = status
        self.reason = reason
        self.headers = Headers(headers)
        self.body = body
        self.url = url

    @property
    def status_code(self):
        """The HTTP status (the same as `status`)."""
        return self.status

    @property
    def content(self):
        """The body as bytes (the same as `body`)."""
        return self.body

    @property
    def ok(self):
        """True for 1xx, 2xx and 3xx statuses."""
        return self.status < 400

    @property
    def encoding(self):
        """The charset of the content type, None when it names none."""
        for part in self.headers.get('content-type', '').split(';')[1:]:
            key, _, value = part.strip().partition('=')
            if key.lower() == 'charset' and value:
                return value.strip('"')
        return None

    @property
    def text(self):
        """The body decoded with the charset of its content type (UTF-8)."""
        try:
            return self.body.decode(self.encoding or 'utf-8', 'replace')
        except LookupError:
            return self.body.decode('utf-8', 'replace')

    def json(self):
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def raise_for_status(self):
        """Raise HTTPStatusError for a 4xx or 5xx status, else do nothing."""
        if self.status >= 400:
            kind = 'Client' if self.status < 500 else 'Server'
            raise HTTPStatusError(
                f'{self.status} {kind} Error: {self.reason} for url: '
                f'{self.url}', self)

    def __repr__(self):
        return f'<ServiceResponse {self.status} {self.body[:60]!r}>'


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection to a server listening on a Unix socket path."""

    def __init__(self, path, timeout):
        super().__init__('localhost', timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _encode_body(json, data, headers):
    headers = {key.lower(): str(value)
               for key, value in (headers or {}).items()}
    if json is not None and data is not None:
        raise ValueError('give json= or data=, not both')
    if json is not None:
        headers.setdefault('content-type', 'application/json')
        return _json.dumps(json).encode('utf-8'), headers
    if isinstance(data, (dict, list, tuple)):
        headers.setdefault('content-type', 'application/x-www-form-urlencoded')
        return urllib.parse.urlencode(data, doseq=True).encode('ascii'), \
            headers
    if isinstance(data, str):
        headers.setdefault('content-type', 'text/plain; charset=utf-8')
        return data.encode('utf-8'), headers
    return data, headers


def _target(path, params):
    """The request target: `path` (a leading / added) with `params` (a dict
    or pairs, values may be lists) appended as a query string."""
    if not path.startswith('/'):
        path = '/' + path
    if not params:
        return path
    if isinstance(params, (str, bytes)):
        query = params.decode('ascii') if isinstance(params, bytes) else params
    else:
        query = urllib.parse.urlencode(params, doseq=True)
    return f"{path}{'&' if '?' in path else '?'}{query}"


def _seconds(timeout):
    # requests accepts (connect, read): one socket timeout covers both here
    if isinstance(timeout, tuple):
        return max(value for value in timeout if value is not None)
    return timeout


def _read_headers(response):
    headers = {}
    for key, value in response.getheaders():
        key = key.lower()
        headers[key] = f'{headers[key]}, {value}' if key in headers else value
    return headers


class ServiceClient:
    """An HTTP/1.1 client of one service, on one kept-alive connection.

    The request methods take the keywords of `requests` that make sense
    here: `params=`, `json=`, `data=`, `headers=`, `timeout=` (seconds, for
    this request only). Use it as a context manager (the connection is
    closed at the end). Network and protocol failures raise ServiceError.
    `service` is a `Service` or an `Endpoint` (an address only).
    """

    def __init__(self, service, timeout=30.0):
        self.service = service
        self.timeout = timeout
        self._connection = None
        self._ready = False

    @property
    def base_url(self):
        """'http://host:port', or 'http+unix:///path' for a Unix socket."""
        if self.service.socket:
            return f'http+unix://{self.service.socket}'
        return f'http://{self.service.host}:{self.service.port}'

    @property
    def is_ready(self):
        """True when the last readiness check (wait_ready, check_ready, or
        the wait of the call that made this client) passed."""
        return self._ready

    def check_ready(self):
        """Run the health check once; True when it passes."""
        self._ready = self.service.is_healthy()
        return self._ready

    def wait_ready(self, timeout=None):
        """Wait up to `timeout` seconds (default: the service's
        startup_timeout) for the health check to pass; True then, else
        raise ServiceUnavailable."""
        if timeout is None:
            timeout = self.service.startup_timeout
        deadline = time.monotonic() + timeout
        for pause in _pauses():
            error = self.service.probe()
            if error is None:
                self._ready = True
                return True
            if not _sleep_before(deadline, pause):
                self._ready = False
                raise self.service.not_ready(timeout, error)
        raise AssertionError('unreachable')

    def get(self, path, **kwargs):
        """GET `path`."""
        return self.request('GET', path, **kwargs)

    def head(self, path, **kwargs):
        """HEAD `path`."""
        return self.request('HEAD', path, **kwargs)

    def post(self, path, json=None, data=None, **kwargs):
        """POST a JSON value (`json=`), bytes/str or a form dict (`data=`)."""
        return self.request('POST', path, json=json, data=data, **kwargs)

    def put(self, path, json=None, data=None, **kwargs):
        """PUT a JSON value (`json=`), bytes/str or a form dict (`data=`)."""
        return self.request('PUT', path, json=json, data=data, **kwargs)

    def patch(self, path, json=None, data=None, **kwargs):
        """PATCH with a JSON value (`json=`), bytes/str or a form dict."""
        return self.request('PATCH', path, json=json, data=data, **kwargs)

    def delete(self, path, **kwargs):
        """DELETE `path`."""
        return self.request('DELETE', path, **kwargs)

    def request(self, method, path, params=None, json=None, data=None,
                headers=None, timeout=None):
        """Send one request, return its ServiceResponse."""
        body, headers = _encode_body(json, data, headers)
        target = _target(path, params)
        timeout = self.timeout if timeout is None else _seconds(timeout)
        for retry in (False, True):
            reused = self._connection is not None
            connection = self._connection or self._open()
            self._set_timeout(connection, timeout)
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                result = ServiceResponse(
                    response.status, response.reason, _read_headers(response),
                    response.read(), self.base_url + target)
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as err:
                self.close()
                # the server may close a kept-alive connection while it is
                # idle: such a request never reached it, so one retry is safe
                if reused and not retry:
                    continue
                raise self._failure(method, target, err) from err
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise self._failure(method, target, err) from err
            if response.will_close:
                self.close()
            return result
        raise AssertionError('unreachable')

    @staticmethod
    def _set_timeout(connection, timeout):
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)

    def _open(self):
        # pylint: disable-next=protected-access
        self._connection = self.service._http_connection(self.timeout)
        return self._connection

    def _failure(self, method, path, err):
        return ServiceError(
            f'service {self.service.name!r} at {self.service.address}: '
            f'{method} {path} failed: {_describe_error(err)}')

    def close(self):
        """Close the connection (a later request opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_error(err):
    text = str(err) or type(err).__name__
    if isinstance(err, OSError):
        return text
    return f'{type(err).__name__}: {text}'


# -- the service description -------------------------------------------------

class Endpoint:
    """Where a service answers and how to check it: TCP `host`:`port` or a
    Unix `socket` path, and its health check URL. A ServiceClient can be
    built over one alone (`ServiceClient(Endpoint(...))`)."""

    def __init__(self, name, port=None, socket=None, host='127.0.0.1',
                 health_check_url='/', health_check_interval=5.0,
                 startup_timeout=30.0):
        if (port is None) == (socket is None):
            raise ValueError(f'service {name!r}: give exactly one of port= '
                             'or socket=')
        self.name = name
        self.port = port
        self.socket = os.path.abspath(socket) if socket else None
        self.host = host
        self.health_check_url = health_check_url
        self.health_check_interval = health_check_interval
        self.startup_timeout = startup_timeout

    def __repr__(self):
        return f'<{type(self).__name__} {self.name!r} at {self.address}>'

    @property
    def address(self):
        """Where the service listens: 'http://host:port' or 'unix:/path'."""
        if self.socket:
            return f'unix:{self.socket}'
        return f'http://{self.host}:{self.port}'

    def _http_connection(self, timeout):
        if self.socket:
            return _UnixHTTPConnection(self.socket, timeout)
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout)

    def probe(self, timeout=None):
        """Run the health check once: None when it passes, else why not."""
        if timeout is None:
            timeout = min(HEALTH_TIMEOUT_MAX, self.health_check_interval)
        connection = self._http_connection(timeout)
        try:
            connection.request('GET', self.health_check_url)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as err:
            return _describe_error(err)
        finally:
            connection.close()
        if 200 <= response.status < 400:
            return None
        return f'GET {self.health_check_url} answered {response.status}'

    def is_healthy(self, timeout=None):
        """True when the health check passes now."""
        return self.probe(timeout) is None

    def not_ready(self, waited, error=None, state=None):
        """The ServiceUnavailable for a health check that did not pass
        within `waited` seconds."""
        known = f' (state: {state})' if state else ''
        detail = f'; last error: {error}' if error else ''
        return ServiceUnavailable(
            f'service {self.name!r} at {self.address} did not pass its '
            f'health check {self.health_check_url} within {waited:g}s'
            f'{known}{detail}', state)


class Service(Endpoint):
    """A helper process, described once and shared by many processes.

    `command` is a list of strings in which `{port}`, `{host}` and
    `{socket}` are replaced (see command_line()). Give exactly one of `port` (TCP on `host`) or `socket` (a Unix
    socket path). `stdout`/`stderr` are file paths (appended to);
    `stderr='stdout'` merges both; None inherits ours. `env` is added to
    os.environ. Health: GET `health_check_url` must answer 2xx or 3xx within
    min(2 s, health_check_interval).

    `connect()` (standalone) may start the service; `client()` (managed)
    never does. A Service pickles without any process-local state (process
    handles, threads, sockets, `state_getter`).
    """

    _LOCAL = ('_owner', '_healthy_until', 'state_getter')

    def __init__(self, name, command, port=None, socket=None, host='127.0.0.1',
                 health_check_url='/', health_check_interval=5.0,
                 startup_timeout=30.0, restart_on_failure=True, max_restarts=3,
                 restart_delay=1.0, env=None, cwd=None, stdout=None,
                 stderr=None, shutdown_timeout=10.0, lock_port=None):
        if not name or not isinstance(name, str):
            raise ValueError('a service needs a name (a non-empty str)')
        if isinstance(command, str) or not command or not all(
                isinstance(arg, str) for arg in command):
            raise ValueError(f'service {name!r}: command must be a non-empty '
                             'list of str')
        if port is not None and lock_port is None:
            lock_port = default_lock_port(port)
        for option, value in (('health_check_interval', health_check_interval),
                              ('startup_timeout', startup_timeout)):
            if value <= 0:
                raise ValueError(f'service {name!r}: {option} must be > 0')
        super().__init__(name, port, socket, host, health_check_url,
                         health_check_interval, startup_timeout)
        self.command = list(command)
        self.restart_on_failure = restart_on_failure
        self.max_restarts = max_restarts
        self.restart_delay = restart_delay
        self.env = {key: str(value) for key, value in (env or {}).items()}
        self.cwd = cwd
        self.stdout = stdout
        self.stderr = stderr
        self.shutdown_timeout = shutdown_timeout
        self.lock_port = lock_port
        # Optional hook set by whoever manages the service: returns its state
        # ('ready', 'failed', ...) or a ServiceManager.status() entry.
        self.state_getter = None
        self._owner = None
        self._healthy_until = 0.0

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in self._LOCAL:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.state_getter = None
        self._owner = None
        self._healthy_until = 0.0

    def command_line(self):
        """The command with `{port}`, `{host}` and `{socket}` replaced (each
        by '' when the service has none)."""
        values = {'{port}': '' if self.port is None else str(self.port),
                  '{host}': self.host or '', '{socket}': self.socket or ''}
        result = []
        for arg in self.command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            result.append(arg)
        return result

    # -- health ---------------------------------------------------------------

    def _recent_probe(self):
        """Like probe(), but a pass is trusted for a health check interval,
        so that asking for a client per request does not double traffic."""
        if time.monotonic() < self._healthy_until:
            return None
        error = self.probe()
        if error is None:
            self._healthy_until = time.monotonic() + self.health_check_interval
        return error

    # -- managed use ----------------------------------------------------------

    def client(self, timeout=None, request_timeout=30.0):
        """A client of the service, which someone else runs (managed use).

        Never starts the service and never takes its lock. Waits up to
        `timeout` seconds (default startup_timeout) for it to answer its
        health check, then raises ServiceUnavailable. When `state_getter` is
        set and reports 'failed' or 'stopped', raises at once; when it
        reports 'ready', trusts it without a health check.
        """
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for pause in _pauses():
            report = self._reported()
            state = report.get('state') if report else None
            if state in ('failed', 'stopped'):
                raise self._unavailable(report, timeout)
            if state == 'ready':
                return self._ready_client(request_timeout)
            error = self._recent_probe()
            if error is None:
                return self._ready_client(request_timeout)
            if not _sleep_before(deadline, pause):
                raise self._unavailable(report, timeout, error)
        raise AssertionError('unreachable')

    def _reported(self):
        owner = self._ownership()
        if owner is not None:
            return owner.manager.status_of(self.name)
        if self.state_getter is None:
            return None
        report = self.state_getter()
        if report is None or isinstance(report, dict):
            return report
        return {'state': report}

    def _unavailable(self, report, waited, probe_error=None):
        report = report or {}
        state = report.get('state')
        error = probe_error or report.get('last_error')
        detail = f'; last error: {error}' if error else ''
        if state == 'failed':
            restarts = report.get('restarts', self.max_restarts)
            message = (f'service {self.name!r} has failed after {restarts} '
                       f'restarts{detail}')
        elif state == 'stopped':
            message = f'service {self.name!r} has been stopped'
        else:
            return self.not_ready(waited, error, state)
        return ServiceUnavailable(message, state)

    def _ready_client(self, request_timeout):
        client = ServiceClient(self, request_timeout)
        client._ready = True    # pylint: disable=protected-access
        return client

    # -- standalone use -------------------------------------------------------

    def connect(self, timeout=None, request_timeout=30.0, wait=True):
        """A client of the service, starting it if nobody on this host runs it.

        Standalone use: tries to bind the service's lock socket. The process
        that binds it owns the service: it starts the process, supervises it
        from a daemon thread and stops it at exit. Others wait up to
        `timeout` seconds (default startup_timeout) for the health check to
        pass, retrying the lock meanwhile (its owner may die), then raise
        ServiceUnavailable. With `wait=False` it only takes the lock if it
        is free (starting the service then) and returns a client at once;
        `client.wait_ready()` waits later.
        """
        if not wait:
            self._ownership() or self._take_ownership()
            return ServiceClient(self, request_timeout)
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for pause in _pauses():
            owner = self._ownership() or self._take_ownership()
            if owner is not None:
                return self._owner_client(owner, deadline, timeout,
                                          request_timeout)
            error = self._recent_probe()
            if error is None:
                return self._ready_client(request_timeout)
            if not _sleep_before(deadline, pause):
                raise self._unavailable(None, timeout, error)
        raise AssertionError('unreachable')

    @property
    def owned(self):
        """True when this process started the service through connect()."""
        return self._ownership() is not None

    def close(self, timeout=None):
        """If this process owns the service (connect()), stop it and give up
        the lock; otherwise do nothing. Also runs at interpreter exit."""
        owner = self._ownership()
        self._owner = None
        if owner is not None:
            owner.close(timeout)

    def _ownership(self):
        owner = self._owner
        if owner is not None and owner.pid != os.getpid():
            self._owner = owner = None   # inherited through fork: not ours
        return owner

    def _take_ownership(self):
        lock = _try_lock(self)
        if lock is None:
            return None
        manager = ServiceManager([self])
        self._owner = owner = _Ownership(lock, manager)
        _OWNED.add(owner)
        atexit.register(owner.close)
        # multiprocessing children leave through os._exit: no atexit there
        multiprocessing.util.Finalize(None, owner.close, exitpriority=10)
        manager.log.info('service %s: this process (%d) owns it, starting it',
                         self.name, os.getpid())
        manager.start()
        return owner

    def _owner_client(self, owner, deadline, timeout, request_timeout):
        report = owner.manager.wait_for(self.name, deadline)
        if report['state'] == 'ready':
            return self._ready_client(request_timeout)
        raise self._unavailable(report, timeout)


def default_lock_port(port):
    """The lock port of a TCP service: port + 10000, or port - 10000 when
    that would pass 65535 (the rule singleserver uses too)."""
    if port + LOCK_PORT_OFFSET <= 65535:
        return port + LOCK_PORT_OFFSET
    return port - LOCK_PORT_OFFSET


def _pauses():
    pause = STARTUP_POLL / 2
    while True:
        yield pause
        pause = min(pause * 1.5, 0.5)


def _sleep_before(deadline, pause):
    """Sleep `pause` but not past `deadline`; False when already past it."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    time.sleep(min(pause, remaining))
    return True


# -- the standalone lock ------------------------------------------------------

def _try_lock(service):
    """The lock of a service (socket or file) if we took it, else None."""
    if service.socket is None:
        family, address = _socket.AF_INET, ('127.0.0.1', service.lock_port)
    elif sys.platform.startswith('linux'):
        family = _socket.AF_UNIX
        address = '\0' + LOCK_NAME_PREFIX + service.name
    else:
        return _try_file_lock(service.socket + '.lock')
    try:
        return bind_lock_socket(family, address)
    except OSError as err:
        raise ServiceError(f'service {service.name!r}: cannot bind its lock '
                           f'socket {address!r}: {err}') from err


def bind_lock_socket(family, address):
    """Bind and listen on `address`: the socket, which is the lock, or None
    when someone else holds it (EADDRINUSE). Other errors raise OSError."""
    # No SO_REUSEADDR, and listening: no other socket may bind it then.
    # Sockets are not inheritable, so the service process never holds it.
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(1)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def _try_file_lock(path):
    import fcntl  # pylint: disable=import-outside-toplevel
    handle = open(path, 'a+b')  # pylint: disable=consider-using-with
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class _Ownership:
    """This process owns a standalone service: its lock and its manager."""

    def __init__(self, lock, manager):
        self.lock = lock
        self.manager = manager
        self.pid = os.getpid()

    def close(self, timeout=None):
        """Stop the service, then free the lock (idempotent)."""
        if self.pid != os.getpid() or self.lock is None:
            return
        self.manager.stop(timeout)
        self.lock.close()
        self.lock = None
        _OWNED.discard(self)

    def forget(self):
        """In a forked child: drop our copy of the lock without stopping."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None


_OWNED = weakref.WeakSet()


def _forget_owned_in_child():
    # A forked child holding a copy of the lock would keep it bound after
    # the owner dies, and no one could take over.
    for owner in list(_OWNED):
        owner.forget()
    _OWNED.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_owned_in_child)


# -- process handling ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _prctl():
    if not sys.platform.startswith('linux'):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(signum):
    """Linux: have the kernel send `signum` to this process when the thread
    that created it exits. Returns False where that is not available."""
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(PR_SET_PDEATHSIG, int(signum)) == 0


def _child_setup(parent_pid, prctl):
    # Runs in the child between fork and exec: no imports, no locks. The
    # function was looked up in the parent for that reason.
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)     # the parent died before prctl took effect


def _open_outputs(service):
    stdout = stderr = None
    try:
        if service.stdout:
            # pylint: disable-next=consider-using-with
            stdout = open(service.stdout, 'ab')
        if service.stderr == 'stdout':
            stderr = subprocess.STDOUT
        elif service.stderr:
            # pylint: disable-next=consider-using-with
            stderr = open(service.stderr, 'ab')
    except OSError:
        _close_outputs(stdout, stderr)
        raise
    return stdout, stderr


def _close_outputs(*files):
    for handle in files:
        if hasattr(handle, 'close'):
            handle.close()


def _spawn(service):
    """Start the service's process in its own session; return the Popen."""
    prctl = _prctl()
    setup = None
    if prctl is not None:
        setup = functools.partial(_child_setup, os.getpid(), prctl)
    if service.socket:
        _remove_stale_socket(service.socket)
    stdout, stderr = _open_outputs(service)
    try:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            service.command_line(), env=dict(os.environ, **service.env),
            cwd=service.cwd, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True, preexec_fn=setup)
    finally:
        _close_outputs(stdout, stderr)


def _remove_stale_socket(path):
    # A killed server leaves its socket file behind, and a new one could not
    # bind it. Only the owner spawns, so a path nobody answers on is stale.
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_exists(pgid):
    """True while a process of the group is alive (zombies do not count:
    they hold nothing, and reaping orphans is init's business)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir('/proc/self'):
        return True
    return any(_live_member(entry, pgid) for entry in os.listdir('/proc')
               if entry.isdigit())


def _live_member(pid, pgid):
    try:
        with open(f'/proc/{pid}/stat', 'rb') as handle:
            fields = handle.read().rsplit(b')', 1)[1].split()
    except (OSError, IndexError):
        return False
    # after the command name: state, ppid, pgrp
    return len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b'Z'


def describe_exit(code):
    """'exit code 3' or 'signal SIGKILL' for a Popen returncode."""
    if code < 0:
        try:
            return f'signal {signal.Signals(-code).name}'
        except ValueError:
            return f'signal {-code}'
    return f'exit code {code}'


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Runner:
    """One service inside a ServiceManager: its process and its state.

    Only the supervision thread calls its methods; status() readers take
    the manager's lock.
    """
    # pylint: disable=protected-access  (the manager's helpers for runners)

    def __init__(self, service, manager):
        self.service = service
        self.manager = manager
        self.state = 'stopped'
        self.process = None
        self.pidfd = None
        self.restarts = 0
        self.last_error = None
        self.started = None
        self.deadline = 0.0     # end of the startup window
        self.next_at = 0.0      # when step() has work to do
        self.failed_checks = 0
        self.stop_deadline = None

    @property
    def pid(self):
        """PID of the running process, or None."""
        return self.process.pid if self.process is not None else None

    def status(self):
        """The status() entry (call with the manager's lock held)."""
        return {
            'name': self.service.name,
            'state': self.state,
            'pid': self.pid,
            'restarts': self.restarts,
            'max_restarts': self.service.max_restarts,
            'address': self.service.address,
            'last_error': self.last_error,
        }

    def spawn(self, now):
        """Start the process and enter 'starting'."""
        service = self.service
        try:
            process = _spawn(service)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            self.fail(now, f'cannot start {service.command_line()!r}: {err}')
            return
        self.manager._update(self, process=process, state='starting',
                             started=time.time())
        self.pidfd = _pidfd(process.pid)
        self.manager._watch(self)
        self.failed_checks = 0
        self.deadline = now + service.startup_timeout
        self.next_at = now + min(STARTUP_POLL, service.health_check_interval)
        self.manager.log.info('service %s started (pid %d): %s', service.name,
                              process.pid, ' '.join(service.command_line()))

    def step(self, now):
        """Do what is due; return when to be called again."""
        if self.state == 'restarting':
            if now >= self.next_at:
                self.spawn(now)
            return self.next_at
        if self.state not in ('starting', 'ready', 'unhealthy'):
            return float('inf')
        code = self.process.poll()
        if code is not None:
            self.fail(now, f'exited with {describe_exit(code)}')
        elif now >= self.next_at:
            error = self.service.probe()
            if self.state == 'starting':
                self._starting(now, error)
            else:
                self._running(now, error)
        return self.next_at

    def _starting(self, now, error):
        service = self.service
        if error is None:
            self.manager._update(self, state='ready')
            self.manager.log.info('service %s ready at %s (pid %d)',
                                  service.name, service.address, self.pid)
            self.next_at = now + service.health_check_interval
        elif now >= self.deadline:
            self.fail(now, f'not healthy within startup_timeout='
                      f'{service.startup_timeout:g}s ({error})')
        else:
            self.next_at = now + min(STARTUP_POLL,
                                     service.health_check_interval)

    def _running(self, now, error):
        service = self.service
        self.next_at = now + service.health_check_interval
        if error is None:
            if self.state != 'ready':
                self.manager.log.info('service %s is healthy again',
                                      service.name)
            self.failed_checks = 0
            self.manager._update(self, state='ready')
            return
        self.failed_checks += 1
        if self.failed_checks >= UNHEALTHY_LIMIT:
            self.fail(now, f'health check failed {self.failed_checks} times '
                      f'in a row ({error})')
            return
        self.manager._update(self, state='unhealthy', last_error=error)
        self.manager.log.warning('service %s: health check failed (%s)',
                                 service.name, error)

    def fail(self, now, reason):
        """The process died or is no use: stop it, then restart or give up."""
        service = self.service
        self.terminate(service.shutdown_timeout)
        if service.restart_on_failure and self.restarts < service.max_restarts:
            self.manager._update(self, state='restarting', last_error=reason,
                                 restarts=self.restarts + 1)
            self.next_at = now + service.restart_delay
            self.manager.log.warning(
                'service %s %s; restart %d of %d in %gs', service.name, reason,
                self.restarts, service.max_restarts, service.restart_delay)
        else:
            self.manager._update(self, state='failed', last_error=reason)
            self.next_at = float('inf')
            self.manager.log.critical(
                'service %s %s; giving up after %d restarts', service.name,
                reason, self.restarts)

    def send_term(self, timeout):
        """Begin a graceful stop of the whole group: SIGTERM it now, and
        remember when to escalate."""
        if self.process is None:
            return
        self.stop_deadline = time.monotonic() + timeout
        _signal_group(self.process.pid, signal.SIGTERM)

    def stop_finished(self, now):
        """Advance a stop begun by send_term(); True once the group is gone."""
        if self.process is None:
            return True
        gone = self.process.poll() is not None and not _group_exists(
            self.process.pid)
        if gone:
            self._forget_process()
            return True
        if now >= self.stop_deadline:
            self._kill()
            return True
        return False

    def terminate(self, timeout):
        """SIGTERM the group, wait up to `timeout`, then SIGKILL it."""
        self.send_term(timeout)
        while not self.stop_finished(time.monotonic()):
            time.sleep(STOP_POLL)

    def _kill(self):
        name = self.service.name
        self.manager.log.warning('service %s (pid %d) did not stop in time: '
                                 'killing its process group', name, self.pid)
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.manager.log.error('service %s (pid %d) survived SIGKILL',
                                   name, self.pid)
        self._forget_process()

    def _forget_process(self):
        self.manager._unwatch(self)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.manager._update(self, process=None)
        self.stop_deadline = None


# -- the manager --------------------------------------------------------------

class ServiceManager:
    """Runs services for their owner: one supervision thread for all.

    `start()` returns at once; the thread starts every service, health
    checks each one every `health_check_interval`, restarts it by its
    policy (at most `max_restarts` times in the manager's life, waiting
    `restart_delay` first) and marks it 'failed' past that. A service is
    'starting' until its health check passes or `startup_timeout` expires
    (a failure). States: starting, ready, unhealthy, restarting, failed,
    stopped. `log` needs info/warning/error/critical with %-style
    arguments; it is called from the supervision thread.
    """

    def __init__(self, services, log=None):
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ValueError(f'service names must be unique: {names}')
        self.log = log if log is not None else _LOG
        self._runners = [_Runner(service, self) for service in services]
        self._callbacks = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.ready_event = threading.Event()
        self._thread = None
        self._stopping = False
        self._wake_lock = threading.Lock()
        self._wake_reader = self._wake_writer = None
        self._selector = None
        self._exit_polling = False
        self._stop_timeout = None

    @property
    def services(self):
        """The Service objects, in the order given."""
        return [runner.service for runner in self._runners]

    def on_change(self, callback):
        """Call `callback(name, state)` on every state change.

        It runs in the supervision thread, so it must be thread-safe and
        quick (e.g. write one byte to a wake-up pipe); what it raises is
        logged and ignored.
        """
        self._callbacks.append(callback)

    def start(self):
        """Start every service and the supervision thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError('ServiceManager.start() called twice')
        self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(self._wake_reader, False)
        os.set_blocking(self._wake_writer, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        with self._lock:
            for runner in self._runners:
                runner.state = 'starting'
        # The thread spawns the processes: with PR_SET_PDEATHSIG a service
        # dies with the thread that created it, and this one lives as long
        # as the manager.
        self._thread = threading.Thread(
            target=self._supervise, name='uhttp.workers.services', daemon=True)
        self._thread.start()

    def stop(self, timeout=None, wait=True):
        """Stop every service: SIGTERM to each process group, SIGKILL after
        `timeout` (default: each service's shutdown_timeout).

        Blocks until done, unless `wait` is False: then it returns at once,
        the 'stopped' states arrive through on_change, and `stopped` tells
        when all is over. Safe to call more than once, and from any thread.
        """
        if not self._stopping:
            self._stop_timeout = timeout
        self._stopping = True
        thread = self._thread
        if thread is None:
            return
        self._wake()
        if not wait or thread is threading.current_thread():
            return      # (from a callback: the thread stops on return)
        longest = max((s.shutdown_timeout for s in self.services), default=0)
        thread.join((longest if timeout is None else timeout) + 10)
        if thread.is_alive():
            self.log.error('services did not stop in time')

    @property
    def stopped(self):
        """True once stop() has completed: every service process is gone."""
        return self._stopping and (
            self._thread is None or not self._thread.is_alive())

    def status(self):
        """One dict per service: name, state, pid, restarts, max_restarts,
        address, last_error."""
        with self._lock:
            return [runner.status() for runner in self._runners]

    def status_of(self, name):
        """The status() entry of one service."""
        with self._lock:
            return self._runner(name).status()

    def states(self):
        """{name: state} of every service."""
        with self._lock:
            return {runner.service.name: runner.state
                    for runner in self._runners}

    def all_ready(self):
        """True when every service is 'ready'."""
        return self.ready_event.is_set()

    def wait_ready(self, timeout=None):
        """Wait until every service is ready, one has failed or stopped, or
        `timeout` passes; return all_ready()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._settled(self._runners):
                remaining = None if deadline is None else \
                    deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.all_ready()

    def wait_for(self, name, deadline):
        """Wait (until the monotonic `deadline`) for a service to be ready,
        failed or stopped; return its status() entry."""
        with self._changed:
            runner = self._runner(name)
            while not self._settled([runner]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return runner.status()

    def _settled(self, runners):
        states = {runner.state for runner in runners}
        if states == {'ready'} or 'failed' in states:
            return True
        return 'stopped' in states and (self._stopping or self._thread is None)

    def _runner(self, name):
        for runner in self._runners:
            if runner.service.name == name:
                return runner
        raise KeyError(f'no service named {name!r}')

    # -- used by the runners (supervision thread) -----------------------------

    def _update(self, runner, **fields):
        """Change a runner's fields under the lock; report a state change."""
        with self._changed:
            old = runner.state
            for key, value in fields.items():
                setattr(runner, key, value)
            changed = runner.state != old
            if changed:
                self._changed.notify_all()
                ready = all(r.state == 'ready' for r in self._runners)
        if not changed:
            return
        if ready:
            self.ready_event.set()
        else:
            self.ready_event.clear()
        for callback in list(self._callbacks):
            try:
                callback(runner.service.name, runner.state)
            except Exception:  # pylint: disable=broad-except
                self.log.error('on_change callback %r failed:\n%s', callback,
                               traceback.format_exc().rstrip())

    def _watch(self, runner):
        """Wake the supervision thread when the runner's process exits."""
        if runner.pidfd is None:
            self._exit_polling = True
        else:
            self._selector.register(runner.pidfd, selectors.EVENT_READ)

    def _unwatch(self, runner):
        """Stop watching the runner's process."""
        if runner.pidfd is not None:
            try:
                self._selector.unregister(runner.pidfd)
            except (KeyError, ValueError):
                pass

    # -- the supervision thread -----------------------------------------------

    def _supervise(self):
        try:
            for runner in self._runners:
                if not self._stopping:
                    runner.spawn(time.monotonic())
            while not self._stopping:
                now = time.monotonic()
                due = min(runner.step(now) for runner in self._runners)
                if not self._stopping:
                    self._wait(due - time.monotonic())
        except Exception:  # pylint: disable=broad-except
            self.log.critical('service supervision failed:\n%s',
                              traceback.format_exc().rstrip())
        finally:
            self._stop_all()
            self._selector.close()
            with self._wake_lock:
                os.close(self._wake_reader)
                os.close(self._wake_writer)
                self._wake_reader = self._wake_writer = None

    def _wait(self, timeout):
        if self._exit_polling:
            timeout = min(timeout, EXIT_POLL)
        for key, _ in self._selector.select(max(0.0, min(timeout, 3600.0))):
            if key.fd == self._wake_reader:
                try:
                    while os.read(self._wake_reader, 512):
                        pass
                except BlockingIOError:
                    pass

    def _wake(self):
        # under the lock: once the thread has closed the pipe, its number
        # may name another file
        with self._wake_lock:
            if self._wake_writer is not None:
                try:
                    os.write(self._wake_writer, b'\0')
                except BlockingIOError:
                    pass    # full: the thread has wake-ups pending anyway

    def _stop_all(self):
        limit = self._stop_timeout
        running = []
        for runner in self._runners:
            if runner.process is not None:
                runner.send_term(runner.service.shutdown_timeout
                                 if limit is None else limit)
                running.append(runner)
        while running:
            now = time.monotonic()
            running = [r for r in running if not r.stop_finished(now)]
            if running:
                time.sleep(STOP_POLL)
        for runner in self._runners:
            self._update(runner, state='stopped')
            self.log.info('service %s stopped', runner.service.name)
