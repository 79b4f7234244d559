"""Stack dumps: the stacks of every thread of this process, as text.

One mechanism serves both uses: SIGCONT (an operator asks the dispatcher,
which forwards the signal to every worker) and the kill of a stuck worker
(the dispatcher sends the same signal first, so the log shows where the
worker hung). `format_stacks()` is pure Python (sys._current_frames() and
traceback) and takes no lock, so it may run inside a signal handler.

Must never: stop, pause or change the threads it reports on, or raise.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

# the signal asking for a dump (ServerEngine's sigdump uses it too; gunicorn
# gives it no meaning)
DUMP_SIGNAL = signal.SIGCONT


def format_stacks(title: str = 'stack dump') -> str:
    """Every thread's stack, innermost call last, as one text block."""
    frames = sys._current_frames()  # pylint: disable=protected-access
    # threading.enumerate() takes a lock the interrupted code may hold: the
    # registry of running threads is read as it is (a copy is atomic)
    running: dict[int, threading.Thread] = dict(
        getattr(threading, '_active', {}))
    names = {ident: thread.name for ident, thread in running.items()}
    lines = [f'{title} (pid {os.getpid()}, {len(frames)} threads)']
    for ident, frame in frames.items():
        lines.append(f'Thread {names.get(ident, "?")} ({ident}):')
        lines.extend(line.rstrip('\n') for line in
                     traceback.format_stack(frame))
    return '\n'.join(lines)


def write_to_stderr(text: str) -> None:
    """Write `text` to file descriptor 2 without Python's buffered stream
    (whose lock the interrupted code may hold)."""
    data = (text + '\n').encode('utf-8', 'replace')
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass  # no stderr left: nowhere to report it either
