"""WorkerPool: one kind of worker, its processes, its backlog, its health.

Lives in the dispatcher process. A pool starts its workers (spawned, so each
imports the application afresh and inherits no client socket), hands each
request to the least busy live worker, keeps the rest in its backlog, and
replaces workers that die or stop beating. Too many restarts in a window
mark the pool degraded (its requests get 503) until a worker starts healthy
again, tried with an exponential back-off (or every `recovery_interval`).

Must never: block, wait for a worker, or decide what a client is told; it
reports events to the dispatcher, which owns the sockets.
"""

from __future__ import annotations

import collections
import gc
import inspect
import multiprocessing
import multiprocessing.process
import os
import pickle
import random
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from . import messages
from .channel import Channel, ChannelClosed, channel_pair
from .log import Logger
from .messages import Message
from .request import Data, Request, normalize_headers
from .options import worker_keywords
from .routing import PrefixMatcher
from .pending import ASSIGNED, QUEUED, Pending
from .worker import (
    APP_ERROR_MESSAGE, EXIT_APP_ERROR, EXIT_PARENT_GONE, EXIT_SETUP_FAILED,
    TRACEBACK_SIGNAL,
    build_router, worker_main)
from .worker_handle import WorkerHandle

if TYPE_CHECKING:
    from .output_capture import WorkerOutput
    from .service import Service
    from .worker import Worker

MEMORY_CHECK_EVERY = 1.0    # seconds between two RSS readings of workers
BACKOFF_FIRST = 1.0     # seconds before the first retry of a degraded pool
BACKOFF_MAX = 30.0      # cap of the doubling back-off
QUEUE_WARNING_EVERY = 10.0  # seconds between two "queue is long" warnings
# A worker slot whose process lived this long before it crashed starts its
# restart_worker_interval back-off from the beginning again.
CRASH_STREAK_RESET = 60.0

# why a worker is recycled: the `reason` of Dispatcher.on_worker_recycle()
RECYCLE_MAX_REQUESTS = 'max_requests'
RECYCLE_MAX_MEMORY = 'max_memory'
RECYCLE_ROLLING_RESTART = 'rolling_restart'
# A request prefetched behind one that has run this long is taken back
# (and no more are prefetched behind it), even while no sibling is idle.
REVOKE_AFTER = 0.1

# uhttp-workers 1.x's control messages, still understood by broadcast()
CTL_STOP = 'STOP'
CTL_CONFIG = 'CONFIG'
CTL_DISCONNECT = 'DISCONNECT'


class _DefaultCount(int):
    """The default of `num_workers` (1): an int that the command line's
    --workers can tell from a count the application chose itself."""

    __slots__ = ()


DEFAULT_NUM_WORKERS = _DefaultCount(1)


class PoolHost(Protocol):
    """What a pool uses of the dispatcher that started it: its logger,
    its state, and the calls by which the pool reports events."""

    @property
    def log(self) -> Logger:
        """The dispatcher's logger."""

    @property
    def accepts_workers(self) -> bool:
        """True while new worker processes may be started."""

    @property
    def is_running(self) -> bool:
        """True while the dispatcher serves."""

    @property
    def services(self) -> Mapping[str, Service]:
        """The services the workers reach, by name."""

    def worker_output(self, handle: WorkerHandle) -> WorkerOutput | None:
        """The capture of the output of the worker being started, or None
        (it inherits the dispatcher's)."""

    def lifecycle_hook(self, name: str, *args: Any) -> None:
        """Call the application's hook `name`."""

    def worker_started(self, pool: WorkerPool, handle: WorkerHandle) -> None:
        """A worker process was started."""

    def watch_worker(self, handle: WorkerHandle) -> None:
        """Watch a started worker's channel and exit."""

    def worker_reaped(self, handle: WorkerHandle) -> None:
        """A worker's exit status is known."""

    def wants_flush(self, handle: WorkerHandle) -> None:
        """A message was queued for this worker."""

    def pool_degraded(self, pool: WorkerPool) -> None:
        """`pool` just became degraded."""

    def pool_failed_to_start(self, pool: WorkerPool, reason: str) -> None:
        """Every worker of `pool` ended before any was ready."""

    def submit_internal(self, pool: WorkerPool, method: str, path: str,
                        data: Data, headers: dict[str, str],
                        query: dict[str, Any] | None = None,
                        to_all: bool = False) -> None:
        """Run a request on `pool` whose answer is dropped."""


class PoolStatus(TypedDict):
    """What WorkerPool.status() returns (JSON-friendly)."""

    name: str
    degraded: bool
    alive_count: int
    parked_count: int
    queue_size: int
    pending: int
    # WorkerHandle.status() of each, with 1.x's keys `id` and `parked`
    workers: list[dict[str, Any]]


class PoolQueue:
    """`pool.request_queue`: put a `Request` to run it on the pool.

    Usable in the dispatcher process only (e.g. from `on_response`). The
    answer of such a request is not sent anywhere.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    def put(self, request: Request) -> None:
        """Queue a Request; it runs on one worker of the pool."""
        if not isinstance(request, Request):
            raise TypeError('request_queue.put() takes a Request')
        self._pool.submit_internal(
            request.method, request.path, request.data,
            normalize_headers(request.headers), request.query)

    def qsize(self) -> int:
        """Requests waiting for a worker."""
        return self._pool.queue_size


class WorkerPool:
    """A set of worker processes running one Worker class.

    `routes` are the URL prefixes (`'/api/**'`) or exact paths this pool
    serves; None makes it the fallback pool. `worker_kwargs` reach the
    workers as `self.kwargs` (they must be picklable); so do extra keyword
    arguments, except a name that is a near miss of an option here
    (`num_worker=`), which raises TypeError naming the option meant.

    Options of uhttp-workers 1.x keep their meaning here:
    `permanent_failure_exitcode` is one more unrecoverable exit code,
    `recovery_interval` (seconds) replaces the doubling retry back-off of a
    degraded pool by a fixed interval, and `worker_memory_limit_mb` caps
    each worker's address space (RLIMIT_AS) before it is built.

    Operations: a worker stopped gracefully (shutdown, recycling, rolling
    restart, scale-down) gets SIGTERM and has `graceful_timeout` seconds to
    finish what it holds before SIGKILL (at shutdown, never past the
    dispatcher's shutdown_timeout). Worker starts are spaced by
    `start_worker_delay` seconds plus a random part up to
    `start_worker_delay_rand` seconds; a worker slot whose process crashed is
    started again after `restart_worker_interval` seconds, doubled for each
    crash in a row (up to 30 s or the interval itself if larger). All three
    are 0 by default: starts and restarts happen at once.

    `log_level` is the level of the workers' loggers (`self.log` and the
    stdlib root logger); None, the default, takes the dispatcher's.
    """

    def __init__(self, worker_class: type[Worker],
                 num_workers: int = DEFAULT_NUM_WORKERS,
                 routes: Iterable[str] | None = None, timeout: float = 30,
                 stuck_timeout: float = 60, heartbeat_interval: float = 1,
                 log_level: int | None = None, max_restarts: int = 10,
                 restart_window: float = 300, queue_warning: int = 100,
                 name: str | None = None,
                 unrecoverable_exit_codes: Iterable[int] = (),
                 worker_kill_timeout: float = 5, max_requests: int = 0,
                 max_requests_jitter: int = 0, max_memory: int = 0,
                 start_method: str | None = None,
                 setup_timeout: float = 300,
                 recovery_interval: float | None = None,
                 permanent_failure_exitcode: int | None = None,
                 worker_memory_limit_mb: float | None = None,
                 graceful_timeout: float = 30, start_worker_delay: float = 0,
                 start_worker_delay_rand: float = 0,
                 restart_worker_interval: float = 0,
                 exit_on_startup_failure: bool = True,
                 worker_kwargs: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        kwargs = worker_keywords(
            'WorkerPool', _POOL_OPTIONS, worker_kwargs, kwargs)
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f'num_workers must be an int >= 0, not '
                             f'{num_workers!r}')
        if recovery_interval is not None and recovery_interval < 0:
            raise ValueError('recovery_interval must be None or >= 0')
        _check_seconds(graceful_timeout=graceful_timeout,
                       start_worker_delay=start_worker_delay,
                       start_worker_delay_rand=start_worker_delay_rand,
                       restart_worker_interval=restart_worker_interval)
        if heartbeat_interval <= 0 or stuck_timeout <= heartbeat_interval:
            raise ValueError(
                'need 0 < heartbeat_interval < stuck_timeout')
        build_router(worker_class)  # invalid routes fail here, not in workers
        self.worker_class = worker_class
        self._num_workers_given = num_workers is not DEFAULT_NUM_WORKERS
        self.num_workers = int(num_workers)
        self.routes = list(routes) if routes is not None else None
        self.matcher = PrefixMatcher(self.routes)
        self.timeout = timeout
        self.stuck_timeout = stuck_timeout
        self.heartbeat_interval = heartbeat_interval
        self.log_level = log_level
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.queue_warning = queue_warning
        self.name = name or worker_class.__name__
        self.unrecoverable_exit_codes = frozenset(unrecoverable_exit_codes)
        if permanent_failure_exitcode is not None:
            self.unrecoverable_exit_codes |= {permanent_failure_exitcode}
        # 0 or None: the doubling back-off (1.x never retried with None)
        self.recovery_interval = recovery_interval or None
        self.memory_limit = _address_space_limit(worker_memory_limit_mb)
        self.worker_kill_timeout = worker_kill_timeout
        self.graceful_timeout = graceful_timeout
        self.start_worker_delay = start_worker_delay
        self.start_worker_delay_rand = start_worker_delay_rand
        self.restart_worker_interval = restart_worker_interval
        # paced starts, in order
        self._start_queue: collections.deque[WorkerHandle] = \
            collections.deque()
        self._next_start_at = 0.0
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.max_memory = max_memory
        self.setup_timeout = setup_timeout
        self.exit_on_startup_failure = exit_on_startup_failure
        self.kwargs = kwargs
        try:
            pickle.dumps((worker_class, kwargs))
        except Exception as err:
            raise ValueError(
                f'WorkerPool({worker_class.__name__}): the worker class must '
                'be defined at module level and the extra keyword arguments '
                f'must be picklable (workers may be spawned): {err}') from err
        self.request_queue = PoolQueue(self)
        self.workers: list[WorkerHandle] = []
        self.backlog: collections.deque[Pending] = collections.deque()
        self.abandoned = 0      # backlog entries whose client was answered
        self.degraded = False
        self.config: Any = None     # the application's, for on_config()
        self.ever_ready = False     # has any worker finished setup() yet
        # slots that failed before that
        self._failed_at_start: set[int] = set()
        self._restart_times: collections.deque[float] = collections.deque()
        self._backoff = self._first_backoff()
        self._retry_at: float | None = None
        self._queue_warned_at = 0.0
        self._next_memory_check = 0.0
        self._roll_queue: collections.deque[WorkerHandle] = \
            collections.deque()
        # the old worker being replaced by the roll
        self._rolling: WorkerHandle | None = None
        self._rotation = 0
        # set by start(): only the dispatcher that started the pool drives
        # it, so every other method may take it as set
        self._dispatcher: PoolHost = None  # type: ignore[assignment]
        if start_method not in (None, 'fork', 'spawn'):
            raise ValueError("start_method must be None, 'fork' or 'spawn'")
        self.start_method = start_method
        # auto: fork (shared memory, fast) until new code must be loaded
        self._fresh_code = start_method == 'spawn' or (
            'fork' not in multiprocessing.get_all_start_methods())

    def __repr__(self) -> str:
        return f'<WorkerPool {self.name} x{self.num_workers}>'

    # -- configuration and status ------------------------------------------

    @property
    def num_workers_given(self) -> bool:
        """False while the application left `num_workers` at its default
        (the command line's --workers then sets it)."""
        return self._num_workers_given

    def send_config(self, config: Any) -> None:
        """Send `config` to every worker's `on_config()`; workers started
        later receive the latest one too."""
        self.config = config
        for handle in self.workers:
            if handle.channel is not None and not handle.exited:
                self._queue(handle, messages.config(config))

    def status(self) -> PoolStatus:
        """Pool name, degraded flag, queue size, pending count, live and
        parked (unrecoverable) worker counts, workers; each worker also under
        uhttp-workers 1.x's keys `id` and `parked`."""
        now = time.monotonic()
        return {
            'name': self.name,
            'degraded': self.degraded,
            'alive_count': self.alive_count,
            'parked_count': self.parked_count,
            'queue_size': self.queue_size,
            'pending': sum(len(h.in_flight) for h in self.workers)
            + self.queue_size,
            'workers': [dict(handle.status(now), id=handle.index,
                             parked=handle.unrecoverable)
                        for handle in self.workers],
        }

    @property
    def is_degraded(self) -> bool:
        """True while the pool answers 503 (uhttp-workers 1.x name)."""
        return self.degraded

    @property
    def alive_count(self) -> int:
        """Live worker processes (uhttp-workers 1.x name of
        `workers_alive`)."""
        return self.workers_alive

    @property
    def parked_count(self) -> int:
        """Workers that ended with an unrecoverable exit code and stay
        down."""
        return sum(1 for h in self.workers if h.unrecoverable and h.exited)

    @property
    def pending_count(self) -> int:
        """Requests waiting for a worker (uhttp-workers 1.x name of
        `queue_size`)."""
        return self.queue_size

    @property
    def queue_size(self) -> int:
        """Requests waiting in the backlog for a free worker."""
        return len(self.backlog) - self.abandoned

    def queued_requests(self) -> list[Pending]:
        """The requests waiting in the backlog, oldest first."""
        return [p for p in self.backlog if p.state == QUEUED]

    def compact_backlog(self) -> None:
        """Drop the backlog entries of requests that ended meanwhile."""
        self.backlog = collections.deque(
            p for p in self.backlog if p.state == QUEUED)
        self.abandoned = 0

    @property
    def workers_alive(self) -> int:
        """How many worker processes are running."""
        return sum(1 for h in self.workers
                   if h.process is not None and not h.exited)

    # -- lifecycle ----------------------------------------------------------

    def start(self, dispatcher: PoolHost) -> None:
        """Start every worker (called by the dispatcher)."""
        self._dispatcher = dispatcher
        if not self.num_workers:
            # a pool switched off by configuration, as uhttp-workers 1.x
            # allowed: said once, and its requests get 503 at once
            dispatcher.log.warning(
                'pool %s has num_workers=0: its requests are answered '
                '503 No Workers Available', self.name)
        for index in range(self.num_workers):
            handle = WorkerHandle(self, index)
            self.workers.append(handle)
            self._spawn(handle)

    def _spawn(self, handle: WorkerHandle) -> bool:
        """Start a process for `handle`, or queue the start when starts are
        paced (start_worker_delay); False when it could not start (the
        failure is logged and a retry scheduled, never raised)."""
        if not self._dispatcher.accepts_workers:
            return False
        if self.start_worker_delay or self.start_worker_delay_rand:
            now = time.monotonic()
            if self._start_queue or now < self._next_start_at:
                if handle not in self._start_queue:
                    self._start_queue.append(handle)
                return True
            self._next_start_at = now + self._start_gap()
        return self._start_now(handle)

    def _start_gap(self) -> float:
        return self.start_worker_delay + random.uniform(
            0, self.start_worker_delay_rand)

    def _start_paced(self, now: float) -> None:
        """Start the next queued worker once its turn has come (the
        dispatcher never sleeps: its loop calls this every turn)."""
        if not self._dispatcher.accepts_workers:
            self._start_queue.clear()  # shutting down: they never start
            return
        while self._start_queue and now >= self._next_start_at:
            handle = self._start_queue.popleft()
            if handle not in self.workers or handle.retiring \
                    or not handle.exited:
                continue  # retired or resized away while it waited
            self._next_start_at = now + self._start_gap()
            self._start_now(handle)
            return

    def _start_now(self, handle: WorkerHandle) -> bool:
        try:
            process, channel = self._start_process(handle)
        except Exception as err:  # pylint: disable=broad-except
            self._dispatcher.log.error(
                'pool %s: cannot start worker %s: %r', self.name, handle.name,
                err, exc_info=err)
            self._start_failed(handle, f'could not start: {err!r}')
            return False
        handle.retry_at = None
        handle.reset(process, channel, time.monotonic(),
                     self.max_requests + random.randint(
                         0, self.max_requests_jitter)
                     if self.max_requests else None)
        if self.config is not None:
            self._queue(handle, messages.config(self.config))
        self._dispatcher.worker_started(self, handle)
        self._dispatcher.watch_worker(handle)
        return True

    def _start_process(
            self, handle: WorkerHandle
    ) -> tuple[multiprocessing.process.BaseProcess, Channel]:
        dispatcher_end, worker_end = channel_pair()
        options: dict[str, Any] = {
            'worker_id': handle.index,
            'pool_name': self.name,
            # None: the dispatcher's level
            'log_level': self._dispatcher.log.level
            if self.log_level is None else self.log_level,
            'heartbeat_interval': self.heartbeat_interval,
            'memory_limit': self.memory_limit,
            'dispatcher_port': getattr(self._dispatcher, 'port', None),
            'services': list(self._dispatcher.services.values()),
        }
        output = self._dispatcher.worker_output(handle)
        if output is not None:      # its stdout and stderr go to our log
            options['output'] = output.worker_ends
        # fork copies the dispatcher: never after new code was deployed, and
        # never while another thread runs (it could hold a lock forever)
        method = 'spawn' if self._fresh_code or \
            threading.active_count() > 1 else 'fork'
        options['forked'] = method == 'fork'
        self._dispatcher.lifecycle_hook('before_fork', self, handle.index)
        # (the stubs give a context chosen by a str no Process class)
        process: multiprocessing.process.BaseProcess = \
            multiprocessing.get_context(method).Process(  # type: ignore[attr-defined]
                target=worker_main, name=handle.name,
                args=(self.worker_class, worker_end, options, self.kwargs))
        if method == 'fork':
            # What the child only reads stays shared with the dispatcher as
            # long as no garbage collection writes to it: freeze what lives
            # now (collected first, so no garbage is frozen with it).
            gc.collect()
            gc.freeze()
        try:
            process.start()
        except BaseException:
            dispatcher_end.close()
            if output is not None:
                output.close()
            raise
        finally:
            worker_end.close()
        if output is not None:
            output.started()
        return process, Channel(dispatcher_end)

    def _start_failed(self, handle: WorkerHandle, reason: str) -> None:
        handle.exited = True
        handle.ready = False
        if handle.process is None or handle.channel is None:
            handle.process = None
        if self._held_at_start(handle, reason):
            return
        if handle.replaces is not None:
            self._replacement_failed(handle, reason)
        elif handle in self.workers and not handle.retiring:
            self._schedule_restart(handle, delay=BACKOFF_FIRST)

    def stop(self) -> None:
        """Ask every worker to finish what it holds and exit."""
        for handle in self.workers:
            self._stop_worker(handle)

    def _stop_worker(self, handle: WorkerHandle,
                     grace: float | None = None) -> None:
        if handle.exited or handle.stopping:
            return
        handle.stopping = True
        handle.kill_deadline = time.monotonic() + (
            self.graceful_timeout if grace is None else grace)
        # SIGTERM: the worker finishes what it holds, runs teardown() and
        # exits 0; still there at kill_deadline, it gets SIGKILL
        self._queue(handle, messages.stop())
        self._signal(handle, signal.SIGTERM)

    def kill(self) -> None:
        """Kill every worker at once (immediate shutdown)."""
        for handle in self.workers:
            handle.stopping = True
            self._signal(handle, signal.SIGKILL)

    def all_exited(self) -> bool:
        """True when no worker process is left."""
        return all(h.exited or h.process is None for h in self.workers)

    # -- requests -------------------------------------------------------------

    def submit(self, pending: Pending) -> None:
        """Give a request to a worker now, or queue it in the backlog."""
        if self.queue_size > 0:  # others wait: keep the order, skip a search
            self.backlog.append(pending)
            self._warn_queue_size()
            return
        handle = self._least_busy()
        if handle is None:
            self.backlog.append(pending)
            self._warn_queue_size()
        else:
            self._assign(handle, pending)

    def submit_internal(self, method: str, path: str, data: Data,
                        headers: dict[str, str],
                        query: dict[str, Any] | None = None) -> None:
        """Run a request whose answer nobody waits for."""
        self._dispatcher.submit_internal(
            self, method, path, data, headers, query)

    def broadcast(self, path: str | tuple[Any, ...] | None, data: Data = None,
                  method: str = 'POST',
                  headers: Mapping[Any, Any] | None = None) -> None:
        """Run a request on every live worker of this pool; the answers are
        dropped. Use it to fan out an event (dispatcher process only).

        The control messages of uhttp-workers 1.x keep their meaning:
        `broadcast(('CONFIG', config))` is `send_config(config)`, and
        `broadcast(None)` (or `('STOP',)`) replaces every worker, one at a
        time, by a rolling restart (1.x stopped them all and let
        supervision start them again).
        """
        if not isinstance(path, str):
            self._broadcast_control(path)
            return
        self._dispatcher.submit_internal(
            self, method.upper(), path, data, normalize_headers(headers),
            to_all=True)

    def _broadcast_control(self, message: tuple[Any, ...] | None) -> None:
        kind = message[0] if isinstance(message, tuple) and message else None
        if message is None or kind == CTL_STOP:
            self.restart_workers(graceful=True)
        elif kind == CTL_CONFIG and len(message) == 2:
            self.send_config(message[1])
        elif kind == CTL_DISCONNECT:
            raise TypeError(
                f'pool {self.name}: broadcast({CTL_DISCONNECT!r}, ...) is not '
                'needed: workers hear of a client that left from the '
                'dispatcher (Worker.on_disconnect)')
        else:
            raise TypeError(
                f'pool {self.name}: broadcast() takes a path (str), None or '
                f"('CONFIG', config), not {message!r}")

    def assign_to_all(self, make_pending: Callable[[], Pending]) -> int:
        """Give one copy of a request to each ready worker, whatever its
        load; `make_pending()` builds each copy. Returns how many."""
        count = 0
        for handle in self.workers:
            if handle.ready and not handle.stopping and not handle.exited \
                    and handle.kill_reason is None:
                self._assign(handle, make_pending())
                count += 1
        return count

    def _least_busy(self) -> WorkerHandle | None:
        """An idle worker, else one that may take a second request now (its
        current one has not run long); None when all are full or slow.
        Ties are broken round-robin, so idle workers share the load (and
        reach max_requests) evenly."""
        workers = self.workers
        count = len(workers)
        if not count:
            return None
        self._rotation = start = (self._rotation + 1) % count
        best: WorkerHandle | None = None
        for offset in range(count):
            handle = workers[(start + offset) % count]
            if handle.has_capacity and (best is None
                                        or handle.active < best.active):
                best = handle
                if not best.active:
                    return best
        if best is not None and \
                time.monotonic() - best.busy_since >= REVOKE_AFTER:
            return None  # it runs something long: wait for any to free
        return best

    def _assign(self, handle: WorkerHandle, pending: Pending) -> None:
        pending.state = ASSIGNED
        handle.take(pending)
        self._queue(handle, pending.message)
        if handle.request_limit and handle.assigned >= handle.request_limit:
            self._recycle(handle, RECYCLE_MAX_REQUESTS,
                          f'served {handle.assigned} requests '
                          f'(max_requests={self.max_requests})')

    def pump(self, freed: WorkerHandle | None = None) -> None:
        """Move backlog requests to workers that have room; with nothing
        left to move, let an idle worker take over a request that waits
        behind a busy sibling.

        `freed`: the one worker that just finished something; only it can
        have gained room, so it is filled without searching the others.
        """
        backlog = self.backlog
        while backlog:
            pending = backlog[0]
            if pending.state != QUEUED:
                backlog.popleft()  # answered (timeout) or its client left
                self.abandoned -= 1
                continue
            handle: WorkerHandle | None
            if freed is not None:
                if not freed.has_capacity:
                    return
                handle = freed
            else:
                handle = self._least_busy()
                if handle is None:
                    return
            backlog.popleft()
            self._assign(handle, pending)
        if freed is None or freed.is_idle:
            self._revoke_for_idle()

    def _revoke_for_idle(self) -> None:
        """Workers are idle and the backlog is empty: ask busy workers for
        requests that still wait in their channels, one per idle worker,
        those behind the longest-running first (invariant: a request never
        waits for a busy worker while a sibling is idle)."""
        idle = sum(1 for handle in self.workers if handle.is_idle)
        if not idle:
            return
        busy = sorted((h for h in self.workers if h.active > 1),
                      key=lambda h: h.busy_since)
        for handle in busy:
            for pending in handle.waiting_requests():
                self.revoke(pending)
                idle -= 1
                if not idle:
                    return

    def revoke_slow(self, now: float) -> None:
        """Take back requests waiting behind one that runs long, when a
        sibling is not held up the same way (it will be free sooner)."""
        for handle in self.workers:
            if handle.active > 1 and now - handle.busy_since >= REVOKE_AFTER \
                    and self._sibling_sooner(handle, now):
                for pending in handle.waiting_requests():
                    self.revoke(pending)

    def _sibling_sooner(self, handle: WorkerHandle, now: float) -> bool:
        return any(other is not handle and other.takes_requests and (
            not other.active or now - other.busy_since < REVOKE_AFTER)
            for other in self.workers)

    def revoke(self, pending: Pending) -> None:
        """Ask the worker holding `pending` to hand it back unstarted; it
        answers RETURNED (the request is requeued first in line) or, when it
        had started it already, answers it as usual."""
        assert pending.worker is not None   # the worker holding it
        pending.revoked = True
        self._queue(pending.worker, messages.cancel(pending.request_id))

    def requeue(self, pending: Pending) -> None:
        """A worker handed back a request it did not start: first in line."""
        pending.state = QUEUED
        pending.worker = None
        pending.revoked = False
        self.backlog.appendleft(pending)

    def backlog_entry_abandoned(self) -> None:
        """A queued request ended (timeout, client left): its backlog entry
        stays until the pump skips it."""
        self.abandoned += 1

    def drop(self, handle: WorkerHandle, pending: Pending) -> None:
        """Forget a deferred/streaming request and tell its worker so (its
        on_disconnect() runs)."""
        handle.forget(pending)
        self._queue(handle, messages.disconnect(pending.request_id))

    def send_to(self, handle: WorkerHandle, message: Message) -> None:
        """Queue a message for one worker of this pool."""
        self._queue(handle, message)

    def _queue(self, handle: WorkerHandle, message: Message) -> None:
        channel = handle.channel
        if channel is None or channel.closed:
            return
        channel.queue(message)
        self._dispatcher.wants_flush(handle)

    def _warn_queue_size(self) -> None:
        if not self.queue_warning or self.queue_size <= self.queue_warning:
            return
        now = time.monotonic()
        if now - self._queue_warned_at >= QUEUE_WARNING_EVERY:
            self._queue_warned_at = now
            self._dispatcher.log.warning(
                'pool %s: %d requests wait for a worker (queue_warning=%d)',
                self.name, self.queue_size, self.queue_warning)

    # -- messages from a worker ----------------------------------------------

    def on_ready(self, handle: WorkerHandle) -> None:
        """The worker finished setup(): it takes requests, the pool heals,
        and the worker it replaces (if any) may stop."""
        handle.ready = True
        if not self.ever_ready:
            self.ever_ready = True
            self._restart_failed_at_start()
        old = handle.replaces
        if old is not None:
            handle.replaces = None
            old.replacement = None
            self._retire(old)
        if self.degraded:
            self.degraded = False
            self._backoff = self._first_backoff()
            self._retry_at = None
            self._dispatcher.log.warning(
                'pool %s: worker %s started healthy, pool recovered',
                self.name, handle.name)
            self._respawn_missing()
        self.pump()

    def on_accepting(self, handle: WorkerHandle, flag: bool) -> None:
        """pause() / resume() in a worker."""
        handle.accepting = flag
        if flag:
            self.pump()

    # -- supervision ----------------------------------------------------------

    def supervise(self, now: float) -> None:
        """Periodic checks: stuck workers, kill escalation, degraded retry,
        paced starts."""
        if self._start_queue:
            self._start_paced(now)
        for handle in list(self.workers):
            if handle.retry_at is not None and now >= handle.retry_at \
                    and not self.degraded:
                handle.retry_at = None
                self._spawn(handle)
                continue
            if handle.exited or handle.process is None:
                continue
            if handle.awaiting_exit:
                self._await_exit(handle, now)
                continue
            if handle.quit_pending:
                # after the stack dump asked for one turn earlier: the dump
                # must show where it hung, not the unwinding of SystemExit
                handle.quit_pending = False
                self._signal(handle, signal.SIGQUIT)
            if handle.kill_deadline is not None and now >= handle.kill_deadline:
                handle.kill_deadline = None
                self._dispatcher.log.error(
                    'worker %s (pid %s) did not exit in time: SIGKILL',
                    handle.name, handle.pid)
                self._signal(handle, signal.SIGKILL)
            elif (handle.ready and handle.kill_reason is None
                  and not handle.stopping
                  and now - handle.last_seen > self.stuck_timeout):
                self._kill(
                    handle, now, 'stuck', 'sent no heartbeat for %.1fs '
                    '(stuck_timeout %ss), request %s',
                    now - handle.last_seen, self.stuck_timeout,
                    handle.current_request())
            elif (not handle.ready and handle.kill_reason is None
                  and self.setup_timeout
                  and now - handle.started > self.setup_timeout):
                self._kill(handle, now, 'setup timed out',
                           'did not finish setup() in %ss',
                           self.setup_timeout)
        if self.degraded and self._retry_at is not None \
                and now >= self._retry_at:
            self._retry_at = None
            self._retry_one()
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_EVERY
            self._check_memory()
        self.revoke_slow(now)

    def _await_exit(self, handle: WorkerHandle, now: float) -> None:
        process = handle.process
        assert process is not None  # supervise() skips handles without one
        process.join(0)
        if process.exitcode is not None:
            self._dispatcher.worker_reaped(handle)
        elif handle.kill_deadline is None or now >= handle.kill_deadline:
            # it closed its end of the channel but lives on: finish it
            handle.kill_deadline = now + 1.0
            self._signal(handle, signal.SIGKILL)

    def _kill(self, handle: WorkerHandle, now: float, reason: str, why: str,
              *args: object) -> None:
        """Stop a misbehaving worker: its stacks to the log, then SIGQUIT
        (next turn), and SIGKILL if it is still there after a short grace."""
        handle.kill_reason = reason
        handle.kill_deadline = now + min(self.worker_kill_timeout, 5)
        self._dispatcher.log.error(
            'worker %s (pid %s) ' + why + ': killing it', handle.name,
            handle.pid, *args)
        self._signal(handle, TRACEBACK_SIGNAL)
        handle.quit_pending = True

    def _signal(self, handle: WorkerHandle, signum: int) -> None:
        if handle.pid is None or handle.exited:
            return
        try:
            os.kill(handle.pid, signum)
        except ProcessLookupError:
            pass

    def on_exit(self, handle: WorkerHandle) -> tuple[str, int | None]:
        """The worker's process ended: account for it and maybe restart.

        Returns (reason, exitcode) for the dispatcher's log and hook.
        """
        assert handle.process is not None   # the process that ended
        exitcode: int | None = handle.process.exitcode
        handle.exited = True
        handle.ready = False
        reason = self._exit_reason(handle, exitcode)
        if handle.retiring:
            self._retired(handle)
            return reason, exitcode
        if handle.replaces is not None:
            self._replacement_failed(handle, reason)
            return reason, exitcode
        if handle.respawn:
            handle.respawn = False
            self._spawn(handle)
            return reason, exitcode
        if handle.stopping:
            return reason, exitcode
        if self._held_at_start(handle, reason):
            return reason, exitcode
        if exitcode == EXIT_APP_ERROR:
            handle.unrecoverable = True
            self._dispatcher.log.critical(
                'worker %s cannot run this application, not restarted: %s',
                handle.name, APP_ERROR_MESSAGE)
            return reason, exitcode
        if exitcode in self.unrecoverable_exit_codes:
            handle.unrecoverable = True
            self._dispatcher.log.critical(
                'worker %s exited with unrecoverable code %s: not restarted',
                handle.name, exitcode)
            return reason, exitcode
        self._schedule_restart(handle)
        return reason, exitcode

    def _held_at_start(self, handle: WorkerHandle, reason: str) -> bool:
        """Before any worker of the pool was ever ready, a worker that ends
        is not restarted (exit_on_startup_failure): once every one has
        ended so, the pool failed to start and the dispatcher exits; once
        one is ready, the others start again."""
        if self.ever_ready or not self.exit_on_startup_failure \
                or handle not in self.workers:
            return False
        self._failed_at_start.add(handle.index)
        if len(self._failed_at_start) >= self.num_workers:
            self._dispatcher.pool_failed_to_start(self, reason)
        return True

    def _restart_failed_at_start(self) -> None:
        failed, self._failed_at_start = self._failed_at_start, set()
        for handle in self.workers:
            if handle.index in failed and handle.exited:
                self._spawn(handle)

    def exit_reason(self, handle: WorkerHandle) -> str:
        """Why the (exited) worker ended, in words."""
        assert handle.process is not None   # the process that ended
        return self._exit_reason(handle, handle.process.exitcode)

    @staticmethod
    def _exit_reason(handle: WorkerHandle, exitcode: int | None) -> str:
        if handle.kill_reason:
            reason: str = handle.kill_reason
            return reason
        if handle.stopping:
            return 'stopped'
        if exitcode is not None and exitcode < 0:
            try:
                return f'killed by {signal.Signals(-exitcode).name}'
            except ValueError:
                return f'killed by signal {-exitcode}'
        if exitcode == EXIT_SETUP_FAILED:
            return 'setup failed'
        if exitcode == EXIT_PARENT_GONE:
            return 'lost the dispatcher'
        if exitcode == EXIT_APP_ERROR:
            return 'application error'
        return f'exited with code {exitcode}'

    def _schedule_restart(self, handle: WorkerHandle,
                          delay: float = 0.0) -> None:
        now = time.monotonic()
        delay = max(delay, self._crash_delay(handle, now))
        self._restart_times.append(now)
        while self._restart_times and \
                now - self._restart_times[0] > self.restart_window:
            self._restart_times.popleft()
        handle.restarts += 1
        # max_restarts restarts within the window degrade (1.x counts so)
        if len(self._restart_times) >= self.max_restarts:
            if not self.degraded:
                self.degraded = True
                self._dispatcher.log.critical(
                    'pool %s degraded: %d restarts within %ss; answering '
                    '503 and retrying in %gs', self.name,
                    len(self._restart_times), self.restart_window,
                    self._backoff)
                self._dispatcher.pool_degraded(self)
            if self._retry_at is None:
                self._retry_at = now + self._backoff
                self._backoff = self._next_backoff()
            return
        if delay:
            handle.retry_at = now + delay
            self._dispatcher.log.info('pool %s: worker %s starts again in '
                                      '%.1fs', self.name, handle.name, delay)
        else:
            self._spawn(handle)

    def _crash_delay(self, handle: WorkerHandle, now: float) -> float:
        """restart_worker_interval, doubled for each crash in a row of
        this slot (a process that lived CRASH_STREAK_RESET starts over)."""
        if not self.restart_worker_interval:
            return 0.0
        if now - handle.started > CRASH_STREAK_RESET:
            handle.crash_streak = 0
        interval = self.restart_worker_interval
        delay: float = min(interval * 2 ** handle.crash_streak,
                    max(interval, BACKOFF_MAX))
        handle.crash_streak += 1
        return delay

    def _retry_one(self) -> None:
        """While degraded: start one worker to see whether the cause is gone."""
        for handle in self.workers:
            if handle.exited and not handle.unrecoverable:
                self._dispatcher.log.info(
                    'pool %s degraded: trying worker %s again', self.name,
                    handle.name)
                self._spawn(handle)
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = self._next_backoff()
                return

    def _first_backoff(self) -> float:
        return self.recovery_interval or BACKOFF_FIRST

    def _next_backoff(self) -> float:
        """Delay after the current one: doubled up to BACKOFF_MAX, or the
        fixed recovery_interval when one was given."""
        if self.recovery_interval:
            return self.recovery_interval
        return min(self._backoff * 2, BACKOFF_MAX)

    def _respawn_missing(self) -> None:
        for handle in self.workers:
            if handle.exited and not handle.stopping and not handle.retiring \
                    and not handle.unrecoverable:
                self._spawn(handle)

    # -- rolling restarts, resizing, recycling --------------------------------

    def restart_workers(self, graceful: bool = True) -> None:
        """Replace every worker with a fresh process (new code from disk).

        Graceful: one worker at a time, a new one is started and ready
        before the old one is told to stop, and the old one finishes what it
        holds: no request fails. Not graceful: every worker is terminated
        now (its requests get 502) and started again.
        """
        serving = [h for h in self.workers if h.is_serving]
        if self.start_method is None:
            self._fresh_code = True  # a forked worker would run the old code
        if not graceful:
            now = time.monotonic()
            for handle in serving:
                handle.kill_reason = 'restarted'
                handle.respawn = True
                handle.kill_deadline = now + self.worker_kill_timeout
                self._signal(handle, signal.SIGQUIT)  # at once
            return
        if self._rolling is not None or self._roll_queue:
            self._dispatcher.log.info(
                'pool %s: a rolling restart is under way; these workers are '
                'replaced after it', self.name)
        self._roll_queue.extend(serving)
        self._roll_next()

    def _roll_next(self) -> None:
        if self._rolling is not None:
            return
        while self._roll_queue:
            old = self._roll_queue.popleft()
            if old.is_serving and old.replacement is None:
                self._rolling = old
                self._replace(old, RECYCLE_ROLLING_RESTART, 'rolling restart')
                return

    def resize(self, num_workers: int) -> None:
        """Run `num_workers` workers: start new ones, or retire the
        highest-numbered ones gracefully."""
        if num_workers < 1:
            raise ValueError('a pool needs at least one worker')
        if not self._dispatcher.accepts_workers:
            return
        self.num_workers = num_workers
        members = [h for h in self.workers
                   if not h.retiring and h.replaces is None]
        for _ in range(num_workers - len(members)):
            handle = WorkerHandle(self, self._free_index())
            self.workers.append(handle)
            self._spawn(handle)
        extra = len(members) - num_workers
        if extra > 0:
            members.sort(key=lambda h: h.index, reverse=True)
            for handle in members[:extra]:
                if handle.replacement is not None:
                    self._retire(handle.replacement)
                self._retire(handle)
        self._dispatcher.log.info('pool %s: resized to %d workers',
                                  self.name, num_workers)

    def _free_index(self) -> int:
        used = {h.index for h in self.workers if not h.retiring}
        index = 0
        while index in used:
            index += 1
        return index

    def _recycle(self, handle: WorkerHandle, reason: str, why: str) -> None:
        if handle.replacement is None and handle.is_serving \
                and self._dispatcher.is_running:
            self._replace(handle, reason, why)

    def _replace(self, old: WorkerHandle, reason: str, why: str) -> None:
        """Start a worker that takes over from `old` once it is ready."""
        self._dispatcher.lifecycle_hook('on_worker_recycle', self, old.index,
                                        reason)
        new = WorkerHandle(self, old.index)
        new.replaces = old
        old.replacement = new
        self.workers.append(new)
        self._spawn(new)
        self._dispatcher.log.info('pool %s: replacing worker %s (pid %s): %s',
                                  self.name, old.name, old.pid, why)

    def _retire(self, handle: WorkerHandle) -> None:
        """Stop a worker for good once it has finished what it holds."""
        handle.retiring = True
        if handle.exited:
            self._retired(handle)
            return
        # SIGTERM now, SIGKILL after graceful_timeout
        self._stop_worker(handle)

    def _retired(self, handle: WorkerHandle) -> None:
        if handle in self.workers:
            self.workers.remove(handle)
        if handle is self._rolling:
            self._rolling = None
            if not self._roll_queue:
                self._dispatcher.log.info('pool %s: rolling restart done',
                                          self.name)
            self._roll_next()

    def _replacement_failed(self, handle: WorkerHandle, reason: str) -> None:
        old = handle.replaces
        assert old is not None  # called for a replacement only
        handle.replaces = None
        old.replacement = None
        if handle in self.workers:
            self.workers.remove(handle)
        self._dispatcher.log.error(
            'pool %s: the replacement of worker %s failed to start (%s); '
            'keeping pid %s', self.name, old.name, reason, old.pid)
        if old is self._rolling:
            self._rolling = None
            self._roll_queue.clear()
            self._dispatcher.log.error('pool %s: rolling restart aborted',
                                       self.name)

    def _check_memory(self) -> None:
        for handle in self.workers:
            if not handle.is_serving:
                continue
            handle.rss = _resident_memory(handle.pid)
            if self.max_memory and handle.rss and \
                    handle.rss > self.max_memory:
                self._recycle(handle, RECYCLE_MAX_MEMORY,
                              f'resident memory {handle.rss} bytes '
                              f'> max_memory={self.max_memory}')

    def flush(self, handle: WorkerHandle) -> bool:
        """Send queued messages to a worker; False when some remain."""
        channel: Channel | None = handle.channel
        assert channel is not None  # only a started worker wants a flush
        try:
            return channel.flush()
        except ChannelClosed:
            return True  # its exit is noticed through its sentinel



_PAGE_SIZE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096


def _resident_memory(pid: int | None) -> int | None:
    """Resident set size of a process in bytes (Linux), else None."""
    try:
        with open(f'/proc/{pid}/statm', 'rb') as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _check_seconds(**durations: object) -> None:
    """Each duration must be a number of seconds >= 0."""
    for name, value in durations.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or value < 0:
            raise ValueError(f'{name} must be a number of seconds >= 0, '
                             f'not {value!r}')


def _address_space_limit(megabytes: float | None) -> int | None:
    """RLIMIT_AS in bytes for worker_memory_limit_mb (None when unset or 0,
    as in uhttp-workers 1.x); a limit setrlimit() would refuse fails here,
    at start-up, rather than in every worker."""
    if not megabytes:
        return None
    if megabytes < 0:
        raise ValueError('worker_memory_limit_mb must be positive')
    limit = int(megabytes * 1024 * 1024)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY and limit > hard:
        raise ValueError(
            f'worker_memory_limit_mb={megabytes} is above the hard RLIMIT_AS '
            f'of this process ({hard} bytes)')
    return limit


# what a misspelt keyword is compared with (the extra keywords are not options)
_POOL_OPTIONS = tuple(
    inspect.signature(WorkerPool.__init__).parameters)[1:-1]
