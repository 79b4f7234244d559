"""WorkerHandle: the dispatcher's record of one worker process.

It holds what the dispatcher knows of a worker: its process and channel,
its lifecycle flags, and its books (which requests it holds, how many of
them it has not finished). The books are what make a worker's death fail
exactly its own requests, and what the pool's scheduler reads.

Must never: send a message, touch a client, or decide anything; the pool
decides, the dispatcher talks.
"""

import time

from .pending import ASSIGNED

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
STARTING = 'starting'   # process started, setup() runs
READY = 'ready'         # takes requests
STOPPING = 'stopping'   # told to finish what it holds and exit
KILLING = 'killing'     # being killed (stuck, restarted, setup timeout)
GONE = 'gone'           # channel closed, exit status not read yet
EXITED = 'exited'       # no process (ended, or never started)


class WorkerHandle:
    """The dispatcher's view of one worker process."""

    def __init__(self, pool, index):
        self.pool = pool
        self.index = index
        self.handled = 0
        self.restarts = 0
        self.retiring = False       # stopping for good: not replaced
        self.respawn = False        # killed on purpose: start it again
        self.unrecoverable = False  # ended with a code that forbids restart
        self.retry_at = None        # start again at this time (failed start)
        self.crash_streak = 0       # crashes in a row (restart_worker_interval)
        self.replacement = None     # the new worker that will take over
        self.replaces = None        # the worker this one takes over from
        self.process = None
        self.channel = None
        self.pid = None
        self.exited = False
        self.reset(None, None, 0.0, None)

    def reset(self, process, channel, now, request_limit):
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
        self.kill_reason = None
        self.kill_deadline = None   # SIGKILL then, if still running
        self.quit_pending = False   # SIGQUIT next turn (after a stack dump)
        self.lost = 0               # requests failed when it ended
        self.started = now
        self.last_seen = now
        self.in_flight = {}     # request_id -> Pending (all it holds)
        self.active = 0         # of those, not yet answered/deferred/streaming
        self.busy_since = now   # when its current request started
        self.assigned = 0       # requests given to this process
        self.request_limit = request_limit  # recycle after this many
        self.rss = None         # resident memory, bytes (Linux)

    @property
    def name(self):
        """'PoolName[index]', as used in logs."""
        return f'{self.pool.name}[{self.index}]'

    @property
    def state(self):
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
    def is_serving(self):
        """Running and meant to stay (not stopping, retiring or killed)."""
        return (self.process is not None and not self.exited
                and not self.stopping and not self.retiring
                and self.kill_reason is None)

    @property
    def takes_requests(self):
        """Ready, not paused, not stopping: may be given work now or later."""
        return (self.ready and self.accepting and not self.stopping
                and self.kill_reason is None and not self.channel.closed)

    @property
    def has_capacity(self):
        """True when it may be given one more request now."""
        return self.active < PREFETCH and self.takes_requests

    @property
    def is_idle(self):
        """Takes requests and has nothing to do."""
        return not self.active and self.takes_requests

    # -- the books ------------------------------------------------------------

    def take(self, pending):
        """A request was sent to this worker."""
        if not self.active:
            self.busy_since = time.monotonic()
        pending.worker = self
        pending.active = True
        self.in_flight[pending.request_id] = pending
        self.active += 1
        self.assigned += 1

    def release(self, pending):
        """The worker finished the synchronous part of a request (answered,
        deferred or streaming): it starts the next one it holds, if any."""
        if pending.active:
            pending.active = False
            self.active -= 1
            if self.active:
                self.busy_since = time.monotonic()

    def forget(self, pending):
        """Drop a request from the books (answered, returned or abandoned)."""
        if self.in_flight.pop(pending.request_id, None) is not None:
            self.release(pending)

    def take_all_back(self):
        """The process ended: empty the books; returns what it held."""
        orphans = list(self.in_flight.values())
        self.in_flight = {}
        self.active = 0
        self.lost = len(orphans)
        return orphans

    def waiting_requests(self):
        """The requests it holds but has not started (they wait behind the
        running one, in order), not yet revoked. A broadcast copy is not
        among them: it is meant for this very worker."""
        if self.active < 2:
            return []
        waiting = []
        seen_running = False
        for pending in self.in_flight.values():
            if pending.active and pending.state == ASSIGNED:
                if seen_running and not pending.revoked \
                        and not pending.to_all:
                    waiting.append(pending)
                seen_running = True
        return waiting

    def split_orphans(self, orphans):
        """The process ended: of the requests it held (in the order it got
        them), which ran and which it never started. It runs its requests
        one after the other, and each answer, deferral or stream start
        reached us before the next one started: so of those still unanswered
        only the first can have started."""
        started, unstarted = [], []
        running_seen = False
        for pending in orphans:
            waiting = pending.active and pending.state == ASSIGNED
            if waiting and running_seen:
                unstarted.append(pending)
            else:
                started.append(pending)
                running_seen = running_seen or waiting
        return started, unstarted

    def current_request(self):
        """Id of the oldest request this worker is still working on."""
        for request_id, pending in self.in_flight.items():
            if pending.state == ASSIGNED:
                return request_id
        return None

    def status(self, now):
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
