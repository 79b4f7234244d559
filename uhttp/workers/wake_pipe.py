"""A pipe that lets a helper thread wake a selector loop.

The loop watches `fileno()` for reading; a thread that hands it work (in a
deque of its own) calls `wake()`, which writes one byte. The loop then
calls `drain()` and takes the work. This module owns the two descriptors
and nothing else: it never blocks (both ends are non-blocking, and a full
pipe already means a wake-up is pending) and never carries data.
"""

from __future__ import annotations

import os
import threading


class WakePipe:
    """The read end goes into a selector; `wake()` may be called from any
    thread, `drain()` and `close()` from the loop's."""

    def __init__(self) -> None:
        self._reader, writer = os.pipe()
        os.set_blocking(self._reader, False)
        os.set_blocking(writer, False)
        self._writer: int | None = writer
        # close() may run while a thread wakes: the writer's number must
        # not be reused by another file between the check and the write
        self._lock = threading.Lock()

    def fileno(self) -> int:
        """The descriptor to watch for reading."""
        return self._reader

    def wake(self) -> None:
        """Make the read end readable (from any thread; never blocks)."""
        with self._lock:
            if self._writer is None:
                return
            try:
                os.write(self._writer, b'\0')
            except BlockingIOError:
                pass    # full: a wake-up is pending anyway

    def drain(self) -> None:
        """Read every pending wake-up byte (the loop does, then looks at
        its work)."""
        while True:
            try:
                if not os.read(self._reader, 4096):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        """Close both ends; later wake() calls do nothing."""
        with self._lock:
            if self._writer is None:
                return
            os.close(self._writer)
            self._writer = None
        os.close(self._reader)
