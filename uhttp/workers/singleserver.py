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

from __future__ import annotations

import os
import signal
import socket as _socket
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from .service import (Endpoint, Service, ServiceClient, ServiceUnavailable,
                      bind_lock_socket)
from .locks import FileLock

__all__ = ['SingleServer', 'ServerClient', 'ServerNotReady', 'SocketLock',
           'LockFile']

# a file system path as singleserver takes it
StrPath = str | os.PathLike[str]


class ServerNotReady(ServiceUnavailable):
    """The server did not pass its health check in time (a
    ServiceUnavailable, so either name catches it)."""


def _not_ready(err: ServiceUnavailable) -> ServerNotReady:
    return ServerNotReady(str(err), err.state)


class ServerClient(ServiceClient):
    """A client of a server at an address, as singleserver builds it:
    `ServerClient(port=8765)` or `ServerClient(socket_path='/tmp/s.sock')`.

    Requests answer requests-like responses (`status_code`, `content`,
    `text`, `json()`, `headers`, `ok`, `raise_for_status()`); failures to
    reach the server raise ServiceError.
    """

    def __init__(self, host: str = '127.0.0.1', port: int | None = None,
                 socket_path: StrPath | None = None,
                 health_check_url: str = '/', startup_timeout: float = 30.0,
                 timeout: float = 30.0) -> None:
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
        self.socket_path: str | None = endpoint.socket
        self.health_check_url = health_check_url
        self.startup_timeout = startup_timeout

    @classmethod
    def _over(cls, client: ServiceClient) -> ServerClient:
        """A ServerClient on the endpoint of a ServiceClient."""
        service = client.service
        made = cls(host=service.host, port=service.port,
                   socket_path=service.socket,
                   health_check_url=service.health_check_url,
                   startup_timeout=service.startup_timeout)
        made._ready = client.is_ready
        return made

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the health check to pass; True, or raise ServerNotReady."""
        try:
            ready: bool = super().wait_ready(timeout)
            return ready
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

    def __init__(self, name: str, command: Sequence[str],
                 port: int | None = None, host: str = '127.0.0.1',
                 socket: StrPath | None = None, lock_port: int | None = None,
                 lock_socket: StrPath | None = None,
                 health_check_url: str = '/',
                 health_check_interval: float = 5.0,
                 startup_timeout: float = 30.0,
                 restart_on_failure: bool = True, max_restarts: int = 3,
                 restart_delay: float = 1.0,
                 env: Mapping[str, str] | None = None,
                 cwd: StrPath | None = None, stdout: StrPath | None = None,
                 stderr: StrPath | None = None,
                 shutdown_timeout: float = 10.0,
                 shutdown_signal: int = signal.SIGTERM) -> None:
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
        self.socket_path: str | None = self._service.socket
        self.health_check_url = health_check_url
        self.startup_timeout = startup_timeout
        self._client: ServerClient | None = None
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return f'<SingleServer {self.name!r} at {self._service.address}>'

    @property
    def service(self) -> Service:
        """The uhttp.workers Service underneath."""
        return self._service

    @property
    def command(self) -> list[str]:
        """The command with its placeholders replaced."""
        command: list[str] = self._service.command_line()
        return command

    @property
    def is_owner(self) -> bool:
        """True when this process started the server and supervises it."""
        owned: bool = self._service.owned
        return owned

    @property
    def is_connected(self) -> bool:
        """True when connected and the server was last seen ready."""
        if self._client is None:
            return False
        ready: bool = self._client.is_ready
        return ready

    def connect(self, wait_ready: bool = True,
                timeout: float | None = None) -> ServerClient:
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
            made = self._client = ServerClient._over(client)
            return made

    def get_client(self) -> ServerClient | None:
        """The client of the last connect(), or None."""
        return self._client

    def disconnect(self) -> None:
        """Close the client; if this process owns the server, stop it."""
        with self._state_lock:
            self._drop()

    def stop(self) -> None:
        """The same as disconnect()."""
        self.disconnect()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._service.close()

    def __enter__(self) -> ServerClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def _output(where: StrPath | None) -> str | None:
    """singleserver's output names: 'inherit' is None, 'null' /dev/null."""
    if where is None or where == 'inherit':
        return None
    if where == 'null':
        return os.devnull
    return os.fspath(where)


class _Acquirable(Protocol):
    def try_acquire(self) -> bool: ...

    def release(self) -> object: ...


_Lock = TypeVar('_Lock', bound=_Acquirable)


class _HeldWhileInside:
    """`with lock:` takes the lock (try_acquire) and releases it on the way
    out; a lock that is garbage collected is released too."""

    def __enter__(self: _Lock) -> _Lock:
        self.try_acquire()
        return self

    def __exit__(self: _Acquirable, *exc: object) -> None:
        self.release()

    def __del__(self: _Acquirable) -> None:
        self.release()


class SocketLock(_HeldWhileInside):
    """A lock held by binding and listening on a TCP port of `host`, or on a
    Unix socket path (a stale path that nobody answers on is removed)."""

    def __init__(self, port: int | None = None,
                 socket_path: StrPath | None = None,
                 host: str = '127.0.0.1') -> None:
        self._socket: _socket.socket | None = None
        if port is None and socket_path is None:
            raise ValueError('Must provide either port or socket_path')
        if port is not None and socket_path is not None:
            raise ValueError('Cannot provide both port and socket_path')
        self.port = port
        self.socket_path = os.fspath(socket_path) if socket_path else None
        self.host = host

    @property
    def is_acquired(self) -> bool:
        """True while this instance holds the lock."""
        return self._socket is not None

    @property
    def address(self) -> str | tuple[str, int | None]:
        """The socket path, or the (host, port) pair."""
        return self.socket_path or (self.host, self.port)

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when taken. RuntimeError when
        this instance already holds it."""
        if self._socket is not None:
            raise RuntimeError('Lock already acquired by this instance')
        if self.socket_path is None:
            self._socket = bind_lock_socket(_socket.AF_INET, self.address)
        else:
            self._socket = _bind_path(self.socket_path)
        return self._socket is not None

    def release(self) -> None:
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


def _bind_path(path: str) -> _socket.socket | None:
    sock: _socket.socket | None = bind_lock_socket(_socket.AF_UNIX, path)
    if sock is not None or not _stale(path):
        return sock
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = bind_lock_socket(_socket.AF_UNIX, path)
    return sock


def _stale(path: str) -> bool:
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
    def is_acquired(self) -> bool:
        """True while this process holds the lock."""
        held: bool = self.held
        return held

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when taken. RuntimeError when
        this process already holds it."""
        if self.held:
            raise RuntimeError('Lock already acquired by this instance')
        taken: bool = self.acquire()
        return taken

    def get_owner_pid(self) -> int | None:
        """The pid written by the last holder, None when there is none (a
        release empties the file; a holder that died leaves its pid)."""
        try:
            with open(self.path, encoding='ascii') as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
