"""The dispatcher's signals: which ones it handles, and what each one does.

A mixin of Dispatcher. Signal handlers only wake the loop through a wake-up
socket; the loop then calls `handle_<signal name>()`, where the work
happens, outside any handler. The work itself belongs elsewhere (shutdown,
upgrade, pools): this module only maps a signal to it.

Must never do work inside a signal handler.

| signal  | dispatcher                                        |
|---------|---------------------------------------------------|
| TERM    | graceful shutdown                                 |
| INT     | graceful shutdown; a second one: immediate        |
| QUIT    | immediate shutdown                                |
| HUP     | reload configuration, rolling restart of workers  |
| USR1    | reopen the log file                               |
| USR2    | start a new dispatcher (new code), then drain     |
| TTIN    | one more worker in every pool                     |
| TTOU    | one worker fewer in every pool                    |
| CONT    | log the stacks of the dispatcher and every worker |
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING

from . import stackdump

if TYPE_CHECKING:
    from .log import Logger, LogOutput
    from .pool import WorkerPool

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                   signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGTTIN, signal.SIGTTOU, stackdump.DUMP_SIGNAL)


def _forget_dispatcher_signals() -> None:
    # runs in any child forked from the dispatcher, before anything else:
    # a signal arriving then must not wake (or be handled by) the dispatcher
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        return  # forked from another thread: it never had the wake-up fd
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=_forget_dispatcher_signals)


def _note_signal(_signum: int, _frame: FrameType | None) -> None:
    """Signal handlers only wake the loop (through the wake-up fd)."""


class Signals:
    """Signal installation and the signal map (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    dump_stacks: bool
    _state: str
    _pools: list[WorkerPool]
    _log_output: LogOutput
    _selector: selectors.BaseSelector
    # set by _install_signals (both, or neither)
    _signal_reader: socket.socket | None
    _signal_writer: socket.socket | None

    if TYPE_CHECKING:
        def _begin_drain(self) -> None: ...

        def _stop_now(self) -> None: ...

        def reload(self) -> None: ...

        def restart_workers(self, graceful: bool = True) -> None: ...

    def _handled_signals(self) -> tuple[int, ...]:
        if self.dump_stacks:
            return HANDLED_SIGNALS
        return tuple(s for s in HANDLED_SIGNALS
                     if s != stackdump.DUMP_SIGNAL)

    def _install_signals(self) -> None:
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
        for signum in self._handled_signals():
            signal.signal(signum, _note_signal)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_signal_readable)

    def _restore_signals(self) -> None:
        reader, writer = self._signal_reader, self._signal_writer
        if reader is None or writer is None:   # (set together)
            return
        signal.set_wakeup_fd(-1)
        for signum in self._handled_signals():
            signal.signal(signum, signal.SIG_DFL)
        reader.close()
        writer.close()

    def _on_signal_readable(self, _fileobj: object, _mask: int) -> None:
        # registered by _install_signals, once the reader is set
        reader = self._signal_reader
        assert reader is not None
        try:
            data = reader.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name[3:].lower()
            handler = getattr(self, f'handle_{name}', None)
            if handler is not None:
                handler()

    def handle_term(self) -> None:
        """SIGTERM: graceful shutdown."""
        self.log.info('SIGTERM: graceful shutdown')
        self._begin_drain()

    def handle_int(self) -> None:
        """SIGINT (Ctrl-C): graceful shutdown; a second one stops at once."""
        if self._state != 'running':
            self.log.warning('SIGINT again: stopping now')
            self._stop_now()
            return
        self.log.info('SIGINT: graceful shutdown')
        self._begin_drain()

    def handle_quit(self) -> None:
        """SIGQUIT: immediate shutdown."""
        self.log.warning('SIGQUIT: stopping now')
        self._stop_now()

    def handle_hup(self) -> None:
        """SIGHUP: reload configuration, then a rolling restart of workers."""
        self.log.info('SIGHUP: reload and rolling restart of the workers')
        self.reload()
        self.restart_workers(graceful=True)

    def handle_usr1(self) -> None:
        """SIGUSR1: reopen the log file (after logrotate moved it)."""
        self._log_output.reopen()
        self.log.info('SIGUSR1: log file reopened')

    def handle_ttin(self) -> None:
        """SIGTTIN: one more worker in every pool."""
        for pool in self._pools:
            pool.resize(pool.num_workers + 1)

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer in every pool (never below one)."""
        for pool in self._pools:
            if pool.num_workers > 1:
                pool.resize(pool.num_workers - 1)

    def handle_cont(self) -> None:

        """SIGCONT: log the stacks of every thread, here and in every worker
        (the signal is passed on to each by pid); nothing stops."""
        if not self.dump_stacks:
            return
        self.log.warning('%s', stackdump.format_stacks(
            f'stacks of dispatcher {self.log.name}'))
        for pool in self._pools:
            for handle in pool.workers:
                if handle.pid is not None and not handle.exited:
                    try:
                        os.kill(handle.pid, stackdump.DUMP_SIGNAL)
                    except ProcessLookupError:
                        pass
