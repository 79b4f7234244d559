"""--reload: run the server in a child process, restart it on a change.

Owns the parent process of `uhttp-workers --reload`: it watches source
files (watchfiles when importable, else stat polling), checks that a
changed Python file compiles, and then replaces the whole child (the
dispatcher, its @sync routes and its workers) with a fresh one. A file
that does not compile leaves the old child serving; its error is printed
once per version of the file. SIGINT and SIGTERM are forwarded to the
child, which is then waited for (and killed by PID if it overstays).

Must never: import the application (a syntax error in it must not kill the
reloader), restart the child for a file that does not compile, or signal
any process but its own child.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from .settings import RELOADER_ENV

if TYPE_CHECKING:
    from .cli import Config

POLL_INTERVAL = 0.5     # seconds between two scans of the polling watcher
STOP_GRACE = 5.0        # seconds beyond the shutdown timeout before SIGKILL

# (mtime in ns, size) of a file, as the polling watcher compares them
Stamp = tuple[int, int]


class Watcher(Protocol):
    """What the reloader asks of a watcher (PollingWatcher,
    WatchfilesWatcher)."""

    name: str

    def changes(self) -> set[str]:
        """Paths changed since the last call; waits a little when none
        did."""


def log(message: str) -> None:
    """One line on stderr, where the child's log goes too."""
    sys.stderr.write(f'uhttp-workers --reload: {message}\n')
    sys.stderr.flush()


class FileFilter:
    """Which paths are watched: a name matching an `include` glob, under
    no directory and with no name matching an `exclude` glob."""

    def __init__(self, include: Iterable[str],
                 exclude: Iterable[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)

    def excluded(self, name: str) -> bool:
        """True for a file or directory name never watched."""
        return any(fnmatch.fnmatch(name, glob) for glob in self.exclude)

    def __call__(self, path: str) -> bool:
        parts = os.path.normpath(path).split(os.sep)
        if any(self.excluded(part) for part in parts[1:] if part):
            return False
        return any(fnmatch.fnmatch(parts[-1], glob) for glob in self.include)


class PollingWatcher:
    """Finds changed files by comparing (mtime, size) of every watched file
    between scans."""

    name = 'stat polling'

    def __init__(self, directories: Sequence[str], file_filter: FileFilter,
                 stop: threading.Event) -> None:
        self.directories = directories
        self.filter = file_filter
        self.stop = stop
        self._seen = self._scan()

    def _scan(self) -> dict[str, Stamp]:
        state: dict[str, Stamp] = {}
        for directory in self.directories:
            for root, dirs, files in os.walk(directory):
                dirs[:] = [d for d in dirs if not self.filter.excluded(d)]
                for name in files:
                    path = os.path.join(root, name)
                    if not self.filter(path):
                        continue
                    try:
                        info = os.stat(path)
                    except FileNotFoundError:
                        continue
                    state[path] = (info.st_mtime_ns, info.st_size)
        return state

    def changes(self) -> set[str]:
        """Paths created, changed or removed since the last call; waits up
        to POLL_INTERVAL (less when stopped)."""
        self.stop.wait(POLL_INTERVAL)
        current = self._scan()
        changed = {path for path, state in current.items()
                   if self._seen.get(path) != state}
        changed |= set(self._seen) - set(current)
        self._seen = current
        return changed


class WatchfilesWatcher:
    """Changed files as the watchfiles package reports them."""

    name = 'watchfiles'

    def __init__(self, directories: Sequence[str],
                 file_filter: Callable[[str], bool],
                 stop: threading.Event) -> None:
        import watchfiles  # pylint: disable=import-outside-toplevel
        # sets of (watchfiles.Change, path)
        self._events: Iterator[set[tuple[Any, str]]] = watchfiles.watch(
            *directories, watch_filter=lambda _change, path: file_filter(path),
            stop_event=stop, yield_on_timeout=True, debounce=200,
            rust_timeout=int(POLL_INTERVAL * 1000), raise_interrupt=False)

    def changes(self) -> set[str]:
        """Paths changed since the last call; waits up to POLL_INTERVAL."""
        try:
            return {path for _change, path in next(self._events)}
        except StopIteration:
            return set()


def make_watcher(directories: Sequence[str], file_filter: FileFilter,
                 stop: threading.Event,
                 force_polling: bool = False) -> Watcher:
    """watchfiles when it can be imported (and polling is not forced)."""
    if not force_polling:
        try:
            return WatchfilesWatcher(directories, file_filter, stop)
        except ImportError:
            pass    # the fallback is announced by its name in the log
    return PollingWatcher(directories, file_filter, stop)


def compile_error(path: str) -> str | None:
    """The one-paragraph error of a Python file that does not compile, or
    None (also for files that are not Python or no longer exist)."""
    if not path.endswith('.py'):
        return None
    try:
        with open(path, 'rb') as handle:
            source = handle.read()
    except OSError:
        return None
    try:
        compile(source, path, 'exec', dont_inherit=True)
    except (SyntaxError, ValueError) as err:
        if isinstance(err, SyntaxError):
            where = f'{err.filename}:{err.lineno}'
            return f'{where}: {type(err).__name__}: {err.msg}'
        return f'{path}: {err}'
    return None


class Reloader:
    """The parent process: one child server at a time."""

    def __init__(self, command: Sequence[str], watcher: Watcher,
                 stop: threading.Event, stop_timeout: float) -> None:
        self.command = command
        self.watcher = watcher
        self.stop = stop
        self.stop_timeout = stop_timeout
        self.child: subprocess.Popen[bytes] | None = None
        # path -> (the error already printed for it, the file's stamp then)
        self.broken: dict[str, tuple[str, Stamp | None]] = {}
        self._signal: int | None = None

    def start_child(self) -> None:
        """Start a fresh server process."""
        env = dict(os.environ, **{RELOADER_ENV: str(os.getpid())})
        # a session of its own: a terminal's ^C reaches the reloader only,
        # which forwards it once
        self.child = subprocess.Popen(  # pylint: disable=consider-using-with
            self.command, env=env, start_new_session=True)

    def stop_child(self, signum: int = signal.SIGTERM) -> None:
        """Signal the child and wait for it; SIGKILL if it overstays."""
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signum)
        try:
            child.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log(f'server (pid {child.pid}) did not stop in '
                f'{self.stop_timeout:.0f}s: killing it')
            child.kill()
            child.wait()

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """SIGINT/SIGTERM: stop watching; the loop stops the child."""
        self._signal = signum
        self.stop.set()

    def compiles(self, changed: Iterable[str]) -> bool:
        """False while a watched Python file does not compile; each error
        is printed once per version of its file."""
        ok = True
        for path in sorted(set(changed) | set(self.broken)):
            error = compile_error(path)
            if error is None:
                self.broken.pop(path, None)
                continue
            ok = False
            if self.broken.get(path) != (error, _stamp(path)):
                self.broken[path] = (error, _stamp(path))
                log(f'{error}\n  not restarting: the server keeps running '
                    'the code it has')
        return ok

    def loop(self) -> int:
        """Watch and restart until a signal; returns the exit status."""
        self.start_child()
        exited: int | None = None
        while not self.stop.is_set():
            changed = self.watcher.changes()
            if self.stop.is_set():
                break
            if self.child is not None and self.child.poll() is not None \
                    and exited != self.child.pid:
                exited = self.child.pid
                log(f'server exited with status {self.child.returncode}; '
                    'waiting for a change to start it again')
            if not changed or not self.compiles(changed):
                continue
            names = ', '.join(sorted(os.path.relpath(p) for p in changed))
            log(f'{names} changed: restarting the server')
            self.stop_child()
            self.start_child()
        status = 0
        if self.child is not None and self.child.poll() is not None:
            status = self.child.returncode
        self.stop_child(self._signal or signal.SIGTERM)
        return status


def _stamp(path: str) -> Stamp | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size


def run(config: Config, argv: Sequence[str]) -> int:
    """Run `python -m uhttp.workers ARGV` under the reloader (from cli)."""
    directories = [os.path.abspath(d) for d in
                   (config.get('reload_dir') or [config.get('app_dir')])]
    for directory in directories:
        if not os.path.isdir(directory):
            log(f'{directory} is not a directory')
            return 1
    file_filter = FileFilter(config.get('reload_include'),
                             config.get('reload_exclude'))
    stop = threading.Event()
    watcher = make_watcher(directories, file_filter, stop,
                           config.get('reload_poll'))
    shutdown = config.values.get('shutdown_timeout', 10)
    reloader = Reloader([sys.executable, '-m', 'uhttp.workers', *argv],
                        watcher, stop, shutdown + STOP_GRACE)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, reloader.on_signal)
    log(f'watching {", ".join(directories)} for '
        f'{" ".join(file_filter.include)} with {watcher.name}'
        + ('' if watcher.name == 'watchfiles' else
           ' (pip install uhttp-workers[reload] for watchfiles)'))
    try:
        return reloader.loop()
    finally:
        reloader.stop_child()
