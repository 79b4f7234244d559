"""systemd integration: readiness and watchdog notifications, and listening
sockets passed by socket activation.

Everything here is a no-op outside systemd (no NOTIFY_SOCKET, no LISTEN_FDS),
and nothing here may block: a notification is one datagram, sent without
waiting, and a failure to send is reported to the caller's log, never raised.
"""

import os
import socket

LISTEN_FDS_START = 3    # sd_listen_fds(3): passed sockets start at fd 3


class Notifier:
    """Sends sd_notify(3) messages when NOTIFY_SOCKET is set."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get('NOTIFY_SOCKET')
        self.address = None
        self.watchdog_interval = None
        self._socket = None
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
    def enabled(self):
        """True when running under a systemd unit that listens."""
        return self._socket is not None

    def notify(self, message):
        """Send one notification (e.g. 'READY=1'); returns an error or None."""
        if self._socket is None:
            return None
        try:
            self._socket.sendto(message.encode('utf-8'), self.address)
        except OSError as err:
            return err
        return None

    def close(self):
        """Close the notification socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def listen_sockets(environ=None):
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
