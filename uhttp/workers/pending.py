"""The life of a request the dispatcher waits on, in one place.

A `Pending` is a request bound for a worker pool. Its states:

    QUEUED ──assign──► ASSIGNED ──answer──────────────► DONE
      ▲                   │ ├──defer──► DEFERRED ──answer──► DONE
      └─────requeue───────┘ └──stream─► STREAMING ──end───► DONE

QUEUED: in its pool's backlog. ASSIGNED: sent to a worker that has not
answered yet (it may still wait in that worker's channel). DEFERRED: the
handler returned DEFERRED and answers later. STREAMING: the answer's head is
on the wire and frames follow. DONE: the client was answered or left; nothing
may happen to it any more. Any state may end in DONE (timeout, client gone,
worker died, shutdown): `PendingTable.finish()` is the one way there.

The table indexes what the dispatcher must find quickly: the requests that
count against `max_pending` (everything not yet streaming), the streams, and
per pool the deadlines in order (a stream has none).

Must never: touch a socket or send a message (the dispatcher does that), or
let a request be in two states or two indexes at once.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from .messages import Message

if TYPE_CHECKING:
    from .worker_handle import WorkerHandle

State = Literal['queued', 'assigned', 'deferred', 'streaming', 'done']
QUEUED: Final = 'queued'
ASSIGNED: Final = 'assigned'
DEFERRED: Final = 'deferred'
STREAMING: Final = 'streaming'
DONE: Final = 'done'


class PendingPool(Protocol):
    """What the table needs of a worker pool."""

    @property
    def timeout(self) -> float:
        """Seconds a request may wait for its answer."""

    def backlog_entry_abandoned(self) -> None:
        """A queued request left the table: its backlog entry is void."""


class Pending:
    """A request bound for a pool: who asked, who works on it, until when.

    `client` is the connection (None for internal requests nobody waits
    for); `worker` the WorkerHandle holding it (None while queued);
    `message` what is sent to the worker; `active` is True while it counts
    as unfinished work of its worker (assigned, not yet answered or
    deferred); `revoked` is True once the dispatcher asked its worker to hand
    it back unstarted.
    """

    __slots__ = ('request_id', 'client', 'pool', 'worker', 'state',
                 'deadline', 'message', 'active', 'read_paused', 'started',
                 'revoked', 'to_all')

    def __init__(self, request_id: int, client: Any, pool: PendingPool,
                 message: Message, deadline: float | None = None,
                 started: float = 0.0, to_all: bool = False) -> None:
        self.request_id = request_id
        # the uhttp.server connection (not annotated there), or None
        self.client = client
        self.pool = pool
        self.worker: WorkerHandle | None = None
        self.state: State = QUEUED
        self.deadline = deadline
        self.message = message
        self.active = False
        self.read_paused = False
        self.started = started
        self.revoked = False
        self.to_all = to_all

    @property
    def waiting_for_worker(self) -> bool:
        """True while no worker has started it for sure (queued, or sent
        but possibly still unread in the worker's channel)."""
        return self.state in (QUEUED, ASSIGNED)

    def __repr__(self) -> str:
        return f'<Pending {self.request_id} {self.state}>'


class PendingTable:
    """Every request the dispatcher waits on, indexed by id and deadline."""

    def __init__(self) -> None:
        # request_id -> Pending, not streaming
        self._waiting: dict[int, Pending] = {}
        # request_id -> Pending, streaming
        self._streams: dict[int, Pending] = {}
        # pool -> OrderedDict(request_id -> Pending)
        self._expiry: dict[
            PendingPool, collections.OrderedDict[int, Pending]] = {}
        # lower bound of the earliest deadline
        self.next_expiry = math.inf

    def __len__(self) -> int:
        """Requests that count against max_pending (streams do not)."""
        return len(self._waiting)

    @property
    def stream_count(self) -> int:
        """Streaming answers in progress."""
        return len(self._streams)

    def get(self, request_id: int) -> Pending | None:
        """The waiting (not streaming) request with this id, or None."""
        return self._waiting.get(request_id)

    def all(self) -> list[Pending]:
        """A list of every request in the table, streams included."""
        return list(self._waiting.values()) + list(self._streams.values())

    def open(self, request_id: int, client: Any, pool: PendingPool,
             message: Message, now: float) -> Pending:
        """Enter a client's request: QUEUED, with the pool's deadline."""
        deadline = now + pool.timeout
        pending = Pending(request_id, client, pool, message, deadline, now)
        self._waiting[request_id] = pending
        expiry = self._expiry.get(pool)
        if expiry is None:
            expiry = self._expiry[pool] = collections.OrderedDict()
        expiry[request_id] = pending
        if deadline < self.next_expiry:
            self.next_expiry = deadline
        return pending

    def keep_alive(self, request_ids: Iterable[int], now: float) -> None:
        """Push the deadline of these (assigned or deferred) requests."""
        for request_id in request_ids:
            pending = self._waiting.get(request_id)
            if pending is None or pending.state not in (ASSIGNED, DEFERRED):
                continue
            pending.deadline = now + pending.pool.timeout
            self._expiry[pending.pool].move_to_end(request_id)

    def start_stream(self, pending: Pending) -> None:
        """ASSIGNED/DEFERRED → STREAMING: no deadline, no longer counted
        against max_pending, not waited for by a graceful shutdown."""
        request_id = pending.request_id
        pending.state = STREAMING
        if self._waiting.pop(request_id, None) is not None:
            self._expiry[pending.pool].pop(request_id, None)
            self._streams[request_id] = pending

    def finish(self, pending: Pending) -> State:
        """Any state → DONE: off every index. Returns the state it was in
        (DONE when it was finished already). The worker's books are the
        caller's: a worker that still runs the request keeps it there until
        it answers, so that it is not given more work meanwhile."""
        state = pending.state
        if state == DONE:
            return DONE
        pending.state = DONE
        request_id = pending.request_id
        if self._waiting.pop(request_id, None) is not None:
            expiry = self._expiry.get(pending.pool)
            if expiry is not None:
                expiry.pop(request_id, None)
        else:
            self._streams.pop(request_id, None)
        if state == QUEUED:
            pending.pool.backlog_entry_abandoned()
        return state

    def expired(self, now: float) -> list[Pending]:
        """The requests whose deadline has passed, oldest first; updates
        `next_expiry` to the earliest deadline left."""
        due: list[Pending] = []
        earliest = math.inf
        for expiry in self._expiry.values():
            for pending in expiry.values():
                deadline = pending.deadline
                # open() gives every request it indexes here a deadline
                assert deadline is not None
                if deadline > now:
                    earliest = min(earliest, deadline)
                    break
                due.append(pending)
        self.next_expiry = earliest
        return due
