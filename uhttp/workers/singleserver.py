"""The public names of singleserver 0.4 (`SingleServer`, `ServerClient`,
`ServerNotReady`, `SocketLock`, `LockFile`), with its signatures, over this
package's `Service`, `ServiceClient` and `FileLock`: code written for
singleserver changes its import line only.

This module owns the translation of those signatures and nothing else: the
process, its supervision, the ownership lock and the HTTP client are the
ones of uhttp.workers.service. It must never start, watch or stop a process
itself, nor install signal handlers (the owner's service is stopped at exit
and, on Linux, killed by the kernel when the owner dies).
"""

import os
import signal
import socket as _socket
import threading

from .service import (Endpoint, Service, ServiceClient, ServiceUnavailable,
                      bind_lock_socket)
from .locks import FileLock

__all__ = ['SingleServer', 'ServerClient', 'ServerNotReady', 'SocketLock',
           'LockFile']


class ServerNotReady(ServiceUnavailable):
    """The server did not pass its health check in time (a
    ServiceUnavailable, so either name catches it)."""


def _not_ready(err):
    return ServerNotReady(str(err), err.state)


class ServerClient(ServiceClient):
    """A client of a server at an address, as singleserver builds it:
    `ServerClient(port=8765)` or `ServerClient(socket_path='/tmp/s.sock')`.

    Requests answer requests-like responses (`status_code`, `content`,
    `text`, `json()`, `headers`, `ok`, `raise_for_status()`); failures to
    reach the server raise ServiceError.
    """

    def __init__(self, host='127.0.0.1', port=None, socket_path=None,
                 health_check_url='/', startup_timeout=30.0, timeout=30.0):
        if port is None and socket_path is None:
            raise ValueError('Must provide either port or socket_path')
        address = f'{host}:{port}' if socket_path is None else socket_path
        endpoint = Endpoint(
            str(address), port=None if socket_path else port,
            socket=os.fspath(socket_path) if socket_path else None,
            host=host, health_check_url=health_check_url,
            startup_timeout=startup_timeout)
        super().__init__(endpoint, timeout)
        self.host = host
        self.port = port
        self.socket_path = endpoint.socket
        self.health_check_url = health_check_url
        self.startup_timeout = startup_timeout

    @classmethod
    def _over(cls, client):
        """A ServerClient on the endpoint of a ServiceClient."""
        service = client.service
        made = cls(host=service.host, port=service.port,
                   socket_path=service.socket,
                   health_check_url=service.health_check_url,
                   startup_timeout=service.startup_timeout)
        made._ready = client.is_ready
        return made

    def wait_ready(self, timeout=None):
        """Wait for the health check to pass; True, or raise ServerNotReady."""
        try:
            return super().wait_ready(timeout)
        except ServiceUnavailable as err:
            raise _not_ready(err) from err


class SingleServer:
    """One server process per host, shared by every process that connects.

    `command` may hold `{port}`, `{host}` and `{socket}`. The first process
    whose `connect()` takes the lock (TCP `lock_port`, default port + 10000
    or port - 10000 above 55535; for a Unix socket an abstract socket named
    after `name` on Linux) starts and supervises the server; the others
    wait for its health check. `stdout`/`stderr` take a path, 'inherit' or
    None, 'null'; `stderr='stdout'` merges them.
    """

    def __init__(self, name, command, port=None, host='127.0.0.1',
                 socket=None, lock_port=None, lock_socket=None,
                 health_check_url='/', health_check_interval=5.0,
                 startup_timeout=30.0, restart_on_failure=True,
                 max_restarts=3, restart_delay=1.0, env=None, cwd=None,
                 stdout=None, stderr=None, shutdown_timeout=10.0,
                 shutdown_signal=signal.SIGTERM):
        if port is None and socket is None:
            raise ValueError('Must provide either port or socket')
        if lock_socket is not None:
            raise ValueError('lock_socket= is not supported: a Unix socket '
                             'server is locked by an abstract socket named '
                             'after name= (a lock file next to it off Linux)')
        if shutdown_signal != signal.SIGTERM:
            raise ValueError('shutdown_signal= must be SIGTERM: the server '
                             'group is stopped with SIGTERM, then SIGKILL')
        self._service = Service(
            name, command, port=None if socket else port, host=host,
            socket=os.fspath(socket) if socket else None, lock_port=lock_port,
            health_check_url=health_check_url,
            health_check_interval=health_check_interval,
            startup_timeout=startup_timeout,
            restart_on_failure=restart_on_failure, max_restarts=max_restarts,
            restart_delay=restart_delay, env=env,
            cwd=os.fspath(cwd) if cwd else None, stdout=_output(stdout),
            stderr=_output(stderr), shutdown_timeout=shutdown_timeout)
        self.name = name
        self.port = port
        self.host = host
        self.socket_path = self._service.socket
        self.health_check_url = health_check_url
        self.startup_timeout = startup_timeout
        self._client = None
        self._state_lock = threading.Lock()

    def __repr__(self):
        return f'<SingleServer {self.name!r} at {self._service.address}>'

    @property
    def service(self):
        """The uhttp.workers Service underneath."""
        return self._service

    @property
    def command(self):
        """The command with its placeholders replaced."""
        return self._service.command_line()

    @property
    def is_owner(self):
        """True when this process started the server and supervises it."""
        return self._service.owned

    @property
    def is_connected(self):
        """True when connected and the server was last seen ready."""
        return self._client is not None and self._client.is_ready

    def connect(self, wait_ready=True, timeout=None):
        """A client of the server, starting it when nobody runs it.

        Waits up to `timeout` (default startup_timeout) for the health check
        and raises ServerNotReady, unless `wait_ready` is False. A second call
        returns the same client while the server answers; when it does not,
        it lets go of the old one (stopping the server if we own it) and
        connects again (taking over if its owner died).
        """
        with self._state_lock:
            if self._client is not None:
                if self._client.check_ready():
                    return self._client
                self._drop()
            try:
                client = self._service.connect(
                    timeout=timeout, wait=wait_ready)
            except ServiceUnavailable as err:
                raise _not_ready(err) from err
            self._client = ServerClient._over(client)
            return self._client

    def get_client(self):
        """The client of the last connect(), or None."""
        return self._client

    def disconnect(self):
        """Close the client; if this process owns the server, stop it."""
        with self._state_lock:
            self._drop()

    def stop(self):
        """The same as disconnect()."""
        self.disconnect()

    def _drop(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        self._service.close()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.disconnect()


def _output(where):
    """singleserver's output names: 'inherit' is None, 'null' /dev/null."""
    if where is None or where == 'inherit':
        return None
    if where == 'null':
        return os.devnull
    return os.fspath(where)


class _HeldWhileInside:
    """`with lock:` takes the lock (try_acquire) and releases it on the way
    out; a lock that is garbage collected is released too."""

    def __enter__(self):
        self.try_acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


class SocketLock(_HeldWhileInside):
    """A lock held by binding and listening on a TCP port of `host`, or on a
    Unix socket path (a stale path that nobody answers on is removed)."""

    def __init__(self, port=None, socket_path=None, host='127.0.0.1'):
        self._socket = None
        if port is None and socket_path is None:
            raise ValueError('Must provide either port or socket_path')
        if port is not None and socket_path is not None:
            raise ValueError('Cannot provide both port and socket_path')
        self.port = port
        self.socket_path = os.fspath(socket_path) if socket_path else None
        self.host = host

    @property
    def is_acquired(self):
        """True while this instance holds the lock."""
        return self._socket is not None

    @property
    def address(self):
        """The socket path, or the (host, port) pair."""
        return self.socket_path or (self.host, self.port)

    def try_acquire(self):
        """Take the lock if it is free; True when taken. RuntimeError when
        this instance already holds it."""
        if self._socket is not None:
            raise RuntimeError('Lock already acquired by this instance')
        if self.socket_path is None:
            self._socket = bind_lock_socket(_socket.AF_INET, self.address)
        else:
            self._socket = _bind_path(self.socket_path)
        return self._socket is not None

    def release(self):
        """Give the lock up (nothing happens when not held)."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        sock.close()
        if self.socket_path is not None:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass


def _bind_path(path):
    sock = bind_lock_socket(_socket.AF_UNIX, path)
    if sock is not None or not _stale(path):
        return sock
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return bind_lock_socket(_socket.AF_UNIX, path)


def _stale(path):
    """True when nobody listens on the socket file `path`."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False    # not ours to remove: let the bind error stand
    finally:
        probe.close()
    return False


class LockFile(_HeldWhileInside, FileLock):
    """singleserver's lock file: an exclusive flock on `path`, which holds
    the holder's pid. The kernel frees it when its holder dies."""

    @property
    def is_acquired(self):
        """True while this process holds the lock."""
        return self.held

    def try_acquire(self):
        """Take the lock if it is free; True when taken. RuntimeError when
        this process already holds it."""
        if self.held:
            raise RuntimeError('Lock already acquired by this instance')
        return self.acquire()

    def get_owner_pid(self):
        """The pid written by the last holder, None when there is none (a
        release empties the file; a holder that died leaves its pid)."""
        try:
            with open(self.path, encoding='ascii') as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
