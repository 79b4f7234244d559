"""Worker stdout and stderr, captured into the dispatcher's log.

A `print()` in a handler, a traceback written by a library, or a C
extension writing to descriptor 2 would otherwise go to wherever the
dispatcher's own stdout/stderr point (often nowhere, under a daemon or a
service manager), untagged and interleaved. With capture, each worker gets
one pipe per stream: the write end becomes its descriptor 1 or 2
before any of the worker's code runs (`redirect_output`, in the worker),
and the dispatcher reads the read end in its selector loop
(`OutputCapture`) and logs every line tagged with the worker's name:
`[Items[2]] stdout: ...` at INFO, `[Items[2]] stderr: ...` at WARNING.

Must never block the dispatcher: the read ends are non-blocking, one read
per readiness event, and a line is cut at MAX_LINE bytes. Pipes, not
sockets: a worker holds no socket but its channel.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TextIO

from .log import LOG_INFO, LOG_WARNING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ['MAX_LINE', 'READ_SIZE', 'OutputCapture', 'WorkerOutput',
           'redirect_output']

MAX_LINE = 16 * 1024    # bytes; a longer line is logged in pieces this long
READ_SIZE = 64 * 1024   # bytes read per readiness event
DRAIN_READS = 64        # reads per stream at most when the dispatcher ends

# (label, level): what each captured descriptor is called and logged at
_STREAMS = (('stdout', LOG_INFO), ('stderr', LOG_WARNING))

# where captured lines go: emit(worker name, level, message)
Emit = Callable[[str, int, str], object]


class _CapturedStream:
    """The dispatcher's end of one worker stream and its unfinished line."""

    def __init__(self, name: str, label: str, level: int, pipe: Connection,
                 emit: Emit) -> None:
        self.name = name
        self.label = label
        self.level = level
        self.pipe = pipe        # a multiprocessing Connection (read end)
        self.fd = pipe.fileno()
        os.set_blocking(self.fd, False)
        self._emit = emit
        self._partial = bytearray()

    def read(self) -> bool:
        """Read what is there (once); log the complete lines. Returns False
        at end of file (every holder of the write end closed it)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b''
        if not data:
            self.flush()
            return False
        self._take(data)
        return True

    def _take(self, data: bytes) -> None:
        partial = self._partial
        partial += data
        start = 0
        while True:
            end = partial.find(b'\n', start)
            if end < 0:
                break
            self._log_line(partial[start:end])
            start = end + 1
        del partial[:start]
        while len(partial) >= MAX_LINE:
            self._log_line(partial[:MAX_LINE])
            del partial[:MAX_LINE]

    def flush(self) -> None:
        """Log the unfinished line, if any (the writer is gone)."""
        if self._partial:
            self._log_line(self._partial)
            self._partial = bytearray()

    def _log_line(self, raw: bytes | bytearray) -> None:
        for start in range(0, max(len(raw), 1), MAX_LINE):
            text = bytes(raw[start:start + MAX_LINE]).decode(
                'utf-8', 'replace').rstrip('\r')
            self._emit(self.name, self.level, f'{self.label}: {text}')


class WorkerOutput:
    """The pipes of one worker being started: `worker_ends` (write ends,
    multiprocessing Connections, so that they reach a spawned worker too)
    go to the worker process as its stdout and stderr; the read ends stay
    in the dispatcher."""

    def __init__(self, capture: OutputCapture, name: str) -> None:
        self._capture = capture
        self.name = name
        self.worker_ends: list[Connection] = []
        self._streams: list[_CapturedStream] = []
        for label, level in _STREAMS:
            ours, theirs = multiprocessing.Pipe(duplex=False)
            self.worker_ends.append(theirs)
            self._streams.append(
                _CapturedStream(name, label, level, ours, capture.emit))

    def started(self) -> None:
        """The worker process has its copies: close ours of its ends and
        start reading the others."""
        for end in self.worker_ends:
            end.close()
        self.worker_ends = []
        for stream in self._streams:
            self._capture.watch(stream)

    def close(self) -> None:
        """The worker could not be started: close every end."""
        for end in self.worker_ends:
            end.close()
        for stream in self._streams:
            stream.pipe.close()
        self.worker_ends = []
        self._streams = []


class OutputCapture:
    """The dispatcher's side: the read ends of every worker's streams,
    registered in its selector; lines go to `emit(name, level, message)`."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._selector: selectors.BaseSelector | None = None
        self._streams: set[_CapturedStream] = set()

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Use `selector` (the dispatcher's loop) from now on."""
        self._selector = selector

    def open(self, name: str) -> WorkerOutput:
        """A WorkerOutput for the worker called `name` (e.g. 'Items[2]')."""
        return WorkerOutput(self, name)

    def watch(self, stream: _CapturedStream) -> None:
        """Read `stream` whenever it is readable."""
        assert self._selector is not None, 'attach() a selector first'
        self._streams.add(stream)
        self._selector.register(stream.fd, selectors.EVENT_READ,
                                lambda _f, _m: self._readable(stream))

    def _readable(self, stream: _CapturedStream) -> None:
        if not stream.read():
            self._forget(stream)

    def _forget(self, stream: _CapturedStream) -> None:
        self._streams.discard(stream)
        assert self._selector is not None   # (watch() registered it)
        try:
            self._selector.unregister(stream.fd)
        except (KeyError, ValueError, RuntimeError):
            pass    # the selector is closed already (the dispatcher ends)
        stream.pipe.close()

    @property
    def stream_count(self) -> int:
        """Worker streams still open (two per worker with capture)."""
        return len(self._streams)

    def close(self) -> None:
        """Log what the workers wrote last (a bounded number of reads per
        stream, never waiting), then close every stream."""
        for stream in list(self._streams):
            for _ in range(DRAIN_READS):
                try:
                    data = os.read(stream.fd, READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                stream._take(data)  # pylint: disable=protected-access
            stream.flush()
            self._forget(stream)


def redirect_output(worker_ends: Iterable[Connection]) -> None:
    """In a worker, before its code runs: make `worker_ends` (the stdout
    and stderr pipe Connections) its descriptors 1 and 2, so that all that
    is written there, by Python or C code, reaches the dispatcher's log; make
    `sys.stdout`/`sys.stderr` line buffered, so a print() is logged when
    its line ends rather than when a buffer fills."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass    # the old destination is gone: nothing to keep
    for fd, end in zip((1, 2), worker_ends):
        os.dup2(end.fileno(), fd)
        end.close()
    for name, fd in (('stdout', 1), ('stderr', 2)):
        stream = getattr(sys, name)
        if stream is not None and hasattr(stream, 'reconfigure') \
                and _fileno(stream) == fd:
            stream.reconfigure(line_buffering=True)
        else:
            setattr(sys, name, open(  # pylint: disable=consider-using-with
                fd, 'w', buffering=1, encoding='utf-8',
                errors='backslashreplace', closefd=False))


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None
