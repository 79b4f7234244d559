"""Host ownership of a standalone service: which process on this host runs
it. The owner is the process that holds the service's lock: a listening TCP
socket on 127.0.0.1 (`lock_port`), an abstract Unix socket (Linux, services
on a Unix socket) or an flock'ed file (elsewhere). The kernel frees the lock
when its holder dies, so the next `Service.connect()` anywhere takes over.

This module owns taking, holding and giving up that lock, and dropping a
copy inherited by a forked child. It must never spawn or signal a process,
talk HTTP, or free a lock while the service it guards is still running
(`Ownership.close()` stops the manager first).
"""

from __future__ import annotations

import atexit
import errno
import io
import multiprocessing.util
import os
import socket as _socket
import sys
import weakref
from typing import TYPE_CHECKING, Any

from .service_client import ServiceError

if TYPE_CHECKING:
    from .service import Service, ServiceManager

# what holds a service's lock: a listening socket, or an flock'ed file
HeldLock = _socket.socket | io.BufferedRandom
# an address as socket.bind() takes it: a Unix path, or the tuple of the
# family ((host, port) for TCP)
SocketAddress = str | tuple[Any, ...]

LOCK_PORT_OFFSET = 10000
LOCK_NAME_PREFIX = 'uhttp.workers.service.'


def default_lock_port(port: int) -> int:
    """The lock port of a TCP service: port + 10000, or port - 10000 when
    that would pass 65535 (the rule singleserver uses too)."""
    if port + LOCK_PORT_OFFSET <= 65535:
        return port + LOCK_PORT_OFFSET
    return port - LOCK_PORT_OFFSET


def try_lock(service: Service) -> HeldLock | None:
    """The lock of a service (socket or file) if we took it, else None."""
    address: SocketAddress
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


def bind_lock_socket(family: int, address: SocketAddress
                     ) -> _socket.socket | None:
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


def _try_file_lock(path: str) -> io.BufferedRandom | None:
    import fcntl  # pylint: disable=import-outside-toplevel
    handle = open(path, 'a+b')  # pylint: disable=consider-using-with
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def own(lock: HeldLock, manager: ServiceManager) -> Ownership:
    """Record that this process owns a service through `lock`, run by
    `manager`: the returned Ownership stops the service and frees the lock
    at interpreter exit, and a forked child drops its copy of the lock."""
    owner = Ownership(lock, manager)
    _OWNED.add(owner)
    atexit.register(owner.close)
    # multiprocessing children leave through os._exit: no atexit there
    multiprocessing.util.Finalize(None, owner.close, exitpriority=10)
    return owner


class Ownership:
    """This process owns a standalone service: its lock and its manager."""

    def __init__(self, lock: HeldLock, manager: ServiceManager) -> None:
        self.lock: HeldLock | None = lock
        self.manager = manager
        self.pid = os.getpid()

    def close(self, timeout: float | None = None) -> None:
        """Stop the service, then free the lock (idempotent)."""
        if self.pid != os.getpid() or self.lock is None:
            return
        self.manager.stop(timeout)
        self.lock.close()
        self.lock = None
        _OWNED.discard(self)

    def forget(self) -> None:
        """In a forked child: drop our copy of the lock without stopping."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None


_OWNED: weakref.WeakSet[Ownership] = weakref.WeakSet()


def _forget_owned_in_child() -> None:
    # A forked child holding a copy of the lock would keep it bound after
    # the owner dies, and no one could take over.
    for owner in list(_OWNED):
        owner.forget()
    _OWNED.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_owned_in_child)
