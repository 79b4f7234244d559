"""RemotePool: a pool whose workers run on other hosts, reached via Redis.

`RemotePool(routes=..., redis_url=...)` goes in `Dispatcher(pools=[...])`
next to WorkerPools. Its requests are added to a Redis stream that workers
started elsewhere with `uhttp-workers worker app:MyWorker --redis URL` read
as a consumer group; their answers come back on this dispatcher's own reply
stream (see remote_protocol.py for the keys and the encoding). The Redis
traffic runs in two threads (remote_bridge.py) that hand their results to
the dispatcher's loop through a deque and a wake-up pipe in its selector:
the loop never waits for Redis.

What a client of a remote pool is promised, as for a local pool:

- a request runs at most once: once a remote worker said STARTED, the
  request is never sent again; if that worker's heartbeat key expires (its
  host died) or its host reports it LOST, the client gets 502 (the
  dispatcher's on_worker_died() is not called: no local worker died);
- no answer within `timeout` seconds: 504 (a late answer is dropped);
- no remote worker alive (no heartbeat key): 503 at once, nothing sent;
- Redis unreachable: this pool answers 503 at once (`degraded`), the
  requests it had in flight get 502, other pools are not affected; it
  serves again as soon as Redis answers;
- streamed answers (STREAM_START / DATA / END) are relayed like a local
  worker's; WebSocket routes and broadcasts to every worker are not
  carried (a remote pool serves plain requests);
- `restart_workers`, `resize` and `send_config` belong to the remote
  hosts: here they only log that.

A request's data and context must be made of JSON values, str keys and
bytes (never pickle: see remote_protocol.py); one that is not gets 500 and
the log says why.

Must never: block the loop, touch Redis from the loop, or answer a client
itself (the dispatcher does, through RemoteHost).
"""

from __future__ import annotations

import collections
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from . import messages
from . import remote_protocol as proto
from .log import printable
from .messages import Message
from .pending import ASSIGNED, DEFERRED, DONE, Pending
from .remote_bridge import (
    BAD_REPLY, DOWN, FAILED, HEARTBEATS, REPLIES, Event, RemoteBridge)
from .routing import PrefixMatcher
from .wake_pipe import WakePipe

if TYPE_CHECKING:
    from .log import Logger
    from .worker import Worker
    from .worker_handle import WorkerHandle

# seconds between two sweeps of requests the dispatcher ended meanwhile
SWEEP_INTERVAL = 1.0

_STREAM_KINDS = frozenset((messages.STREAM_START, messages.STREAM_DATA,
                           messages.STREAM_END))


class RemoteHost(Protocol):
    """What a remote pool uses of the dispatcher that started it."""

    @property
    def log(self) -> Logger:
        """The dispatcher's logger."""

    def register_reader(self, fd: int, callback: Callable[[int], object]
                        ) -> None:
        """Call `callback(fd)` from the loop when `fd` is readable."""

    def unregister_reader(self, fd: int) -> None:
        """Stop watching `fd`."""

    def answer_pending(self, pending: Pending, message: Message,
                       by: str) -> None:
        """Send a RESPONSE message to the client of `pending`."""

    def relay_stream(self, pending: Pending, message: Message,
                     by: str) -> None:
        """Pass a stream frame to the client of `pending`."""

    def fail_pending(self, pending: Pending, status: int | None,
                     message: str | None = None,
                     reason: str | None = None) -> None:
        """End `pending` without an answer from its worker."""

    def keep_alive_pending(self, request_ids: Iterable[int]) -> None:
        """Push the deadline of these requests."""


class RemoteHostStatus(TypedDict):
    """One live remote worker process (a consumer) in status()."""

    consumer: str
    host: str | None
    pid: int | None
    workers: int
    busy: int
    handled: int


class RemotePoolStatus(TypedDict):
    """What RemotePool.status() returns (JSON-friendly); the keys of a
    WorkerPool's status, plus `remote`, `redis` and `hosts`."""

    name: str
    remote: bool
    # this dispatcher process's id (its reply stream's last part)
    dispatcher_id: str
    degraded: bool
    redis: str
    alive_count: int
    parked_count: int
    queue_size: int
    pending: int
    workers: list[dict[str, Any]]
    hosts: list[RemoteHostStatus]


class RemotePool:
    """Requests of `routes` go to workers on other hosts through Redis.

    `name` names the pool's Redis keys, which the remote workers must use
    too; it defaults to `worker_class.__name__` when `worker_class` is
    given (it is used for nothing else here: the remote hosts import their
    own). `timeout` is seconds a request may wait for its answer (504
    after it), `batch_size` the most requests added to Redis in one
    round trip, `connect_timeout` seconds a connection attempt to Redis may
    take (in the bridge's threads, never in the loop).
    """

    def __init__(self, routes: Iterable[str] | None, redis_url: str,
                 name: str | None = None,
                 worker_class: type[Worker] | None = None,
                 timeout: float = 30, batch_size: int = 256,
                 connect_timeout: float = 2.0) -> None:
        if name is None:
            if worker_class is None:
                raise ValueError(
                    'RemotePool needs name= (or worker_class=, whose class '
                    'name it then takes): the remote workers find its Redis '
                    'keys by that name')
            name = worker_class.__name__
        if not redis_url:
            raise ValueError('RemotePool needs redis_url= (redis://host:port'
                             '/db)')
        if timeout <= 0 or batch_size < 1 or connect_timeout <= 0:
            raise ValueError('RemotePool: timeout and connect_timeout must '
                             'be > 0, batch_size >= 1')
        self.name = name
        self.worker_class = worker_class
        self.routes = list(routes) if routes is not None else None
        self.matcher = PrefixMatcher(self.routes)
        self.timeout = timeout
        self.redis_url = redis_url
        self.batch_size = batch_size
        self.connect_timeout = connect_timeout
        # no local process: what the dispatcher counts and stops is empty
        self.num_workers = 0
        self.workers: list[WorkerHandle] = []
        # this dispatcher process's, made by start(): with dispatchers=N
        # each forked dispatcher has its own reply stream and request ids
        self.dispatcher_id = ''
        # True until Redis first answers, and while it does not
        self.degraded = True
        self.config: Any = None
        self._redis_state = 'connecting'
        # consumer -> its last heartbeat, for those whose key exists
        self._heartbeats: dict[str, dict[str, Any]] = {}
        # request_id -> Pending sent to Redis, until its answer came
        self._in_flight: dict[int, Pending] = {}
        # request_id -> the consumer that said STARTED
        self._started_on: dict[int, str] = {}
        # request id -> the number of the last reply handled for it
        self._last_seq: dict[int, int] = {}
        # events from the bridge's threads (deque: appended there)
        self._events: collections.deque[Event] = collections.deque()
        self._wake: WakePipe | None = None
        self._bridge: RemoteBridge | None = None
        # set by start(); every other loop-side method may take it as set
        self._host: RemoteHost = None  # type: ignore[assignment]
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f'<RemotePool {self.name} {self.where}>'

    @property
    def where(self) -> str:
        """The Redis server, without its password (for the log)."""
        parts = urllib.parse.urlsplit(self.redis_url)
        netloc = parts.netloc.rpartition('@')[2]
        return f'{parts.scheme}://{netloc}{parts.path}'

    # -- status -----------------------------------------------------------------

    @property
    def num_workers_given(self) -> bool:
        """Always True: the command line's --workers is for local pools."""
        return True

    @property
    def workers_alive(self) -> int:
        """Worker processes the live remote hosts report."""
        return sum(_count(beat, 'workers')
                   for beat in self._heartbeats.values())

    @property
    def alive_count(self) -> int:
        """Same as workers_alive (the name WorkerPool.status() uses)."""
        return self.workers_alive

    @property
    def queue_size(self) -> int:
        """Requests not handed to Redis yet."""
        return self._bridge.queued if self._bridge is not None else 0

    @property
    def pending_count(self) -> int:
        """Requests sent and not answered yet."""
        return sum(1 for p in self._in_flight.values() if p.state != DONE)

    def status(self) -> RemotePoolStatus:
        """Name, Redis state, the live remote hosts with their worker
        counts, requests waiting and in flight."""
        hosts: list[RemoteHostStatus] = [
            {'consumer': consumer, 'host': beat.get('host'),
             'pid': beat.get('pid'), 'workers': _count(beat, 'workers'),
             'busy': _count(beat, 'busy'), 'handled': _count(beat, 'handled')}
            for consumer, beat in sorted(self._heartbeats.items())]
        return {'name': self.name, 'remote': True,
                'dispatcher_id': self.dispatcher_id,
                'degraded': self.degraded, 'redis': self._redis_state,
                'alive_count': self.workers_alive, 'parked_count': 0,
                'queue_size': self.queue_size,
                'pending': self.pending_count, 'workers': [],
                'hosts': hosts}

    # -- lifecycle (called by the dispatcher) ----------------------------------

    def start(self, dispatcher: RemoteHost) -> None:
        """Watch the wake-up pipe in the dispatcher's loop and start the
        bridge's threads."""
        self._host = dispatcher
        self.dispatcher_id = uuid.uuid4().hex
        self._wake = WakePipe()
        dispatcher.register_reader(self._wake.fileno(), self._on_wake)
        self._bridge = RemoteBridge(
            self.name, self.redis_url, self.dispatcher_id, self._post,
            self.batch_size, self.connect_timeout)
        self._bridge.start()
        dispatcher.log.info('pool %s: remote workers through %s (replies on '
                            '%s)', self.name, self.where,
                            proto.replies_stream(self.name,
                                                 self.dispatcher_id))

    def stop(self) -> None:
        """End the bridge (it deletes this dispatcher's reply stream)."""
        if self._bridge is not None:
            self._bridge.stop()

    def kill(self) -> None:
        """Same as stop(): there is no process here to kill."""
        self.stop()

    def all_exited(self) -> bool:
        """True once the bridge's threads ended."""
        return self._bridge is None or not self._bridge.alive

    def supervise(self, now: float) -> None:
        """Forget requests the dispatcher ended (timeout, client left)
        whose answer never came; close the wake-up pipe once the bridge
        ended."""
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            for request_id, pending in list(self._in_flight.items()):
                if pending.state == DONE:
                    self._forget(request_id)
        if self._bridge is not None and not self._bridge.alive \
                and self._wake is not None:
            self._on_wake(self._wake.fileno())  # its last events
            self._host.unregister_reader(self._wake.fileno())
            self._wake.close()
            self._wake = None

    def restart_workers(self, graceful: bool = True) -> None:
        """Nothing here: remote workers are restarted on their hosts."""
        del graceful
        self._not_here('restart_workers()')

    def resize(self, num_workers: int) -> None:
        """Nothing here: remote hosts choose their worker count."""
        del num_workers
        self._not_here('resize()')

    def send_config(self, config: Any) -> None:
        """Nothing is sent: remote hosts read their own configuration."""
        self.config = config
        self._not_here('send_config()')

    def _not_here(self, what: str) -> None:
        self._host.log.info('pool %s is remote: %s belongs to the hosts '
                            'that run its workers (uhttp-workers worker)',
                            self.name, what)

    # -- requests (from the loop) ---------------------------------------------

    def submit(self, pending: Pending) -> None:
        """Send a request to the remote workers (through the sender
        thread); a request JSON cannot carry gets 500 now."""
        try:
            fields = proto.encode_request(
                self.dispatcher_id, pending.message,
                int(self.timeout * 1000))
        except proto.ProtocolError as err:
            self._host.log.error(
                'request %s %s %s cannot go to remote pool %s: %s',
                pending.request_id, pending.message[2],
                printable(pending.message[3]), self.name, err)
            self._host.fail_pending(pending, 500, 'Internal Server Error')
            return
        pending.state = ASSIGNED
        if pending.client is not None:
            # (an internal request's answer goes nowhere: not tracked)
            self._in_flight[pending.request_id] = pending
        assert self._bridge is not None   # (started before any request)
        self._bridge.send(pending.request_id, fields)

    def assign_to_all(self, make_pending: Callable[[], Pending]) -> int:
        """A broadcast to every worker cannot reach remote workers (a
        consumer group gives each entry to one): nothing is sent."""
        del make_pending
        self._host.log.warning('pool %s is remote: a request to every '
                               'worker is not carried', self.name)
        return 0

    def backlog_entry_abandoned(self) -> None:
        """Nothing to do: a remote pool's requests are never in a backlog
        of the dispatcher (they are ASSIGNED once handed to the sender)."""

    # -- events (from the bridge, run in the loop) ------------------------------

    def _post(self, event: Event) -> None:
        # runs in a bridge thread: deque.append and a pipe write only
        self._events.append(event)
        wake = self._wake
        if wake is not None:
            wake.wake()

    def _on_wake(self, _fd: int) -> None:
        if self._wake is not None:
            self._wake.drain()
        events = self._events
        while events:
            event = events.popleft()
            kind = event[0]
            if kind == REPLIES:
                for consumer, message, seq in event[1]:
                    if not self._duplicate(message, seq):
                        self._safely(self._on_reply, consumer, message)
            elif kind == HEARTBEATS:
                self._safely(self._on_heartbeats, event[1])
            elif kind == DOWN:
                self._safely(self._on_down, event[1])
            elif kind == BAD_REPLY:
                self._host.log.error('pool %s: a reply from Redis was '
                                     'dropped: %s', self.name, event[1])
            elif kind == FAILED:
                self._host.log.critical(
                    'pool %s: thread %s ended on an error; the pool answers '
                    '503 from now on:\n%s', self.name, event[1], event[2])
                self._safely(self._on_down, f'thread {event[1]} failed')
                self._redis_state = 'failed'

    def _safely(self, handler: Callable[..., None], *args: Any) -> None:
        # one bad reply must not hold up the events behind it
        try:
            handler(*args)
        except Exception:  # pylint: disable=broad-except
            self._host.log.exception('pool %s: %s failed on %.200r',
                                     self.name, handler.__name__, args)

    def _duplicate(self, message: Message, seq: int | None) -> bool:
        """True for a reply already handled: a host that did not hear
        Redis confirm a batch of replies sends it again, numbered as
        before (a stream must not get a chunk twice)."""
        request_id = message[1] if len(message) > 1 else None
        if seq is None or request_id not in self._in_flight:
            return False
        assert isinstance(request_id, int)   # (found in _in_flight)
        if seq <= self._last_seq.get(request_id, -1):
            self._host.log.debug('pool %s: request %s: reply %d again, '
                                 'dropped', self.name, request_id, seq)
            return True
        self._last_seq[request_id] = seq
        return False

    def _on_reply(self, consumer: str, message: Message) -> None:
        kind = message[0]
        if kind == messages.KEEP_ALIVE:
            # (only this pool's requests: ids are the dispatcher's)
            self._host.keep_alive_pending(
                request_id for request_id in message[1]
                if request_id in self._in_flight)
            return
        request_id = message[1] if len(message) > 1 else None
        pending = self._in_flight.get(request_id) \
            if isinstance(request_id, int) else None
        if pending is None:
            self._host.log.debug('pool %s: request %s: late answer dropped',
                                 self.name, request_id)
            return
        assert isinstance(request_id, int)   # (found in _in_flight)
        if pending.state == DONE or pending.client is None:
            if kind in (messages.RESPONSE, messages.STREAM_END, proto.LOST):
                self._forget(request_id)
            return
        if kind == proto.STARTED:
            self._started_on[request_id] = consumer
        elif kind == messages.RESPONSE:
            self._forget(request_id)
            self._answer(pending, message, consumer)
        elif kind == messages.DEFERRED:
            if pending.state == ASSIGNED:
                pending.state = DEFERRED
        elif kind in _STREAM_KINDS:
            if kind == messages.STREAM_END:
                self._forget(request_id)
            self._host.relay_stream(pending, message, consumer)
        elif kind == proto.LOST:
            self._forget(request_id)
            self._lost(pending, f'{consumer}: {message[2:]}')
        else:
            self._host.log.error('pool %s: remote worker %s sent an unknown '
                                 'message kind %r', self.name, consumer, kind)

    def _answer(self, pending: Pending, message: Message,
                consumer: str) -> None:
        if len(message) != 6 or not isinstance(message[2], int) \
                or not isinstance(message[3], bytes):
            self._host.log.error('pool %s: malformed answer from remote '
                                 'worker %s to request %s', self.name,
                                 consumer, pending.request_id)
            self._host.fail_pending(pending, 502, 'Bad Gateway')
            return
        self._host.answer_pending(pending, message, consumer)

    def _on_heartbeats(self, live: dict[str, dict[str, Any]]) -> None:
        if self.degraded and self._redis_state != 'failed':
            self.degraded = False
            self._host.log.info('pool %s: Redis answers (%s): serving',
                                self.name, self.where)
        if self._redis_state != 'failed':
            self._redis_state = 'up'
        for consumer in live.keys() - self._heartbeats.keys():
            beat = live[consumer]
            self._host.log.info(
                'pool %s: remote worker %s (host %s, pid %s) is alive with %d '
                'workers', self.name, consumer, beat.get('host'),
                beat.get('pid'), _count(beat, 'workers'))
        for consumer in self._heartbeats.keys() - live.keys():
            self._host.log.warning('pool %s: remote worker %s stopped '
                                   'heart-beating', self.name, consumer)
        self._heartbeats = live
        for request_id, consumer in list(self._started_on.items()):
            if consumer not in live:
                pending = self._in_flight.get(request_id)
                self._forget(request_id)
                if pending is not None and pending.state != DONE:
                    self._lost(pending, f'{consumer} stopped heart-beating')

    def _on_down(self, reason: str) -> None:
        # said once per outage (the reader retries every second), and at
        # start when Redis was never reached
        first = self._redis_state in ('connecting', 'up')
        self.degraded = True
        self._heartbeats = {}
        if self._redis_state != 'failed':
            self._redis_state = 'down'
        failed = [p for p in self._in_flight.values() if p.state != DONE]
        self._in_flight.clear()
        self._started_on.clear()
        self._last_seq.clear()
        if first or failed:
            self._host.log.error(
                'pool %s: Redis unreachable (%s): %s; its requests get 503 '
                'until it answers again', self.name, reason,
                f'{len(failed)} requests in flight fail with 502'
                if failed else 'no request in flight')
        for pending in failed:
            self._host.fail_pending(pending, 502, 'Bad Gateway')

    def _lost(self, pending: Pending, why: str) -> None:
        """A started request whose worker is gone: 502, never re-sent."""
        self._host.log.error('request %s %s %s lost: remote worker %s',
                             pending.request_id, pending.message[2],
                             printable(pending.message[3]), why)
        self._host.fail_pending(pending, 502, 'Worker Died')

    def _forget(self, request_id: int) -> None:
        self._in_flight.pop(request_id, None)
        self._started_on.pop(request_id, None)
        self._last_seq.pop(request_id, None)


def is_remote(pool: object) -> bool:
    """True for a RemotePool (the dispatcher holds its pools as
    WorkerPools: a remote pool offers what it calls on them)."""
    return pool.__class__ is RemotePool


def _count(beat: dict[str, Any], key: str) -> int:
    value = beat.get(key)
    return value if isinstance(value, int) else 0

