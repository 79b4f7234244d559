"""The primary worker: one live worker of a pool that holds a lock, for the
in-process duties that must run once (a cache warmer, a scheduler that needs
the worker's state), while every worker of the pool keeps serving requests.

Two scopes:

- 'host' (the default): an flock on a file named after the pool and the
  dispatcher's port (or in `PRIMARY_LOCK_DIR`): one primary per pool per
  host. The other workers wait for the lock in a thread blocked in flock(2),
  so when the primary dies, however it dies, the kernel frees the lock and a
  waiting worker takes it at once: failover needs no timeout.
- 'service': a `RedisLock` renewed at ttl/3: one primary per pool across
  every host sharing the Redis server. The others try the lock every
  min(1 s, ttl/3); failover comes within the ttl of the dead holder's last
  renewal. A live holder can lose it (Redis unreachable for a ttl): the
  worker then stops being primary and `on_primary_lost()` runs.

The election starts only when the application uses it: at the first
`is_primary_worker()` call, or as the worker starts (right after `setup()`)
when its class sets `PRIMARY_LOCK = True`. `on_primary()` runs in the
worker's own loop thread, woken through a pipe watched by the loop's
selector, once per promotion.

This module owns the election: the lock, the thread that waits for it (or
renews it) and the wake-up of the worker loop. It must never run an
application hook outside the worker's loop thread, block the loop (the loop
thread only ever tries a lock without waiting), hold the GIL while waiting,
or take the lock in a process that did not ask for it (a fork drops its copy).
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .locks import FileLock, RedisLock

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from .descriptors import Callback, Descriptor
    from .log import Logger

__all__ = ['PrimaryWorker', 'Election', 'SCOPES', 'primary_lock_path']

SCOPES = ('host', 'service')
REDIS_POLL_MAX = 1.0    # seconds between two tries of a Redis lock held
                        # by another worker (at most; ttl/3 when shorter)


def primary_lock_path(pool_name: str, port: int | None = None,
                      lock_dir: str | None = None) -> str:
    """The lock file of a pool's primary worker: `<lock_dir>/<pool>.primary
    .lock` when a lock directory is given, else `<tmp>/uhttp.workers.primary
    .<port>.<pool>.lock` (two services on one host listen on two ports)."""
    pool = re.sub(r'[^A-Za-z0-9_.-]', '_', pool_name)
    if lock_dir is not None:
        return os.path.join(lock_dir, f'{pool}.primary.lock')
    if port is None:
        raise RuntimeError(
            f'pool {pool_name}: the dispatcher port is unknown (asked before '
            'the worker runs, or outside a WorkerPool): ask from setup() on, '
            'or set PRIMARY_LOCK_DIR')
    return os.path.join(tempfile.gettempdir(),
                        f'uhttp.workers.primary.{port}.{pool}.lock')


class WaitedLock(Protocol):
    """A lock that holds until released (FileLock): the election tries it,
    then waits for it in a thread with `acquire(blocking=True)`."""

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock (waiting only when `blocking`); True when held."""

    def release(self) -> None:
        """Give the lock up (no-op when not held)."""


class RenewedLock(Protocol):
    """A lock that expires unless renewed (RedisLock): the election tries
    it, and renews it every `renew_interval` seconds while held."""

    @property
    def held(self) -> bool:
        """True while this process holds the lock (and it has not expired)."""

    @property
    def renew_interval(self) -> float:
        """Seconds between two renewals (a true value)."""

    def acquire(self) -> bool:
        """Take the lock if it is free, never waiting; True when held."""

    def renew(self) -> bool:
        """Extend the hold; False when the lock was lost."""

    def release(self) -> None:
        """Give the lock up (no-op when not held)."""


# what primary_lock() returns: one with a true `renew_interval` is renewed
PrimaryLock = WaitedLock | RenewedLock


def _expires(lock: PrimaryLock) -> TypeIs[RenewedLock]:
    return bool(getattr(lock, 'renew_interval', None))


class Election:
    """One worker's part in the election of its pool's primary.

    `start()` tries the lock once without waiting (from the worker's loop
    thread), then a daemon thread waits for it (FileLock: one blocking
    flock) or keeps it (a lock with a `renew_interval`: tries and renews).
    Every change is announced by a byte on the pipe whose read end is
    `reader`; the worker's loop watches it and reads `held`.
    """

    def __init__(self, scope: str, lock: PrimaryLock, log: Logger) -> None:
        self.scope = scope
        self.lock = lock
        self.log = log
        self.pid: int | None = os.getpid()
        self._writer: int | None     # None once closed or forked
        self.reader, self._writer = os.pipe()
        os.set_blocking(self.reader, False)
        os.set_blocking(self._writer, False)
        self._wake_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._holding = False
        self._last_error: str | None = None
        renew = getattr(lock, 'renew_interval', None)
        self._poll = min(REDIS_POLL_MAX, renew) if renew else None
        _ELECTIONS.add(self)

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self.pid == os.getpid() and self.lock.held

    def start(self) -> bool:
        """Try the lock now, then start the thread; True when held now."""
        self._holding = self._try()
        if self._holding:
            self._wake()
        if not self._holding or self._poll is not None:
            self._thread = threading.Thread(
                target=self._run, name='uhttp.workers.primary', daemon=True)
            self._thread.start()
        return self._holding

    def drain(self) -> None:
        """Read the pending wake-ups (from the worker's loop)."""
        try:
            while os.read(self.reader, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Stop the thread (a renewing one; one blocked in flock is left to
        the process's exit), give the lock up and close the pipe."""
        self._stop.set()
        thread = self._thread
        if thread is not None and self._poll is not None:
            thread.join(self._poll + 5)
        try:
            self.lock.release()
        except Exception as err:  # pylint: disable=broad-except
            self.log.warning('cannot release the primary lock %r: %s',
                             self.lock, err)
        with self._wake_lock:
            os.close(self.reader)
            if self._writer is not None:    # (None after forget())
                os.close(self._writer)
            self._writer = None
        _ELECTIONS.discard(self)

    def forget(self) -> None:
        """In a forked child: drop the copy of the lock (without unlocking
        it for the parent) and never wake anyone."""
        self.pid = None
        self._stop.set()
        with self._wake_lock:
            self._writer = None     # the parent's pipe: not ours to write
        if isinstance(self.lock, FileLock):
            self.lock.release()     # closes our copy only (not the holder)

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        # signals stay the business of the worker's main thread
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        lock = self.lock
        if _expires(lock):      # (as self._poll is not None)
            self._keep_renewed_lock(lock)
        else:
            self._wait_for_file_lock(lock)

    def _wait_for_file_lock(self, lock: WaitedLock) -> None:
        try:
            lock.acquire(blocking=True)   # flock releases the GIL
        except OSError as err:
            self.log.error('cannot wait for the primary lock %r: %s',
                           lock, err)
            return
        if not self._stop.is_set():
            self._holding = True
            self._wake()

    def _keep_renewed_lock(self, lock: RenewedLock) -> None:
        while True:
            if self._holding:
                if self._stop.wait(lock.renew_interval):
                    return
                if not self._renew(lock):
                    self._holding = False
                    self._wake()
            else:
                if self._try():
                    self._holding = True
                    self._wake()
                elif self._stop.wait(self._poll):
                    return

    def _try(self) -> bool:
        try:
            taken = self.lock.acquire()
        except Exception as err:  # pylint: disable=broad-except
            self._report(f'cannot take the primary lock {self.lock!r}: {err}')
            return False
        self._report(None)
        return taken

    def _renew(self, lock: RenewedLock) -> bool:
        try:
            if lock.renew():
                self._report(None)
                return True
            self.log.warning('primary lock %r was taken over', lock)
            return False
        except Exception as err:  # pylint: disable=broad-except
            self._report(f'cannot renew the primary lock {lock!r}: '
                         f'{err}')
            return lock.held   # still within the ttl: try again

    def _report(self, error: str | None) -> None:
        # one line per change, not one per try while Redis is away
        if error is not None and error != self._last_error:
            self.log.warning('%s', error)
        elif error is None and self._last_error is not None:
            self.log.info('primary lock %r reachable again', self.lock)
        self._last_error = error

    def _wake(self) -> None:
        # under the lock: once close() closed the pipe, its number may name
        # another file
        with self._wake_lock:
            if self._writer is not None:
                try:
                    os.write(self._writer, b'\0')
                except BlockingIOError:
                    pass    # full: a wake-up is pending anyway


_ELECTIONS: weakref.WeakSet[Election] = weakref.WeakSet()


def _forget_elections_in_child() -> None:
    # A child forked by a primary worker would keep the flock alive after
    # the worker died, and no other worker could take over.
    for election in list(_ELECTIONS):
        election.forget()
    _ELECTIONS.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forget_elections_in_child)


class PrimaryWorker:
    """The primary-worker API of Worker (a mixin of it).

    Class attributes (an instance may set them in `__init__` or `setup()`):
    `PRIMARY_LOCK` (True: take part in the election as the worker starts,
    so `on_primary()` runs without anyone asking), `PRIMARY_SCOPE` ('host'
    or 'service'), `PRIMARY_LOCK_DIR` (where the host lock file goes;
    default: the temporary directory, the file named after the dispatcher's
    port), `PRIMARY_REDIS_URL`, `PRIMARY_REDIS_KEY` (formatted with
    `{pool_name}`) and `PRIMARY_TTL` (seconds) for the 'service' scope.
    Override `primary_lock()` to give a lock of your own.
    """

    PRIMARY_LOCK = False
    PRIMARY_SCOPE = 'host'
    PRIMARY_LOCK_DIR: str | None = None
    PRIMARY_REDIS_URL: str | None = None
    PRIMARY_REDIS_KEY = 'uhttp.workers.primary:{pool_name}'
    PRIMARY_TTL = 10.0

    # set by worker_main: the dispatcher's TCP port
    dispatcher_port: int | None = None
    _election: Election | None = None
    _primary_announced = False

    # the Worker's, used here (annotations only: nothing is defined)
    pool_name: str
    log: Logger

    if TYPE_CHECKING:
        def register_reader(self, fd: Descriptor,
                            callback: Callback) -> None:
            """WatchesDescriptors.register_reader of the Worker."""

        def unregister_reader(self, fd: Descriptor) -> None:
            """WatchesDescriptors.unregister_reader of the Worker."""

    def is_primary_worker(self, scope: str | None = None) -> bool:
        """True when this worker is its pool's primary: the one live worker
        holding the pool's lock ('host': per host; 'service': across hosts,
        through Redis). The first call joins the election without waiting
        for the lock (one try; for 'service', one Redis round trip): False
        when another worker holds it; this one takes over when that one
        dies, and `on_primary()` tells. Ask from setup() on (the lock file
        is named after the dispatcher's port, known then). A worker takes
        part in one scope only: asking for another raises ValueError."""
        election = self._election
        if election is None:
            election = self._join_election(scope or self.PRIMARY_SCOPE)
        elif scope is not None and scope != election.scope:
            raise ValueError(
                f'this worker takes part in the {election.scope!r} election; '
                f'it cannot also ask for scope {scope!r}')
        return election.held

    def on_primary(self) -> None:
        """Called in the worker's loop thread each time this worker becomes
        the primary (once per promotion): start the primary's duties here."""

    def on_primary_lost(self) -> None:
        """Called in the worker's loop thread when a live primary lost its
        lock ('service' scope: Redis unreachable for a ttl, or the key taken
        over): stop the primary's duties here."""

    def primary_lock(self, scope: str) -> PrimaryLock:
        """The lock the election uses for `scope`: a FileLock ('host') or a
        RedisLock ('service'). Override to supply your own (an object with
        acquire(), release(), held, and renew()/renew_interval if it
        expires)."""
        if scope == 'host':
            return FileLock(primary_lock_path(
                self.pool_name, self.dispatcher_port, self.PRIMARY_LOCK_DIR))
        if not self.PRIMARY_REDIS_URL:
            raise ValueError(
                f'pool {self.pool_name}: the service-wide primary needs '
                'PRIMARY_REDIS_URL (a redis:// URL)')
        return RedisLock(self.PRIMARY_REDIS_URL,
                         self.PRIMARY_REDIS_KEY.format(
                             pool_name=self.pool_name),
                         self.PRIMARY_TTL)

    # -- used by Worker ---------------------------------------------------------

    def _primary_at_start(self) -> None:
        """After setup(): join the election if the class asks for it."""
        if self.PRIMARY_LOCK and self._election is None:
            self._join_election(self.PRIMARY_SCOPE)

    def _primary_at_exit(self) -> None:
        """The loop ended: give the lock up (the duties ended in teardown)."""
        election, self._election = self._election, None
        if election is not None:
            self.unregister_reader(election.reader)
            election.close()

    def _join_election(self, scope: str) -> Election:
        if scope not in SCOPES:
            raise ValueError(f'scope must be one of {SCOPES}, not {scope!r}')
        election = Election(scope, self.primary_lock(scope), self.log)
        self._election = election
        self.register_reader(election.reader, self._on_election)
        election.start()
        return election

    def _on_election(self, _fd: int) -> None:
        """(In the loop.) The election thread woke us: announce a change."""
        election = self._election
        if election is None:
            return      # ended meanwhile (the loop's last turn)
        election.drain()
        held = election.held
        if held and not self._primary_announced:
            self._primary_announced = True
            self.log.info('pid %d is the primary worker of pool %s (%s)',
                          os.getpid(), self.pool_name, election.scope)
            self._primary_hook(self.on_primary)
        elif not held and self._primary_announced:
            self._primary_announced = False
            self.log.warning('pid %d is no longer the primary worker of pool '
                             '%s', os.getpid(), self.pool_name)
            self._primary_hook(self.on_primary_lost)

    def _primary_hook(self, hook: Callable[[], None]) -> None:
        try:
            hook()
        except Exception:  # pylint: disable=broad-except
            self.log.exception('%s() raised', hook.__name__)
