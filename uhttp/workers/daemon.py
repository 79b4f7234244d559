"""Daemon mode (Dispatcher option `daemon=True`) for hosts without a
service manager: the dispatcher leaves the terminal and runs on in the
background.

`Daemon.detach()` is called once the port is bound (a bind error is still
printed on the terminal, exit 1): a first fork lets the launching process
wait, `setsid()` leaves the terminal's session, a second fork makes sure
the daemon can never take a terminal again; then it changes to `chdir`
('/' by default, so it holds no mount busy) and points stdin, stdout and
stderr at /dev/null (its log goes to `log_file`). The launching process
waits on a pipe until the daemon says it started (exit 0) or failed
(its message on stderr, exit 1), so a failure after detaching, such as a
privilege drop refused, is not silent.

Must never return in the launching process, nor run anything there after
the fork but that wait (it exits with os._exit: no cleanup of what is now
the daemon's, like the pid file).
"""

from __future__ import annotations

import os
import sys

__all__ = ['Daemon']

_OK = b'ok\n'


class Daemon:
    """Detach from the terminal; `started()` or `failed()` tell the
    launching process how it went."""

    def __init__(self, chdir: str | os.PathLike[str] | None = '/') -> None:
        self.chdir = chdir
        self.launcher_pid: int | None = None
        self._report_fd: int | None = None

    def detach(self) -> None:
        """Become the daemon: returns only in the daemon process."""
        self.launcher_pid = os.getpid()
        reader, writer = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        if os.fork() > 0:
            os.close(writer)
            os._exit(_wait_for_daemon(reader))
        os.close(reader)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        if self.chdir is not None:
            os.chdir(self.chdir)
        _to_dev_null()
        self._report_fd = writer

    def started(self) -> None:
        """Tell the launching process that the daemon runs: it exits 0."""
        self._report(_OK)

    def failed(self, message: str) -> None:
        """Tell the launching process why the daemon stops: it prints
        `message` and exits 1."""
        self._report(f'{message}\n'.encode('utf-8', 'replace'))

    def _report(self, data: bytes) -> None:
        if self._report_fd is None:
            return
        fd, self._report_fd = self._report_fd, None
        try:
            os.write(fd, data)
        except OSError:
            pass    # the launcher was killed: no one to tell
        finally:
            os.close(fd)


def _wait_for_daemon(reader: int) -> int:
    """In the launching process: the exit status, from the daemon's word
    (a line) or from the pipe closing without one."""
    received = b''
    while b'\n' not in received:
        try:
            chunk = os.read(reader, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        received += chunk
    if received == _OK:
        return 0
    message = received.decode('utf-8', 'replace').strip() or \
        'the daemon ended before it started; see its log file'
    try:
        sys.stderr.write(message + '\n')
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return 1


def _to_dev_null() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
