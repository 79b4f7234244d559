"""Several dispatchers per host: the supervisor process of `dispatchers=N`.

One dispatcher is one Python process, so its CPU per request caps a host at
one core. With `Dispatcher(dispatchers=N)` (N > 1) `run()` becomes this
supervisor: it binds the listening socket once (a bind error is still one
line and exit status 1), then forks N dispatcher processes that serve on
that inherited socket, each with its own pools of workers. The kernel hands
each new connection to whichever dispatcher accepts it first.

What runs once per host: dispatcher 0 alone starts the owned services and
the job process (a restarted dispatcher 0 starts them again); the workers of
the other dispatchers reach the services by their health checks.

Signals: SIGTERM/SIGINT (graceful) and SIGQUIT (immediate) go to every
dispatcher, and the supervisor exits 0 once all have exited; SIGHUP, SIGTTIN,
SIGTTOU and SIGUSR1 are forwarded to each (each dispatcher restarts its own
workers on SIGHUP). SIGUSR2 (replacing the dispatcher) is not supported here
and is ignored with a warning; so is daemon=True (refused at start). A dispatcher that dies otherwise is
restarted after a back-off that grows while it keeps dying young. A
supervisor that is killed outright takes its dispatchers with it (they get
SIGTERM from the kernel and stop gracefully).

The supervisor owns only the listening socket, the pid file and the list of
its children. It must never serve a request, start a worker, or poll: it
sleeps in sigtimedwait() until a signal or a child's exit wakes it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING

from .process_group import set_parent_death_signal
from .proctitle import set_title
from .systemd import listen_sockets
from .unixsocket import UnixListener, unix_path

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

# the signals the supervisor waits for (blocked, then taken by sigwait)
WAITED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
          signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
          signal.SIGCHLD)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# restart back-off: FIRST_DELAY * 2**(deaths in a row), at most MAX_DELAY;
# a dispatcher that lived HEALTHY_AFTER seconds starts the count anew
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 10.0
# a signal mask, as pthread_sigmask() returns it
_Mask = set[int | signal.Signals]


def restart_delay(young_deaths: int) -> float:
    """Seconds to wait before restarting a dispatcher that died young
    `young_deaths` times in a row (1 for the first)."""
    return float(min(MAX_DELAY,
                     FIRST_DELAY * 2 ** max(0, young_deaths - 1)))


class _Slot:
    """Dispatcher number `index`: its process and its restart record."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.started = 0.0
        self.young_deaths = 0
        self.restart_at: float | None = None


class Supervisor:
    """Binds once, forks `dispatcher.dispatchers` dispatchers, keeps them."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.log = dispatcher.log
        self._slots = [_Slot(i) for i in range(dispatcher.dispatchers)]
        self._listener: socket.socket | None = None
        self._unix_listener: UnixListener | None = None
        self._stopping = False
        if dispatcher._daemon is not None:  # pylint: disable=protected-access
            raise SystemExit('daemon=True is not supported with several '
                             'dispatchers yet: run the supervisor under a '
                             'service manager instead')
        # the pid file names the supervisor: the dispatchers write none
        self._pid_file = dispatcher._pid_file  # pylint: disable=protected-access
        dispatcher._pid_file = None  # pylint: disable=protected-access

    def run(self) -> None:
        """Serve with N dispatchers until every one has exited after a
        stop signal."""
        self._bind()
        try:
            if self._pid_file is not None:
                self._pid_file.create()
            set_title(f'supervisor of {len(self._slots)} dispatchers')
            self._supervise()
        finally:
            self._close()
        self.log.info('supervisor (pid %d): every dispatcher has exited',
                      os.getpid())

    def _supervise(self) -> None:
        # blocked, the signals wait for sigtimedwait(): no handler, no race
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        try:
            for slot in self._slots:
                self._fork(slot, old_mask)
            self.log.info('supervisor (pid %d) started %d dispatchers',
                          os.getpid(), len(self._slots))
            while not self._stopping or self._running():
                self._wait_once(old_mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    # -- binding ------------------------------------------------------------------

    def _bind(self) -> None:
        # imported here: dispatcher imports this module on use only
        from .dispatcher import _listen_error  # pylint: disable=import-outside-toplevel
        dispatcher = self._dispatcher
        inherited = next(iter(listen_sockets()), None)
        try:
            if inherited is not None:
                self._listener = inherited
                return
            path = unix_path(dispatcher.address)
            if path is not None:
                self._unix_listener = UnixListener(path)
                self._listener = self._unix_listener.bind(
                    dispatcher.listen_backlog)
                return
            self._listener = _tcp_listener(dispatcher.address,
                                           dispatcher.port,
                                           dispatcher.listen_backlog)
        except OSError as err:
            message = _listen_error(dispatcher.address, dispatcher.port, err)
            if dispatcher.log_file:   # stderr gets it from SystemExit
                self.log.error('%s', message)
            raise SystemExit(message) from None

    # -- children -----------------------------------------------------------------

    def _fork(self, slot: _Slot, old_mask: _Mask) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            # a supervisor killed outright leaves no dispatcher behind: each
            # gets SIGTERM and stops gracefully
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(0)  # pylint: disable=protected-access
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            _serve_as_dispatcher(self._dispatcher, slot.index,
                                 self._listener)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.restart_at = None
        self.log.info('dispatcher %d started (pid %d)', slot.index, pid)

    def _running(self) -> bool:
        return any(slot.pid is not None for slot in self._slots)

    def _wait_once(self, old_mask: _Mask) -> None:
        timeout = self._next_restart_in()
        info: signal.struct_siginfo | None
        if timeout is None:
            info = signal.sigwaitinfo(WAITED)
        else:
            info = signal.sigtimedwait(WAITED, timeout)
        if info is not None:
            self._on_signal(signal.Signals(info.si_signo))
        self._reap()
        self._restart_due(old_mask)

    def _next_restart_in(self) -> float | None:
        due = [slot.restart_at for slot in self._slots
               if slot.restart_at is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _on_signal(self, signum: signal.Signals) -> None:
        if signum == signal.SIGCHLD:
            return   # reaped by the caller
        if signum == signal.SIGUSR2:
            self.log.warning('SIGUSR2 ignored: replacing the dispatchers '
                             'is not supported with several dispatchers')
            return
        if signum in STOPPING:
            self._stopping = True
            for slot in self._slots:
                slot.restart_at = None
            self.log.info('supervisor: %s, stopping every dispatcher',
                          signum.name)
        elif signum == signal.SIGHUP:
            self.log.info('supervisor: SIGHUP, each dispatcher restarts its '
                          'workers')
        for slot in self._slots:
            if slot.pid is not None:
                _kill(slot.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self._slots:
                if slot.pid == pid:
                    self._exited(slot, status)

    def _exited(self, slot: _Slot, status: int) -> None:
        slot.pid = None
        code = os.waitstatus_to_exitcode(status)
        how = f'killed by signal {-code}' if code < 0 else \
            f'exited with status {code}'
        if self._stopping:
            self.log.info('dispatcher %d %s', slot.index, how)
            return
        lived = time.monotonic() - slot.started
        slot.young_deaths = 1 if lived >= HEALTHY_AFTER \
            else slot.young_deaths + 1
        delay = restart_delay(slot.young_deaths)
        slot.restart_at = time.monotonic() + delay
        self.log.error('dispatcher %d %s; restarting it in %.1fs',
                       slot.index, how, delay)

    def _restart_due(self, old_mask: _Mask) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._fork(slot, old_mask)

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._unix_listener is not None:
            self._unix_listener.remove()
        if self._pid_file is not None:
            self._pid_file.remove()


def _tcp_listener(address: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket bound as uhttp-server binds its own."""
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass   # it exited; the reaper hears of it


def _serve_as_dispatcher(dispatcher: Dispatcher, index: int,
                         listener: socket.socket | None) -> None:
    """In a forked child: serve as dispatcher `index`, then leave the
    process (never return into the supervisor's code)."""
    code = 1
    try:
        dispatcher.serve_supervised(index, listener)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (
            0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # pylint: disable=broad-except
        # the child must end here whatever happened: say why first
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access
