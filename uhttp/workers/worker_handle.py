"""WorkerHandle: the dispatcher's record of one worker process.

It holds what the dispatcher knows of a worker: its process and channel,
its lifecycle flags, and its books (which requests it holds, how many of
them it has not finished). The books are what make a worker's death fail
exactly its own requests, and what the pool's scheduler reads.

Must never: send a message, touch a client, or decide anything; the pool
decides, the dispatcher talks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from .pending import ASSIGNED

if TYPE_CHECKING:
    from collections.abc import Iterable
    from multiprocessing.process import BaseProcess

    from .channel import Channel
    from .pending import Pending
    from .pool import WorkerPool

# How many unfinished requests a worker may hold. Those behind the first
# wait in the worker's channel while it runs: answers and next requests then
# travel many to a wake-up and a system call (for short handlers, 8 gives
# about 1.4 times the throughput of 2 and 30 % less dispatcher CPU per
# request). None waits long behind a slow one: requests are only sent
# ahead of a request that has run less than REVOKE_AFTER, and the pool
# takes them back as soon as a sibling is idle or the running one runs
# long; when the worker dies, those it had not started go to a sibling.
PREFETCH = 8

# lifecycle states, derived from the flags below (see `state`)
State = Literal['starting', 'ready', 'stopping', 'killing', 'gone',
                'exited']
STARTING: Final = 'starting'   # process started, setup() runs
READY: Final = 'ready'         # takes requests
STOPPING: Final = 'stopping'   # told to finish what it holds and exit
KILLING: Final = 'killing'     # being killed (stuck, restarted, setup timeout)
GONE: Final = 'gone'           # channel closed, exit status not read yet
EXITED: Final = 'exited'       # no process (ended, or never started)


class WorkerStatus(TypedDict):
    """One worker in the monitoring summary (`WorkerHandle.status()`)."""

    index: int
    pid: int | None
    state: State
    alive: bool
    ready: bool
    accepting: bool
    last_seen: float | None     # seconds since its last message
    current_request: int | None
    in_flight: int
    handled: int
    restarts: int
    rss: int | None             # resident memory, bytes (Linux)
    retiring: bool


class WorkerHandle:
    """The dispatcher's view of one worker process."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.handled = 0
        self.restarts = 0
        self.retiring = False       # stopping for good: not replaced
        self.respawn = False        # killed on purpose: start it again
        self.unrecoverable = False  # ended with a code that forbids restart
        # start again at this time (failed start)
        self.retry_at: float | None = None
        self.crash_streak = 0       # crashes in a row (restart_worker_interval)
        # the new worker that will take over
        self.replacement: WorkerHandle | None = None
        # the worker this one takes over from
        self.replaces: WorkerHandle | None = None
        self.process: BaseProcess | None = None
        self.channel: Channel | None = None
        self.pid: int | None = None
        self.exited = False
        self.reset(None, None, 0.0, None)

    def reset(self, process: BaseProcess | None, channel: Channel | None,
              now: float, request_limit: int | None) -> None:
        """Start the books of a new process (or of none): everything that
        belongs to one process, as opposed to the slot it fills."""
        self.process = process
        self.channel = channel
        self.pid = process.pid if process is not None else None
        self.exited = process is None
        self.ready = False
        self.accepting = True
        self.stopping = False
        self.awaiting_exit = False  # gone, exit status not known yet
        self.kill_reason: str | None = None
        # SIGKILL then, if still running
        self.kill_deadline: float | None = None
        self.quit_pending = False   # SIGQUIT next turn (after a stack dump)
        self.lost = 0               # requests failed when it ended
        self.started = now
        self.last_seen = now
        # request_id -> Pending (all it holds)
        self.in_flight: dict[int, Pending] = {}
        self.active = 0         # of those, not yet answered/deferred/streaming
        self.busy_since = now   # when its current request started
        self.assigned = 0       # requests given to this process
        self.request_limit = request_limit  # recycle after this many
        self.rss: int | None = None     # resident memory, bytes (Linux)

    @property
    def name(self) -> str:
        """'PoolName[index]', as used in logs."""
        return f'{self.pool.name}[{self.index}]'

    @property
    def state(self) -> State:
        """Where the process is in its life (STARTING … EXITED)."""
        if self.exited or self.process is None:
            return EXITED
        if self.awaiting_exit:
            return GONE
        if self.kill_reason is not None:
            return KILLING
        if self.stopping:
            return STOPPING
        return READY if self.ready else STARTING

    @property
    def is_serving(self) -> bool:
        """Running and meant to stay (not stopping, retiring or killed)."""
        return (self.process is not None and not self.exited
                and not self.stopping and not self.retiring
                and self.kill_reason is None)

    @property
    def takes_requests(self) -> bool:
        """Ready, not paused, not stopping: may be given work now or later."""
        return (self.ready and self.accepting and not self.stopping
                and self.kill_reason is None and self.channel is not None
                and not self.channel.closed)

    @property
    def has_capacity(self) -> bool:
        """True when it may be given one more request now."""
        return self.active < PREFETCH and self.takes_requests

    @property
    def is_idle(self) -> bool:
        """Takes requests and has nothing to do."""
        return not self.active and self.takes_requests

    # -- the books ------------------------------------------------------------

    def take(self, pending: Pending) -> None:
        """A request was sent to this worker."""
        if not self.active:
            self.busy_since = time.monotonic()
        pending.worker = self
        pending.active = True
        self.in_flight[pending.request_id] = pending
        self.active += 1
        self.assigned += 1

    def release(self, pending: Pending) -> None:
        """The worker finished the synchronous part of a request (answered,
        deferred or streaming): it starts the next one it holds, if any."""
        if pending.active:
            pending.active = False
            self.active -= 1
            if self.active:
                self.busy_since = time.monotonic()

    def forget(self, pending: Pending) -> None:
        """Drop a request from the books (answered, returned or abandoned)."""
        if self.in_flight.pop(pending.request_id, None) is not None:
            self.release(pending)

    def take_all_back(self) -> list[Pending]:
        """The process ended: empty the books; returns what it held."""
        orphans = list(self.in_flight.values())
        self.in_flight = {}
        self.active = 0
        self.lost = len(orphans)
        return orphans

    def waiting_requests(self) -> list[Pending]:
        """The requests it holds but has not started (they wait behind the
        running one, in order), not yet revoked. A broadcast copy is not
        among them: it is meant for this very worker."""
        if self.active < 2:
            return []
        waiting: list[Pending] = []
        seen_running = False
        for pending in self.in_flight.values():
            if pending.active and pending.state == ASSIGNED:
                if seen_running and not pending.revoked \
                        and not pending.to_all:
                    waiting.append(pending)
                seen_running = True
        return waiting

    def split_orphans(
            self, orphans: Iterable[Pending],
    ) -> tuple[list[Pending], list[Pending]]:
        """The process ended: of the requests it held (in the order it got
        them), which ran and which it never started. It runs its requests
        one after the other, and each answer, deferral or stream start
        reached us before the next one started: so of those still unanswered
        only the first can have started."""
        started: list[Pending] = []
        unstarted: list[Pending] = []
        running_seen = False
        for pending in orphans:
            waiting = pending.active and pending.state == ASSIGNED
            if waiting and running_seen:
                unstarted.append(pending)
            else:
                started.append(pending)
                running_seen = running_seen or waiting
        return started, unstarted

    def current_request(self) -> int | None:
        """Id of the oldest request this worker is still working on."""
        for request_id, pending in self.in_flight.items():
            if pending.state == ASSIGNED:
                return request_id
        return None

    def status(self, now: float) -> WorkerStatus:
        """A JSON-friendly summary for monitoring."""
        return {
            'index': self.index,
            'pid': self.pid,
            'state': self.state,
            'alive': self.process is not None and not self.exited,
            'ready': self.ready,
            'accepting': self.accepting,
            'last_seen': round(now - self.last_seen, 3) if self.last_seen
            else None,
            'current_request': self.current_request(),
            'in_flight': len(self.in_flight),
            'handled': self.handled,
            'restarts': self.restarts,
            'rss': self.rss,
            'retiring': self.retiring,
        }
