"""Replacing the dispatcher itself without refusing a connection (SIGUSR2).

The running dispatcher starts a successor: the same command line, with the
listening socket passed as an inherited descriptor and the write end of a
pipe. Both accept on that one socket meanwhile. When the successor's
workers are ready it writes "ready" on the pipe, and the old dispatcher
drains and exits like on SIGTERM. If the successor dies first, the pipe
closes without "ready" and the old one keeps serving.

The `Upgrade` mixin of Dispatcher handles SIGUSR2 and follows the
successor until it is ready (then it asks for the drain) or gone (then it
forgets it). It never drains or stops anything itself.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import subprocess

    from .connection import Server
    from .log import Logger

# the process environment, or a stand-in for it
Environ = MutableMapping[str, str]

ENV_LISTEN_FD = 'UHTTP_WORKERS_LISTEN_FD'
ENV_READY_FD = 'UHTTP_WORKERS_READY_FD'
ENV_PREDECESSOR = 'UHTTP_WORKERS_PREDECESSOR'


def start_successor(
        listener: socket.socket) -> tuple[subprocess.Popen[bytes], int]:
    """Start a new dispatcher process; return (Popen, ready pipe read fd)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    reader, writer = os.pipe()
    env = dict(os.environ)
    env[ENV_LISTEN_FD] = str(listener.fileno())
    env[ENV_READY_FD] = str(writer)
    env[ENV_PREDECESSOR] = str(os.getpid())
    # orig_argv keeps interpreter options and `-m module` invocations
    command = [sys.executable] + list(getattr(sys, 'orig_argv', sys.argv))[1:]
    try:
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            command, env=env, pass_fds=(listener.fileno(), writer),
            close_fds=True)
    finally:
        os.close(writer)
    os.set_blocking(reader, False)
    return process, reader


def inherited_listener(
        environ: Environ | None = None) -> socket.socket | None:
    """The listening socket a predecessor passed us, or None."""
    environ = os.environ if environ is None else environ
    value = environ.pop(ENV_LISTEN_FD, None)
    if not value:
        return None
    fd = int(value)
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


def predecessor_pid(environ: Environ | None = None) -> int | None:
    """Pid of the dispatcher we replace (its pid file is ours to take)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_PREDECESSOR)
    return int(value) if value and value.isdigit() else None


def announce_ready(environ: Environ | None = None) -> bool:
    """Tell the predecessor we serve; returns False when there is none."""
    environ = os.environ if environ is None else environ
    value = environ.pop(ENV_READY_FD, None)
    environ.pop(ENV_PREDECESSOR, None)
    if not value:
        return False
    fd = int(value)
    try:
        os.write(fd, b'ready')
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


UPGRADE_TIMEOUT = 60.0  # seconds a successor has to become ready


class Successor:
    """A new dispatcher started by SIGUSR2, from start to ready (or gone)."""

    def __init__(self, process: subprocess.Popen[bytes], reader: int,
                 deadline: float) -> None:
        self.process = process
        # the read end of the ready pipe; None once closed
        self.reader: int | None = reader
        self.deadline = deadline
        self.ready = False

    @property
    def pid(self) -> int:
        """The successor's process id."""
        return self.process.pid

    def read_news(self) -> Literal['ready', 'gone'] | None:
        """'ready', 'gone' (it ended first), or None (nothing yet)."""
        # (called while the pipe is open)
        assert self.reader is not None
        try:
            news = os.read(self.reader, 64)
        except BlockingIOError:
            return None
        if news.startswith(b'ready'):
            self.ready = True
            return 'ready'
        return 'gone'

    def close_pipe(self) -> None:
        """Stop listening to the successor."""
        if self.reader is not None:
            os.close(self.reader)
            self.reader = None

    def stop(self) -> None:
        """Terminate a successor that will not take over."""
        if self.process.poll() is None:
            self.process.terminate()

    def reaped(self) -> bool:
        """True once its exit status was collected (no zombie left)."""
        return self.process.poll() is not None


class Upgrade:
    """SIGUSR2 and the successor's progress (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    _state: str
    # set by _start(), before the loop runs
    _selector: selectors.BaseSelector
    _server: Server
    # the upgrade's own
    _successor: Successor | None
    # successors given up, until their exit status is collected
    _former_successors: list[Successor]

    if TYPE_CHECKING:
        def _begin_drain(self) -> None: ...

    def handle_usr2(self) -> None:
        """SIGUSR2: start a new dispatcher (new code) on the same listening
        socket; this one drains and exits once the new one is ready."""
        if self._state != 'running' or self._successor is not None:
            self.log.warning('SIGUSR2 ignored: %s', 'an upgrade is under way'
                             if self._successor else 'shutting down')
            return
        try:
            process, reader = start_successor(self._server.socket)
        except OSError as err:
            self.log.error('SIGUSR2: cannot start a new dispatcher: %s', err)
            return
        self._successor = Successor(
            process, reader, time.monotonic() + UPGRADE_TIMEOUT)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_successor_news)
        self.log.info('SIGUSR2: started new dispatcher (pid %d); serving '
                      'until it is ready', process.pid)

    def _on_successor_news(self, _fileobj: object, _mask: int) -> None:
        # registered for the successor's pipe while it is the successor
        successor = self._successor
        assert successor is not None and successor.reader is not None
        news = successor.read_news()
        if news is None:
            return
        self._selector.unregister(successor.reader)
        successor.close_pipe()
        if news == 'ready':
            self.log.info('new dispatcher (pid %d) is ready: draining',
                          successor.pid)
            self._begin_drain()
        else:
            self._give_up_successor('it ended before it was ready')

    def _give_up_successor(self, why: str) -> None:
        """Stop a successor that will not take over; go on serving."""
        successor, self._successor = self._successor, None
        if successor is None or successor.ready:
            self._successor = successor
            return
        if successor.reader is not None:
            self._selector.unregister(successor.reader)
            successor.close_pipe()
        successor.stop()
        self._former_successors.append(successor)
        self.log.error('new dispatcher (pid %d) will not take over: %s',
                       successor.pid, why)

    def _upgrade_step(self, now: float) -> None:

        successor = self._successor
        if successor is not None and not successor.ready \
                and now >= successor.deadline:
            self._give_up_successor(
                f'not ready within {UPGRADE_TIMEOUT:.0f}s')
        self._former_successors = [
            s for s in self._former_successors if not s.reaped()]
