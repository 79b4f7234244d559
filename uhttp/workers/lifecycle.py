"""Signals and the end of a dispatcher's life: shutdown, systemd, cleanup.

A mixin of Dispatcher. Signal handlers only wake the loop through a
wake-up socket; the loop then calls `handle_<signal name>()`, where the real
work happens, outside any handler. Shutdown is a small state machine run
from the loop's housekeeping: running → draining (pending requests finish)
→ stopping (workers exit) → stopped.

Must never do work inside a signal handler, or leave a worker process
running after the dispatcher returns.
"""

import multiprocessing
import os
import selectors
import signal
import socket
import sys
import time

from . import upgrade
from .admission import HOLD_CLOSED, HOLD_PREDECESSOR, resume
from .worker import EXIT_APP_ERROR

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                   signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGTTIN, signal.SIGTTOU)


def _forget_dispatcher_signals():
    # runs in any child forked from the dispatcher, before anything else:
    # a signal arriving then must not wake (or be handled by) the dispatcher
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        return  # forked from another thread: it never had the wake-up fd
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=_forget_dispatcher_signals)


class Lifecycle:
    """Signals, shutdown and systemd notifications (mixed into Dispatcher)."""

    def _install_signals(self):
        try:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:
            reader.close()
            writer.close()
            self.log.warning('not in the main thread: signals are not '
                             'handled, use stop() to shut down')
            return
        self._signal_reader, self._signal_writer = reader, writer
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, _note_signal)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_signal_readable)

    def _on_signal_readable(self, _fileobj, _mask):
        try:
            data = self._signal_reader.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name[3:].lower()
            handler = getattr(self, f'handle_{name}', None)
            if handler is not None:
                handler()

    def handle_term(self):
        """SIGTERM: graceful shutdown."""
        self.log.info('SIGTERM: graceful shutdown')
        self._begin_drain()

    def handle_int(self):
        """SIGINT (Ctrl-C): graceful shutdown; a second one stops at once."""
        if self._state != 'running':
            self.log.warning('SIGINT again: stopping now')
            self._stop_now()
            return
        self.log.info('SIGINT: graceful shutdown')
        self._begin_drain()

    def handle_quit(self):
        """SIGQUIT: immediate shutdown."""
        self.log.warning('SIGQUIT: stopping now')
        self._stop_now()

    def handle_hup(self):
        """SIGHUP: reload configuration, then a rolling restart of workers."""
        self.log.info('SIGHUP: reload and rolling restart of the workers')
        self.reload()
        self.restart_workers(graceful=True)

    def handle_usr1(self):
        """SIGUSR1: reopen the log file (after logrotate moved it)."""
        self._log_output.reopen()
        self.log.info('SIGUSR1: log file reopened')

    def handle_ttin(self):
        """SIGTTIN: one more worker in every pool."""
        for pool in self._pools:
            pool.resize(pool.num_workers + 1)

    def handle_usr2(self):
        """SIGUSR2: start a new dispatcher (new code) on the same listening
        socket; this one drains and exits once the new one is ready."""
        if self._state != 'running' or self._successor is not None:
            self.log.warning('SIGUSR2 ignored: %s', 'an upgrade is under way'
                             if self._successor else 'shutting down')
            return
        try:
            process, reader = upgrade.start_successor(self._server.socket)
        except OSError as err:
            self.log.error('SIGUSR2: cannot start a new dispatcher: %s', err)
            return
        self._successor = upgrade.Successor(
            process, reader, time.monotonic() + upgrade.UPGRADE_TIMEOUT)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_successor_news)
        self.log.info('SIGUSR2: started new dispatcher (pid %d); serving '
                      'until it is ready', process.pid)

    def _on_successor_news(self, _fileobj, _mask):
        successor = self._successor
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

    def _give_up_successor(self, why):
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

    def _upgrade_step(self, now):
        successor = self._successor
        if successor is not None and not successor.ready \
                and now >= successor.deadline:
            self._give_up_successor(
                f'not ready within {upgrade.UPGRADE_TIMEOUT:.0f}s')
        self._former_successors = [
            s for s in self._former_successors if not s.reaped()]

    def handle_ttou(self):
        """SIGTTOU: one worker fewer in every pool (never below one)."""
        for pool in self._pools:
            if pool.num_workers > 1:
                pool.resize(pool.num_workers - 1)

    def _readiness_step(self, now):
        """Once every worker and service is up: tell systemd and the
        dispatcher we replace; then keep systemd's watchdog fed."""
        if not self._ready_notified and self._state == 'running' and all(
                h.ready for pool in self._pools for h in pool.workers) \
                and self._services_settled():
            self._ready_notified = True
            self._log_ready()
            if self._predecessor:
                self._gate.release(HOLD_PREDECESSOR)
                if self._pid_file is not None:
                    # only now: a successor that fails leaves it to the old
                    self._pid_file.create(predecessor=self._predecessor)
            self._notify(f'READY=1\nSTATUS=serving on port {self.port}\n'
                         f'MAINPID={os.getpid()}')
            if upgrade.announce_ready():
                self.log.info('ready: the previous dispatcher may go')
        if self._next_watchdog is not None and now >= self._next_watchdog:
            self._next_watchdog = now + self._notifier.watchdog_interval
            self._notify('WATCHDOG=1')

    def _log_ready(self):
        workers = sum(len(pool.workers) for pool in self._pools)
        host = f'[{self.address}]' if ':' in self.address else self.address
        self.log.info('ready: %d workers in %d pools on %s://%s:%d', workers,
                      len(self._pools), 'https' if self.ssl_context
                      else 'http', host, self.port)

    def _notify(self, message):
        error = self._notifier.notify(message) if self._notifier else None
        if error is not None:
            self.log.warning('systemd notification failed: %s', error)

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
        if self._signal_reader is not None:
            signal.set_wakeup_fd(-1)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            self._signal_reader.close()
            self._signal_writer.close()
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
    # become a dispatcher: say so once, and exit with a code that the pool
    # knows not to retry.
    # (multiprocessing marks a spawned child with `_inheriting` while it
    # imports the main module; its own import guard checks the same flag)
    if getattr(multiprocessing.current_process(), '_inheriting', False):
        sys.stderr.write(
            'uhttp.workers: Dispatcher.run() was called while a worker '
            'process imported the main module. Start the dispatcher under '
            "`if __name__ == '__main__':` so workers can import the module "
            'without running it.\n')
        sys.exit(EXIT_APP_ERROR)


def _note_signal(_signum, _frame):
    """Signal handlers only wake the loop (through the wake-up fd)."""
