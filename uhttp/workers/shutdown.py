"""Shutdown: draining pending requests, stopping workers, final cleanup.

A mixin of Dispatcher. Shutdown is a small state machine run from the
loop's housekeeping: running → draining (pending requests finish, up to
shutdown_timeout) → stopping (each worker gets SIGTERM and has until its
graceful deadline, never past shutdown_timeout, before SIGKILL) → stopped.
`on_stop()` runs once every worker has exited.

Must never block the loop, or leave a worker process running after the
dispatcher returns.
"""

import multiprocessing
import sys
import time

from .admission import HOLD_CLOSED, resume
from .worker import EXIT_APP_ERROR


class Shutdown:
    """Drain, stop and clean up (mixed into Dispatcher)."""

    def _begin_drain(self):
        if self._state != 'running':
            return
        self._give_up_successor('this dispatcher is shutting down')
        self._notify('STOPPING=1')
        self._state = 'draining'
        now = time.monotonic()
        self._shutdown_started = now
        self._next_housekeeping = now
        self._close_listener()
        self.log.info('draining %d pending requests (up to %ss)',
                      len(self._pending), self.shutdown_timeout)

    def _close_listener(self):
        self._gate.hold(HOLD_CLOSED)
        try:
            self._server.socket.close()
        except OSError:
            pass
        # parked connections are read now: their requests get 503
        for connection in self._admission.release_all():
            if resume(connection) and connection._buffer:  # pylint: disable=protected-access
                self._pipelined.add(connection)

    def _drain_step(self, now):
        deadline = self._shutdown_started + self.shutdown_timeout
        if now < deadline and (self._pending or self._awaiting_first_request()):
            return
        self._fail_all_pending()
        self._stop_workers(now)

    def _awaiting_first_request(self):
        """While handing over to a new dispatcher: connections this one
        accepted whose first request has not arrived yet (their clients
        connected before the listener closed: they are served here)."""
        if self._successor is None:
            return False
        return any(connection.socket is not None
                   and not connection._requests_count  # pylint: disable=protected-access
                   for connection in self._server._waiting_connections)  # pylint: disable=protected-access

    def _fail_all_pending(self):
        for pending in self._pending.all():
            self._give_up(pending, 503, 'Shutting down')

    def _stop_workers(self, now):
        self._state = 'stopping'
        started = self._shutdown_started or now
        self._stop_deadline = max(started + self.shutdown_timeout, now + 1.0)
        for pool in self._pools:
            for handle in pool.workers:
                handle.kill_deadline = None
            pool.stop()
            for handle in pool.workers:
                if handle.stopping and not handle.exited:
                    # retiring ones too (recycled, rolled, resized away)
                    handle.kill_deadline = min(
                        handle.kill_deadline or self._stop_deadline,
                        self._stop_deadline)

    def _stop_step(self, now):
        if not self._stop_hook_called and all(
                pool.all_exited() for pool in self._pools):
            self._stop_hook_called = True
            self.lifecycle_hook('on_stop')
        if all(pool.all_exited() for pool in self._pools) and (
                not self._unsent_output() or now >= self._stop_deadline):
            # services last: workers may have used them while draining
            if self._owned_stop_deadline is None:
                self._stop_owned(self._stop_deadline)
            if self._owned_stopped(now):
                # clients that did not read their answers in time lose them
                self._server.close()
                self._state = 'stopped'
        elif now >= self._stop_deadline + 2.0:
            self.log.error('shutdown overran; exiting with workers killed')
            for pool in self._pools:
                pool.kill()
            self._stop_deadline = now  # the owned services go next

    def _unsent_output(self):
        return any(conn.has_data_to_send
                   for conn in self._server._waiting_connections)  # pylint: disable=protected-access

    def _stop_now(self):
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

    def _close(self):
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



def refuse_to_run_in_worker():
    # A worker process imports the application's main module afresh (spawn).
    # If that module starts a dispatcher on import, every worker would try to
    # become a dispatcher: exit with a code that the pool knows not to retry
    # (the dispatcher says why, once: APP_ERROR_MESSAGE).
    # (multiprocessing marks a spawned child with `_inheriting` while it
    # imports the main module; its own import guard checks the same flag)
    if getattr(multiprocessing.current_process(), '_inheriting', False):
        sys.exit(EXIT_APP_ERROR)

