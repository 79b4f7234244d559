"""Readiness: systemd notifications (READY, WATCHDOG, STOPPING), listening
sockets passed by socket activation, and the moment the service is ready.

The `Readiness` mixin of Dispatcher decides when every worker and service
is first up: then it lets clients in after a predecessor, tells systemd and
the predecessor, and calls `on_start()`; afterwards it keeps systemd's
watchdog fed.

The systemd parts are no-ops outside systemd (no NOTIFY_SOCKET, no
LISTEN_FDS), and nothing here may block: a notification is one datagram,
sent without waiting, and a failure to send is reported to the caller's log,
never raised.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from . import upgrade
from .admission import HOLD_PREDECESSOR

if TYPE_CHECKING:
    from .admission import ListenerGate
    from .log import Logger
    from .pidfile import PidFile
    from .pool import WorkerPool

# the process environment, or a stand-in for it
Environ = MutableMapping[str, str]

LISTEN_FDS_START = 3    # sd_listen_fds(3): passed sockets start at fd 3


class Notifier:
    """Sends sd_notify(3) messages when NOTIFY_SOCKET is set."""

    def __init__(self, environ: Environ | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get('NOTIFY_SOCKET')
        # both set, or neither
        self.address: str | None = None
        self._socket: socket.socket | None = None
        self.watchdog_interval: float | None = None
        if address:
            # '@name' names a socket in the abstract namespace
            self.address = '\0' + address[1:] if address.startswith('@') \
                else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        watchdog = environ.get('WATCHDOG_USEC')
        watchdog_pid = environ.get('WATCHDOG_PID')
        if address and watchdog and watchdog.isdigit() and (
                not watchdog_pid or watchdog_pid == str(os.getpid())):
            # ping at half the timeout, as sd_watchdog_enabled(3) advises
            self.watchdog_interval = int(watchdog) / 2e6

    @property
    def enabled(self) -> bool:
        """True when running under a systemd unit that listens."""
        return self._socket is not None

    def notify(self, message: str) -> OSError | None:
        """Send one notification (e.g. 'READY=1'); returns an error or None."""
        if self._socket is None or self.address is None:
            return None
        try:
            self._socket.sendto(message.encode('utf-8'), self.address)
        except OSError as err:
            return err
        return None

    def close(self) -> None:
        """Close the notification socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def listen_sockets(environ: Environ | None = None) -> list[socket.socket]:
    """Listening sockets systemd passed to this process (socket activation).

    Returns a list of socket objects (empty when none were passed to us).
    The variables are removed so that child processes do not see them.
    """
    environ = os.environ if environ is None else environ
    if environ.get('LISTEN_PID') != str(os.getpid()):
        return []
    try:
        count = int(environ.get('LISTEN_FDS', '0'))
    except ValueError:
        return []
    for name in ('LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'):
        environ.pop(name, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


class Readiness:
    """First readiness and systemd notifications (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    port: int
    _state: str
    _pools: list[WorkerPool]
    _predecessor: int | None
    _pid_file: PidFile | None
    # set by _start(), before the loop runs
    _gate: ListenerGate
    _notifier: Notifier | None
    # the readiness's own
    _ready_notified: bool
    # set only with a notifier that has a watchdog_interval
    _next_watchdog: float | None

    if TYPE_CHECKING:
        @property
        def url(self) -> str: ...

        def _services_settled(self) -> bool: ...

        def lifecycle_hook(self, name: str, *args: object) -> None: ...

    def _readiness_step(self, now: float) -> None:
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
            self.lifecycle_hook('on_start')
        if self._next_watchdog is not None and now >= self._next_watchdog:
            notifier = self._notifier
            assert notifier is not None and \
                notifier.watchdog_interval is not None
            self._next_watchdog = now + notifier.watchdog_interval
            self._notify('WATCHDOG=1')

    def _log_ready(self) -> None:
        workers = sum(len(pool.workers) for pool in self._pools)
        pools = len(self._pools)
        self.log.info('ready: %d worker%s in %d pool%s on %s', workers,
                      '' if workers == 1 else 's', pools,
                      '' if pools == 1 else 's', self.url)

    def _notify(self, message: str) -> None:

        error = self._notifier.notify(message) if self._notifier else None
        if error is not None:
            self.log.warning('systemd notification failed: %s', error)
