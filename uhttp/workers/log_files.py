"""Where the dispatcher's log lines go: a stream, a file, a rotated file.

Owns the choice made by the Dispatcher options `log_file`,
`log_rotate_size`, `log_rotate_age` and `log_rotate_backups`, and the file
objects behind it. Only the dispatcher writes its log (workers send their
records and their output to it), so rotation has a single writer and needs
no lock between processes.

Must never format a record (log.LogOutput does that) nor write from any
process but the dispatcher.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import TextIO, TypeAlias

from .log import LogOutput, LogStream

__all__ = ['STDOUT', 'DEFAULT_BACKUPS', 'LogFile', 'RotatingLogFile',
           'rotation_schedule', 'log_output', 'check_options']

STDOUT = '-'
DEFAULT_BACKUPS = 7

# names accepted by log_rotate_age -> TimedRotatingFileHandler's `when`
# a log file's path
LogPath: TypeAlias = str | os.PathLike[str]
# log_rotate_age: a name of _AGE_NAMES or a number of seconds
Age: TypeAlias = str | float

_AGE_NAMES = {
    'midnight': 'midnight', 'daily': 'midnight', 'hourly': 'H',
    'weekly': 'W0',
}


def rotation_schedule(age: object) -> tuple[str, int]:
    """`(when, interval)` for TimedRotatingFileHandler from a
    `log_rotate_age`: 'daily'/'midnight', 'hourly', 'weekly' (Monday), or a
    number of seconds (> 0). Anything else is a ValueError."""
    if isinstance(age, str):
        when = _AGE_NAMES.get(age.strip().lower())
        if when is None:
            raise ValueError(
                f'log_rotate_age={age!r}: use one of '
                f'{", ".join(map(repr, _AGE_NAMES))} or a number of seconds')
        return when, 1
    if isinstance(age, bool) or not isinstance(age, (int, float)) or age <= 0:
        raise ValueError(f'log_rotate_age={age!r}: use a name or a positive '
                         'number of seconds')
    return 'S', max(1, int(age))


def check_options(log_file: LogPath | None, rotate_size: int | None,
                  rotate_age: Age | None, backups: int) -> None:
    """Raise ValueError for a combination of log options that cannot work
    (rotation without a file, both kinds of rotation, bad numbers)."""
    rotating = rotate_size is not None or rotate_age is not None
    if rotating and (not log_file or log_file == STDOUT):
        raise ValueError('log_rotate_size and log_rotate_age need a '
                         'log_file (a path)')
    if rotate_size is not None and rotate_age is not None:
        raise ValueError('give log_rotate_size or log_rotate_age, not both')
    if rotate_size is not None and (
            isinstance(rotate_size, bool) or not isinstance(rotate_size, int)
            or rotate_size <= 0):
        raise ValueError(f'log_rotate_size={rotate_size!r}: a number of '
                         'bytes above 0')
    if rotate_age is not None:
        rotation_schedule(rotate_age)
    if isinstance(backups, bool) or not isinstance(backups, int) \
            or backups < 0:
        raise ValueError(f'log_rotate_backups={backups!r}: a number >= 0')


class LogFile:
    """A log file opened for appending, line buffered; `reopen()` opens the
    path again (after logrotate moved it). The path is made absolute at
    once, so a later chdir (daemon mode) does not move the log."""

    def __init__(self, path: LogPath) -> None:
        self.path = os.path.abspath(path)
        self._stream = self._open()

    def _open(self) -> TextIO:
        return open(self.path, 'a', buffering=1, encoding='utf-8')  # pylint: disable=consider-using-with

    def write(self, text: str) -> None:
        """Append `text` (one or more complete lines)."""
        self._stream.write(text)

    def flush(self) -> None:
        """Flush to the file."""
        self._stream.flush()

    def reopen(self) -> None:
        """Open the path again; the old file is closed only once the new one
        is open (an OSError leaves the old one in use)."""
        fresh = self._open()
        old, self._stream = self._stream, fresh
        old.close()

    def fileno(self) -> int:
        """The descriptor of the open file."""
        return self._stream.fileno()

    def close(self) -> None:
        """Close the file."""
        self._stream.close()

    @staticmethod
    def isatty() -> bool:
        """A log file is never a terminal (no colours)."""
        return False


class RotatingLogFile(LogFile):
    """A log file rotated by size (`max_bytes`) or by age (`age`, see
    rotation_schedule), keeping `backups` old files (name.1, name.2, ... by
    size; name.<date> by age), through the stdlib rotating handlers.

    The handlers only decide when to rotate and do the renaming; this class
    writes the text itself, so that an error reaches the caller instead of
    logging's handleError() printing to stderr.
    """

    def __init__(self, path: LogPath, max_bytes: int | None = None,
                 age: Age | None = None,
                 backups: int = DEFAULT_BACKUPS) -> None:
        # pylint: disable=super-init-not-called
        # (the handler owns the stream)
        self.path = os.path.abspath(path)
        self._handler: (logging.handlers.RotatingFileHandler
                        | logging.handlers.TimedRotatingFileHandler)
        if max_bytes is not None:
            self._handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=max_bytes, backupCount=backups,
                encoding='utf-8')
        else:
            when, interval = rotation_schedule(age)
            self._handler = logging.handlers.TimedRotatingFileHandler(
                self.path, when=when, interval=interval, backupCount=backups,
                encoding='utf-8')

    # (a property over LogFile's attribute: the methods of LogFile that
    # assign it are all overridden here)
    @property
    def _stream(self) -> TextIO | None:  # type: ignore[override]
        return self._handler.stream

    def write(self, text: str) -> None:
        """Rotate first if `text` would pass the size or the age limit,
        then append it; a multi-line record is never split between files."""
        record = logging.makeLogRecord({'msg': text.rstrip('\n')})
        if self._handler.shouldRollover(record):
            self._handler.doRollover()
        if self._handler.stream is None:    # a failed rollover left none
            self._handler.stream = self._handler._open()  # pylint: disable=protected-access
        self._handler.stream.write(text)

    def flush(self) -> None:
        """Flush to the file."""
        if self._handler.stream is not None:
            self._handler.stream.flush()

    def reopen(self) -> None:
        """Open the path again (an outside tool moved the file)."""
        fresh = self._handler._open()  # pylint: disable=protected-access
        old, self._handler.stream = self._handler.stream, fresh
        if old is not None:
            old.close()

    def fileno(self) -> int:
        """The descriptor of the open file."""
        # (no stream after a failed rollover, until the next write: the
        # AttributeError says so)
        return self._handler.stream.fileno()  # type: ignore[union-attr]

    def close(self) -> None:
        """Close the file."""
        self._handler.close()


def open_log_file(path: LogPath, rotate_size: int | None = None,
                  rotate_age: Age | None = None,
                  backups: int = DEFAULT_BACKUPS) -> LogFile:
    """A LogFile, or a RotatingLogFile when a rotation option is given."""
    if rotate_size is None and rotate_age is None:
        return LogFile(path)
    return RotatingLogFile(path, rotate_size, rotate_age, backups)


def log_output(log_file: LogPath | None = None,
               rotate_size: int | None = None, rotate_age: Age | None = None,
               backups: int = DEFAULT_BACKUPS,
               stream: LogStream | None = None) -> LogOutput:
    """The LogOutput of a dispatcher: `log_file` None writes to `stream`
    (stderr by default), '-' to stdout, a path to that file (rotated when
    asked), in plain lines."""
    check_options(log_file, rotate_size, rotate_age, backups)
    if not log_file:
        return LogOutput(stream or sys.stderr)
    if log_file == STDOUT:
        return LogOutput(sys.stdout)
    return LogOutput(open_log_file(log_file, rotate_size, rotate_age,
                                   backups), style='plain')


def log_file_of(output: LogOutput) -> LogFile | None:
    """The LogFile behind a LogOutput, or None when it writes to a stream
    (for changing the owner of the file before dropping privileges)."""
    stream = getattr(output, 'stream', None)
    return stream if isinstance(stream, LogFile) else None
