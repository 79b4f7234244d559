"""Shutdown: draining pending requests, stopping workers, final cleanup.

A mixin of Dispatcher. Shutdown is a small state machine run from the
loop's housekeeping: running → draining (pending requests finish, up to
shutdown_timeout) → stopping (each worker gets SIGTERM and has until its
graceful deadline, never past shutdown_timeout, before SIGKILL) → stopped.
`on_stop()` runs once every worker has exited.

Must never block the loop, or leave a worker process running after the
dispatcher returns.
"""

from __future__ import annotations

import multiprocessing
import selectors
import sys
import time
from typing import TYPE_CHECKING, cast

from .admission import HOLD_CLOSED, resume
from .worker import EXIT_APP_ERROR

# seconds: while handing over, a kept-alive connection that was active this
# recently is still waited for (its client is likely sending more)
HANDOVER_IDLE = 1.0
# seconds from the start of a hand-over during which a connection that has
# sent no request yet is waited for: a client connects just before the
# listener closes and sends at once, but a browser's preconnect or an idle
# client may send nothing for long, and must not hold the dispatcher (and
# the roll) until shutdown_timeout
HANDOVER_FIRST_REQUEST = 2.0

if TYPE_CHECKING:
    from .admission import Admission, ListenerGate
    from .pending import Pending, PendingTable
    from .connection import Connection, Server
    from .log import Logger
    from .pidfile import PidFile
    from .pool import WorkerPool
    from .systemd import Notifier
    from .upgrade import Successor


class Shutdown:
    """Drain, stop and clean up (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    shutdown_timeout: float
    _state: str
    _pools: list[WorkerPool]
    _pending: PendingTable
    _admission: Admission
    _pipelined: set[Connection]
    _successor: Successor | None
    _stop_hook_called: bool
    _owned_stop_deadline: float | None
    _next_housekeeping: float
    _pid_file: PidFile | None
    _notifier: Notifier | None
    # set by _start(), before any shutdown
    _selector: selectors.BaseSelector
    _server: Server
    _gate: ListenerGate
    # the shutdown's own (None until it begins)
    _shutdown_started: float | None
    _stop_deadline: float | None

    if TYPE_CHECKING:
        def _handing_over(self) -> bool: ...

        def _give_up_successor(self, why: str) -> None: ...

        def _notify(self, message: str) -> None: ...

        def _give_up(self, pending: Pending, status: int | None,
                     message: str | None = None,
                     reason: str | None = None) -> None: ...

        def lifecycle_hook(self, name: str, *args: object) -> None: ...

        def _stop_owned(self, deadline: float) -> None: ...

        def _owned_stopped(self, now: float) -> bool: ...

        def _close_owned(self) -> None: ...

        def _restore_signals(self) -> None: ...

    def _begin_drain(self) -> None:
        if self._state != 'running':
            return
        self._give_up_successor('this dispatcher is shutting down')
        self._notify('STOPPING=1')
        self._state = 'draining'
        now = time.monotonic()
        self._shutdown_started = now
        self._next_housekeeping = now
        self._close_listener()
        if not self._handing_over():
            # (while handing over, the open connections are still served
            # here; the idle ones are closed at the end of the drain)
            self._close_idle_connections()
        self.log.info('draining %d pending requests (up to %ss)',
                      len(self._pending), self.shutdown_timeout)

    def _close_listener(self) -> None:
        self._gate.hold(HOLD_CLOSED)
        try:
            self._server.socket.close()
        except OSError:
            pass
        # parked connections are read now: their requests get 503
        for parked in self._admission.release_all():
            # (the dispatcher parks only its Connections)
            connection = cast('Connection', parked)
            if resume(connection) and connection._buffer:  # pylint: disable=protected-access
                self._pipelined.add(connection)

    def _close_idle_connections(self) -> None:
        """Close the keep-alive connections that wait for a next request.

        Left open, the next request on one could only be refused (503
        "Shutting down"), and a balancer passes that 503 to its client.
        Closed, the client (or the balancer) opens a new connection,
        refused here, and goes to another instance; a request that crossed
        the close sees its connection closed before any answer, which a
        client may retry (RFC 9112 §9.3.1; haproxy: retry-on empty-response).
        """
        # pylint: disable=protected-access
        for connection in list(self._server._waiting_connections):
            if _is_idle(connection):
                connection.close()

    def _drain_step(self, now: float) -> None:
        started = self._shutdown_started
        assert started is not None   # (set by _begin_drain)
        deadline = started + self.shutdown_timeout
        if now < deadline and (self._pending or self._awaiting_first_request()):
            return
        self._fail_all_pending()
        if self._handing_over():
            self._close_idle_connections()
        self._stop_workers(now)

    def _awaiting_first_request(self) -> bool:
        """While handing over to a new dispatcher: connections active
        within HANDOVER_IDLE seconds (accepted, or receiving, or kept
        alive: their request is served here, and its answer closes them),
        and in the first HANDOVER_FIRST_REQUEST seconds of the hand-over
        those whose first request has not arrived yet (their clients
        connected before the listener closed)."""
        if not self._handing_over():
            return False
        recent = time.time() - HANDOVER_IDLE
        started = self._shutdown_started
        first_wait = started is not None and \
            time.monotonic() < started + HANDOVER_FIRST_REQUEST
        # pylint: disable=protected-access
        return any(connection.socket is not None
                   and (connection._last_activity > recent
                        or (first_wait and not connection._requests_count))
                   for connection in self._server._waiting_connections)

    def _fail_all_pending(self) -> None:
        for pending in self._pending.all():
            self._give_up(pending, 503, 'Shutting down')

    def _stop_workers(self, now: float) -> None:
        self._state = 'stopping'
        started = self._shutdown_started or now
        self._stop_deadline = stop_deadline = max(
            started + self.shutdown_timeout, now + 1.0)
        for pool in self._pools:
            for handle in pool.workers:
                handle.kill_deadline = None
            pool.stop()
            for handle in pool.workers:
                if handle.stopping and not handle.exited:
                    # retiring ones too (recycled, rolled, resized away)
                    handle.kill_deadline = min(
                        handle.kill_deadline or stop_deadline,
                        stop_deadline)

    def _stop_step(self, now: float) -> None:
        stop_deadline = self._stop_deadline
        # (set on entering 'stopping': _stop_workers, _stop_now)
        assert stop_deadline is not None
        if not self._stop_hook_called and all(
                pool.all_exited() for pool in self._pools):
            self._stop_hook_called = True
            self.lifecycle_hook('on_stop')
        if all(pool.all_exited() for pool in self._pools) and (
                not self._unsent_output() or now >= stop_deadline):
            # services last: workers may have used them while draining
            if self._owned_stop_deadline is None:
                self._stop_owned(stop_deadline)
            if self._owned_stopped(now):
                # clients that did not read their answers in time lose them
                self._server.close()
                self._state = 'stopped'
        elif now >= stop_deadline + 2.0:
            self.log.error('shutdown overran; exiting with workers killed')
            for pool in self._pools:
                pool.kill()
            self._stop_deadline = now  # the owned services go next

    def _unsent_output(self) -> bool:
        return any(conn.has_data_to_send
                   for conn in self._server._waiting_connections)  # pylint: disable=protected-access

    def _stop_now(self) -> None:
        if self._state in ('stopping', 'stopped'):
            if self._state == 'stopping':
                for pool in self._pools:
                    pool.kill()
            return
        if self._state == 'running':
            self._give_up_successor('this dispatcher is shutting down')
            self._notify('STOPPING=1')
            self._close_listener()
        now = time.monotonic()
        self._shutdown_started = now - self.shutdown_timeout
        self._fail_all_pending()
        for pool in self._pools:
            pool.kill()
        self._state = 'stopping'
        self._stop_deadline = now + 1.0
        self._next_housekeeping = now

    def _close(self) -> None:
        self._give_up_successor('this dispatcher is shutting down')
        self._close_owned()
        for pool in self._pools:
            for handle in pool.workers:
                if not handle.exited and handle.process is not None:
                    handle.process.join(0.5)
                    if handle.process.exitcode is None:
                        handle.process.kill()
                        handle.process.join(1)
                if handle.channel is not None:
                    handle.channel.close()
        if self._server is not None:
            self._server.close()
        self._restore_signals()
        if self._selector is not None:
            self._selector.close()
        if self._notifier is not None:
            self._notifier.close()
        if self._pid_file is not None:
            self._pid_file.remove()
        self.log.info('stopped')


def _is_idle(connection: Connection) -> bool:
    """True for a keep-alive connection between two requests: nothing of a
    next request received, nothing left to send, no stream."""
    # pylint: disable=protected-access
    return (connection.socket is not None and connection.context is None
            and connection._method is None and not connection._buffer
            and not connection._response_started
            and not connection._is_streaming and not connection._ws_mode
            and not connection._read_paused
            and not connection.has_data_to_send)


def refuse_to_run_in_worker() -> None:

    # A worker process imports the application's main module afresh (spawn).
    # If that module starts a dispatcher on import, every worker would try to
    # become a dispatcher: exit with a code that the pool knows not to retry
    # (the dispatcher says why, once: APP_ERROR_MESSAGE).
    # (multiprocessing marks a spawned child with `_inheriting` while it
    # imports the main module; its own import guard checks the same flag)
    if getattr(multiprocessing.current_process(), '_inheriting', False):
        sys.exit(EXIT_APP_ERROR)

