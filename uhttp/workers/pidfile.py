"""The pid file: written atomically, refused when it names a live process,
removed on exit (only if it still names us)."""

from __future__ import annotations

import os


class PidFileError(RuntimeError):
    """Another live process owns the pid file."""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class PidFile:
    """A pid file: `create()` when the process starts serving, `remove()`
    when it ends."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def read(self) -> int | None:
        """The pid in the file, or None when missing or unreadable."""
        try:
            with open(self.path, encoding='ascii') as handle:
                return int(handle.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def create(self, predecessor: int | None = None) -> int | None:
        """Write our pid; raise PidFileError if a live process owns it.

        A stale file (its process is gone) is replaced, and so is one naming
        `predecessor` (the dispatcher this one replaces).
        """
        other = self.read()
        if other and other not in (os.getpid(), predecessor) \
                and _running(other):
            raise PidFileError(
                f'pid file {self.path} names running process {other}; '
                'is the service already running?')
        self.pid = os.getpid()
        temporary = f'{self.path}.{self.pid}.tmp'
        with open(temporary, 'w', encoding='ascii') as handle:
            handle.write(f'{self.pid}\n')
        os.replace(temporary, self.path)
        return other

    def remove(self) -> None:
        """Remove the file if it still holds our pid."""
        if self.pid is not None and self.read() == self.pid:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.pid = None
