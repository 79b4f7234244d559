"""A listening Unix-domain socket for `address='unix:/path'`.

Owns the socket file: binding it (a stale file left by a dead server is
replaced, a file a live server listens on is refused), and removing it at
exit, only if the file is still the one this process bound. Must never
remove a file it did not bind, nor block: the probe of an existing file is
a non-blocking connect().
"""

from __future__ import annotations

import errno
import os
import socket
import stat

PREFIX = 'unix:'


def unix_path(address: object) -> str | None:
    """The path of a `unix:/path` address, or None for an IP address."""
    if isinstance(address, str) and address.startswith(PREFIX):
        return address[len(PREFIX):]
    return None


def _in_use(path: str) -> bool:
    """True when a process accepts connections on the socket file `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (BlockingIOError, InterruptedError):
        return True     # listening, its backlog full: alive all the same
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    finally:
        probe.close()
    return True


def _replace_stale(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, 'File exists and is not a socket')
    if _in_use(path):
        raise OSError(errno.EADDRINUSE, 'Address already in use')
    os.unlink(path)


class UnixListener:
    """The listening socket on `path`: `bind()` it, `remove()` its file."""

    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("a Unix socket address needs a path: "
                             "'unix:/run/app.sock'")
        self.path = os.path.abspath(path)
        # (st_dev, st_ino) of the file we bound
        self._identity: tuple[int, int] | None = None

    def bind(self, backlog: int) -> socket.socket:
        """A non-blocking listening socket on the path (OSError if not)."""
        _replace_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(backlog)
            sock.setblocking(False)
            info = os.stat(self.path)
        except OSError:
            sock.close()
            raise
        self._identity = (info.st_dev, info.st_ino)
        return sock

    def remove(self) -> None:
        """Remove the socket file if it is still the one we bound."""
        if self._identity is None:
            return
        identity, self._identity = self._identity, None
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def adopt(self) -> None:

        """Take over the file of a socket inherited from the dispatcher we
        replace (SIGUSR2): it is ours to remove at exit from now on."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        self._identity = (info.st_dev, info.st_ino)
