"""The process behind `uhttp-workers worker app:MyWorker --redis URL`.

A dispatcher whose `RemotePool` puts requests into a Redis stream gets
them run on other hosts by this process: it runs N local worker processes
exactly as a local pool does (the same `Worker` subclass, its `@api`
routes, setup()/teardown(), self.log, streaming, keep_alive), takes from
the stream only as many requests as it has idle workers, and puts every
answer on the reply stream of the dispatcher that sent the request. The
keys and the encoding are remote_protocol.py's.

How it is built:

- The local workers are a `WorkerPool` (pool.py): this object is its
  `PoolHost`, as a Dispatcher is. So starting (fork first, spawn once a
  thread runs), restarting with back-off, degrading after too many crashes,
  stuck detection and graceful stop with SIGKILL after `graceful_timeout`
  are the very code local pools run. The pool's own request scheduling
  (backlog, prefetch, revocation) is not used: a worker is given a request
  only when it is idle, one at a time, so a started request never waits
  behind another on this host while a sibling host is free.
- Threads: the main thread runs one selector loop that owns the worker
  channels and exit sentinels, the signal pipe, the supervision of the
  pool, all the books (waiting entries, started requests, the outbox) and
  the short Redis calls off a request's path (`RedisLink`: drop an entry,
  heartbeat, the server's clock once a second, release at a stop). Three
  more threads, each with a Redis connection of its own, make the calls
  on a request's path, so the loop never waits for Redis there:
  - the `StreamReader` (remote_consumer.py) takes entries: XREADGROUP
    BLOCK (the only blocking call) and, every few seconds, XAUTOCLAIM of
    entries a dead consumer left unstarted; it takes at most as many as
    the main loop last said it had idle workers (minus the entries
    waiting or being started);
  - a `CallThread` starts entries: the loop hands it the entries it
    chose for its idle workers and gives each one won to a worker when
    the answer came (entries read meanwhile go in the next start);
  - a `CallThread` adds replies: the loop hands it the outbox's oldest
    replies and drops them from the outbox once they are in Redis
    (replies queued meanwhile go in the next batch; one batch at a time,
    so the replies about one request keep their order).
  Each wakes the loop through a pipe in its selector. At exit the loop
  takes the answers of the calls under way, ends the call threads and
  sends what is left with its own link.
- At most once: an entry is started by a Lua script that acknowledges it
  and adds STARTED only when its acknowledgement was the one that took it
  off the pending list; only then does a local worker get it. A worker
  that dies with a started request gets LOST sent for it (the dispatcher
  answers 502) and is restarted; a request is never run twice.
- Request ids are the dispatchers', and two dispatchers may use the same
  id: a started request gets a local id (remote_relay.py), mapped back to
  (dispatcher, request id) for every message the worker sends about it.
- An entry older than its timeout is acknowledged and dropped unrun (its
  dispatcher answered 504 already); its age is measured on the Redis
  server's clock (TIME, read once a second and carried forward by this
  host's monotonic clock).
- Redis going away, or refusing commands (out of memory, read only, no
  permission, the group lost): logged once; workers keep running and
  finish what they hold; answers wait in a bounded outbox; the link and
  the reader retry with a back-off capped at 5 s, re-create the group if
  Redis lost it and go on. Entries whose start got no answer are started
  again once Redis is back (the start script is idempotent): each runs
  once, or not at all if another consumer took it.
- SIGTERM/SIGINT: wait for a start under way (its entries won are run),
  read nothing more, release the entries read but not started
  (claimable by another host at once), let started requests finish and
  relay their answers, stop the workers gracefully (teardown runs) once
  each has answered, deferred or begun streaming the request it was
  given (a worker told to stop hands back one still in its channel, and
  no sibling would run it), delete the alive key, leave the consumer
  set, exit 0. A second signal, or `graceful_timeout` seconds, kills the
  workers.
- The consumer name is HOST:PID:RANDOM (or given): two hosts never share
  one, even containers that all run as PID 1 on the same host name.

Must never: run an entry it did not win, block its loop on Redis for
longer than a short call, compare this host's clock with another's (the
age of an entry comes from Redis TIME), or answer a client itself (only
dispatchers talk to clients).
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import messages
from . import remote_protocol as rp
from .log import LOG_INFO, Logger, LogOutput
from .messages import Message
from .pending import ASSIGNED, Pending
from .pool import WorkerPool
from .remote_consumer import (READ_BLOCK_MS, RETRY_MAX, SOCKET_TIMEOUT,
                              CallThread, RedisClient, RedisDown, RedisLink,
                              StreamReader, add_replies, start_entries)
from .remote_relay import Job, Relay

if TYPE_CHECKING:
    from .output_capture import WorkerOutput
    from .request import Data
    from .service import Service
    from .worker import Worker
    from .worker_handle import WorkerHandle

LOG_NAME: Final = 'uhttp.workers.remote'
TICK: Final = 0.5           # seconds between two supervision passes at most
STARTUP_WAIT: Final = 5.0   # seconds to wait for Redis at start-up
EXIT_FAILED: Final = 1
# seconds to wait for the stream reader at exit: a blocking read, a call
# that times out and a back-off pause, at most
READER_JOIN: Final = (READ_BLOCK_MS / 1000 + SOCKET_TIMEOUT + RETRY_MAX + 1)
# seconds to wait at exit for a start or a send under way: one call that
# times out at most
CALL_WAIT: Final = SOCKET_TIMEOUT + 1


class StartupError(Exception):
    """The remote workers cannot start (Redis unreachable, no workers)."""


class _Waiting:
    """An entry read but not started yet (waits for an idle worker)."""

    __slots__ = ('entry_id', 'dispatcher_id', 'timeout_ms', 'message')

    def __init__(self, entry_id: bytes, dispatcher_id: str, timeout_ms: int,
                 message: Message) -> None:
        self.entry_id = entry_id
        self.dispatcher_id = dispatcher_id
        self.timeout_ms = timeout_ms
        self.message = message


class RemoteWorkers:
    """Runs `num_workers` processes of `worker_class` for the remote pool
    `pool_name` (default: the class name) whose requests are in the Redis
    at `redis_url`. `run()` returns the exit status."""

    def __init__(self, worker_class: type[Worker], redis_url: str,
                 pool_name: str | None = None, num_workers: int = 1,
                 log_level: int = LOG_INFO, graceful_timeout: float = 30,
                 worker_kwargs: Mapping[str, Any] | None = None,
                 consumer: str | None = None) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # the random part: host names and pids repeat across containers
        self.consumer = consumer or \
            f'{self.host}:{self.pid}:{uuid.uuid4().hex[:6]}'
        self.pool = WorkerPool(
            worker_class, num_workers, name=pool_name,
            graceful_timeout=graceful_timeout,
            worker_kwargs=worker_kwargs)
        self.pool_name = self.pool.name
        self.redis_url = redis_url
        self._output = LogOutput(sys.stderr)
        self._log = Logger(LOG_NAME, level=log_level,
                           emit=self._output.write)
        self._selector = selectors.DefaultSelector()
        self._link = RedisLink(redis_url, self.pool_name, self.consumer,
                               self._log.log)
        self._reader = StreamReader(redis_url, self.pool_name, self.consumer,
                                    self._log.log)
        # the starts and the replies, each made by a thread of its own so
        # that the loop never waits for their round trips
        self._starter = CallThread('redis-starts', redis_url)
        self._writer = CallThread('redis-replies', redis_url)
        self._flush_needed: set[WorkerHandle] = set()
        # started requests, and the replies they owe
        self._relay = Relay(self.consumer, self._log.log)
        # read, not started yet (waiting for an idle worker)
        self._waiting: collections.deque[_Waiting] = collections.deque()
        # their start got no answer: started again once Redis answers
        self._uncertain: list[_Waiting] = []
        # their start is under way (the starter thread's call)
        self._starting: list[_Waiting] = []
        # how many replies the writer thread's call is adding
        self._sending = 0
        # started and held by no worker: handed back unrun by a stopping
        # worker, or won by a start whose answer came when none was idle
        self._returned: collections.deque[Job] = collections.deque()
        self._handled = 0
        self._next_beat = 0.0
        self._state = 'starting'    # running, stopping, done
        self._signals = 0
        self._killed = False
        self._stop_began: float | None = None
        self._workers_stopped = False
        self.exit_status = 0
        self._signal_pipe: tuple[int, int] | None = None

    # -- PoolHost: what the pool uses of its host ---------------------------

    @property
    def log(self) -> Logger:
        """This process's logger."""
        return self._log

    @property
    def accepts_workers(self) -> bool:
        """True until the stop begins."""
        return self._state in ('starting', 'running')

    @property
    def is_running(self) -> bool:
        """True while requests are taken."""
        return self._state == 'running'

    @property
    def services(self) -> Mapping[str, Service]:
        """No helper services: they belong to a dispatcher's host."""
        return {}

    def worker_output(self, handle: WorkerHandle) -> WorkerOutput | None:
        """Workers write to this process's stdout and stderr."""
        return None

    def lifecycle_hook(self, name: str, *args: Any) -> None:
        """No application hooks here (they are the Dispatcher's)."""

    def worker_started(self, pool: WorkerPool, handle: WorkerHandle) -> None:
        """Log a started worker process."""
        self._log.debug('worker %s started (pid %s)', handle.name,
                        handle.pid)

    def watch_worker(self, handle: WorkerHandle) -> None:
        """Watch the channel and the exit of a started worker."""
        assert handle.channel is not None and handle.process is not None
        self._selector.register(
            handle.channel.sock, selectors.EVENT_READ,
            lambda _mask: self._on_worker_readable(handle))
        self._selector.register(
            handle.process.sentinel, selectors.EVENT_READ,
            lambda _mask: self._on_worker_exit(handle))
        if handle.channel.has_output:
            self._flush_needed.add(handle)

    def worker_reaped(self, handle: WorkerHandle) -> None:
        """A worker's exit status is known: log it, let the pool restart
        it (or not)."""
        handle.awaiting_exit = False
        index, pid, lost = handle.index, handle.pid, handle.lost
        reason, _exitcode = self.pool.on_exit(handle)
        if reason == 'stopped':
            self._log.info('worker %s[%d] (pid %s) stopped', self.pool_name,
                           index, pid)
        else:
            self._log.error('worker %s[%d] (pid %s) %s; %d requests lost',
                            self.pool_name, index, pid, reason, lost)

    def wants_flush(self, handle: WorkerHandle) -> None:
        """A message was queued for this worker."""
        self._flush_needed.add(handle)

    def pool_degraded(self, pool: WorkerPool) -> None:
        """Too many crashes: fewer idle workers, so fewer entries read."""
        self._log.critical('pool %s degraded: workers are restarted with '
                           'a back-off', pool.name)

    def pool_failed_to_start(self, pool: WorkerPool, reason: str) -> None:
        """No worker ever got ready: stop with a non-zero status."""
        self._log.critical('pool %s: all %d workers failed at start-up (%s);'
                           ' exiting with status %d', pool.name,
                           pool.num_workers, reason, EXIT_FAILED)
        self.exit_status = EXIT_FAILED
        self._begin_stop()

    def submit_internal(self, pool: WorkerPool, method: str, path: str,
                        data: Data, headers: dict[str, str],
                        query: dict[str, Any] | None = None,
                        to_all: bool = False) -> None:
        """Internal requests belong to a dispatcher, not to this host."""
        self._log.warning('%s %s: internal requests are not run by remote '
                          'workers; dropped', method, path)

    # -- running ----------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status. Raises
        StartupError when Redis cannot be reached at start."""
        self._watch_signals()
        self._connect_at_start()
        self._selector.register(self._reader, selectors.EVENT_READ,
                                lambda _mask: self._on_entries())
        self._selector.register(self._starter, selectors.EVENT_READ,
                                lambda _mask: self._on_started())
        self._selector.register(self._writer, selectors.EVENT_READ,
                                lambda _mask: self._on_sent())
        self._log.info('consumer %s of pool %s: %d workers of %s, Redis %r',
                       self.consumer, self.pool_name, self.pool.num_workers,
                       self.pool.worker_class.__name__, self._link)
        self._state = 'running'
        # forked before the reader thread exists (a fork copies no thread)
        self.pool.start(self)
        self._reader.start()
        self._starter.start()
        self._writer.start()
        try:
            self._loop()
        finally:
            self._finish()
        return self.exit_status

    def _connect_at_start(self) -> None:
        deadline = time.monotonic() + STARTUP_WAIT
        while True:
            try:
                # alive before joining: a claim pass of another host never
                # takes this consumer for a dead one
                self._link.heartbeat(self.host, self.pid, 0, 0, 0)
                self._link.connect()
                return
            except RedisDown as err:
                if self._signals:
                    raise StartupError('stopped by a signal while waiting '
                                       f'for Redis at {self._link!r}'
                                       ) from None
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f'cannot reach Redis at {self._link!r}: {err}'
                    ) from None
                time.sleep(0.2)

    def _loop(self) -> None:
        while self._state != 'done':
            for key, mask in self._selector.select(self._timeout()):
                key.data(mask)
            now = time.monotonic()
            self.pool.supervise(now)
            self._check_signals()
            if self._link.reconnect_due(now):
                self._reconnect()
            self._start_waiting()
            self._flush_workers()
            self._send_replies()
            if now >= self._next_beat:
                self._heartbeat(now)
            if self._state == 'running':
                self._reader.want(self._free_slots())
            elif self._state == 'stopping':
                self._give_returned()
                self._stop_workers_when_drained(now)
                if self.pool.all_exited():
                    self._state = 'done'

    def _timeout(self) -> float:
        # (replies are sent as the writer thread's calls end: it wakes the
        # loop then)
        return min(TICK, max(0.0, self._next_beat - time.monotonic()))

    def _idle_workers(self) -> list[WorkerHandle]:
        return [h for h in self.pool.workers if h.is_idle]

    def _free_slots(self) -> int:
        return max(0, len(self._idle_workers()) - len(self._waiting)
                   - len(self._returned) - len(self._uncertain)
                   - len(self._starting))

    # -- entries from the stream ------------------------------------------

    def _on_entries(self) -> None:
        entries = self._reader.take()
        if self._state != 'running':
            # read as the stop began: for another consumer to take at once
            self._release([entry_id for entry_id, _ in entries])
            return
        held = self._held_entry_ids() if entries else set()
        for entry_id, fields in entries:
            if entry_id in held:
                # our own pending entry claimed back (XAUTOCLAIM returns
                # any consumer's, after CLAIM_IDLE_MS) while we still hold
                # it: the start script would let us win it a second time
                self._log.debug('entry %s already held here, skipped',
                                entry_id.decode(errors='replace'))
                continue
            try:
                dispatcher_id, timeout_ms, message = rp.decode_request(fields)
                _check_layout(message)
            except (rp.ProtocolError, RecursionError) as err:
                # (RecursionError: JSON nested too deep to decode)
                self._log.error('entry %s of %s is malformed, dropped: %s',
                                entry_id.decode(errors='replace'),
                                rp.requests_stream(self.pool_name), err)
                self._ack_quietly(entry_id)
                continue
            self._waiting.append(
                _Waiting(entry_id, dispatcher_id, timeout_ms, message))

    def _held_entry_ids(self) -> set[bytes]:
        """Entries read here and not yet started or released."""
        return {waiting.entry_id for held in (
            self._waiting, self._starting, self._uncertain)
            for waiting in held}

    def _ack_quietly(self, entry_id: bytes) -> None:
        try:
            self._link.ack(entry_id)
        except RedisDown:
            pass    # it stays pending; a claim brings it back (and drops it)

    def _give_returned(self) -> list[WorkerHandle]:
        """Requests started here and held by no worker go to idle workers
        (returns the workers still idle)."""
        idle = self._idle_workers()
        while idle and self._returned and not self._workers_stopped:
            self._give(idle.pop(), self._returned.popleft())
        return idle

    def _start_waiting(self) -> None:
        """Give returned requests, then waiting entries, to idle workers."""
        if not (self._waiting or self._returned or self._uncertain) \
                or self._state != 'running':
            return
        idle = self._give_returned()
        if not idle or not self._link.up or self._starter.busy:
            return
        if self._uncertain:
            # first the starts that got no answer (run once either way),
            # no more than there are idle workers now
            count = len(idle)
            batch = self._uncertain[:count]
            self._uncertain = self._uncertain[count:]
            self._start_batch(batch)
            return
        if not self._waiting:
            return
        try:
            batch = self._fresh_entries(len(idle))
        except RedisDown:
            return      # no clock: they wait for the link to come back
        if batch:
            self._start_batch(batch)

    def _start_batch(self, batch: list[_Waiting]) -> None:
        """Have the starter thread start `batch` (no more entries than
        there are idle workers); `_on_started` gets its answer."""
        starts = [(w.entry_id, w.dispatcher_id, w.message[1])
                  for w in batch]
        pool, consumer = self.pool_name, self.consumer

        def start(client: RedisClient) -> tuple[list[bool | None],
                                                 BaseException | None]:
            return start_entries(client, pool, consumer, starts)
        self._starting = batch
        self._starter.submit(start)

    def _on_started(self, wait: float = 0.0) -> None:
        """The starter thread's answer: each entry won goes to an idle
        worker (or waits for one among the returned). An entry whose start
        got no answer is kept to be started again: the start script may
        have run (acknowledged, STARTED added) and only this consumer can
        run it. Once the workers were told to stop, an entry won is LOST
        (never run)."""
        result = self._starter.result(wait)
        if result is None:
            return
        batch, self._starting = self._starting, []
        value, err = result
        if err is not None:
            self._uncertain.extend(batch)
            self._link.down(err)
            return
        won, error = value
        if error is not None:
            self._link.down(error)
        for waiting, ours in zip(batch, won):
            if ours is None:
                self._uncertain.append(waiting)
            elif ours:
                job = self._relay.start(waiting.dispatcher_id,
                                        waiting.message)
                if not self._workers_stopped:
                    # (also while stopping: the workers run it before
                    # they are told to stop)
                    self._returned.append(job)
                else:
                    self._relay.finish(job.local_id)
                    self._relay.lost(job, _STOPPED_BEFORE)
            else:
                self._log.debug('request %s of dispatcher %s was taken by '
                                'another consumer', waiting.message[1],
                                waiting.dispatcher_id)

    def _fresh_entries(self, count: int) -> list[_Waiting]:
        """Up to `count` waiting entries still young enough to run; those
        older than their timeout are acknowledged and dropped unrun (when
        that fails they stay pending, a claim brings them back, and the
        fresh ones are put back: none is taken). Raises RedisDown, taking
        none, when the clock is unknown."""
        now_ms = self._link.server_time_ms()
        fresh: list[_Waiting] = []
        stale: list[bytes] = []
        while self._waiting and len(fresh) < count:
            waiting = self._waiting.popleft()
            age = rp.entry_age_ms(waiting.entry_id, now_ms)
            if age <= waiting.timeout_ms:
                fresh.append(waiting)
                continue
            self._log.info('request %s of dispatcher %s waited %d ms > its '
                           'timeout %d ms: dropped', waiting.message[1],
                           waiting.dispatcher_id, age, waiting.timeout_ms)
            stale.append(waiting.entry_id)
        if stale:
            try:
                self._link.ack(*stale)
            except RedisDown:
                # logged by the link; the stale ones stay pending (a claim
                # brings them back); the fresh ones wait for the link
                self._waiting.extendleft(reversed(fresh))
                return []
        return fresh

    def _give(self, handle: WorkerHandle, job: Job) -> None:
        pending = Pending(job.local_id, None, self.pool, job.message)
        pending.state = ASSIGNED
        job.pending = pending
        handle.take(pending)
        self.pool.send_to(handle, job.message)

    # -- the workers' channels ----------------------------------------------

    def _flush_workers(self) -> None:
        flush_needed, self._flush_needed = self._flush_needed, set()
        for handle in flush_needed:
            channel = handle.channel
            if channel is None or channel.closed:
                continue
            if not self.pool.flush(handle):
                self._watch(handle, selectors.EVENT_READ
                            | selectors.EVENT_WRITE)

    def _watch(self, handle: WorkerHandle, events: int) -> None:
        assert handle.channel is not None
        try:
            self._selector.modify(
                handle.channel.sock, events,
                lambda mask: self._on_worker_io(handle, mask))
        except (KeyError, ValueError):
            pass

    def _on_worker_io(self, handle: WorkerHandle, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and self.pool.flush(handle):
            self._watch(handle, selectors.EVENT_READ)
        if mask & selectors.EVENT_READ:
            self._on_worker_readable(handle)

    def _on_worker_readable(self, handle: WorkerHandle) -> None:
        channel = handle.channel
        assert channel is not None
        batch = channel.receive()
        if batch:
            handle.last_seen = time.monotonic()
            for message in batch:
                self._on_worker_message(handle, message)
        if channel.closed:
            handle.ready = False
            self._unwatch(channel.sock)

    def _unwatch(self, fileobj: Any) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def _on_worker_exit(self, handle: WorkerHandle) -> None:
        if handle.channel is None or handle.exited or handle.awaiting_exit:
            return
        process = handle.process
        assert process is not None
        handle.ready = False
        for message in handle.channel.receive():
            self._on_worker_message(handle, message)
        self._unwatch(handle.channel.sock)
        self._unwatch(process.sentinel)
        handle.channel.close()
        self._flush_needed.discard(handle)
        process.join(0)     # never blocks
        # (the exit status may not exist yet: the pool reaps it later)
        reason = f'worker {handle.name} (pid {handle.pid}) ' + (
            'ended' if process.exitcode is None
            else self.pool.exit_reason(handle))
        for pending in handle.take_all_back():
            job = self._relay.finish(pending.request_id)
            if job is not None:
                self._log.error('request %s of dispatcher %s lost: %s',
                                job.request_id, job.dispatcher_id, reason)
                self._relay.lost(job, reason)
        if process.exitcode is None:
            handle.awaiting_exit = True     # the pool reaps it later
            return
        self.worker_reaped(handle)

    def _on_worker_message(self, handle: WorkerHandle,
                           message: Message) -> None:
        kind = message[0]
        if kind in _ABOUT_A_REQUEST:
            self._on_request_message(handle, message)
        elif kind == messages.KEEP_ALIVE:
            self._relay.keep_alive(message[1])
        elif kind == messages.LOG:
            self._on_worker_log(message)
        elif kind == messages.HEARTBEAT:
            handle.handled = message[2]
        elif kind == messages.READY:
            handle.pid = message[1]
            self._log.info('worker %s ready (pid %s)', handle.name,
                           handle.pid)
            self.pool.on_ready(handle)
        elif kind == messages.ACCEPTING:
            self.pool.on_accepting(handle, message[1])
        elif kind == messages.RETURNED:
            self._on_returned(handle, message[1])
        elif kind == messages.FORWARD or kind in messages.WS_WORKER_KINDS:
            self._log.warning('worker %s: message kind %s is not carried by '
                              'remote pools; dropped', handle.name, kind)
        else:
            self._log.error('worker %s sent an unknown message kind %r',
                            handle.name, kind)

    def _on_request_message(self, handle: WorkerHandle,
                            message: Message) -> None:
        kind, local_id = message[0], message[1]
        job = self._relay.get(local_id)
        if job is None or job.pending is None:
            self._log.debug('worker %s: message kind %s for unknown request '
                            '%s dropped', handle.name, kind, local_id)
            return
        if kind in (messages.RESPONSE, messages.STREAM_END):
            self._relay.finish(local_id)
            handle.forget(job.pending)
            self._handled += 1
        elif kind in (messages.DEFERRED, messages.STREAM_START):
            handle.release(job.pending)     # the worker is free again
        self._relay.from_worker(job, message)

    def _on_returned(self, handle: WorkerHandle, local_id: int) -> None:
        """A stopping worker handed a started request back unrun: another
        local worker runs it, or it is LOST when none will."""
        job = self._relay.get(local_id)
        if job is None or job.pending is None:
            return
        handle.forget(job.pending)
        job.pending = None
        if self._state == 'running':
            self._returned.append(job)
        else:
            self._relay.finish(local_id)
            self._relay.lost(job, _STOPPED_BEFORE)

    def _on_worker_log(self, message: Message) -> None:
        _, name, level, text, details = message
        exc_text = (details or {}).get('exc_text')
        if exc_text:
            text = f'{text}\n{exc_text}'
        self._output.write(name, level, text)

    # -- replies and heartbeats ---------------------------------------------

    def _send_replies(self) -> None:
        """Have the writer thread add what is queued (unless it is adding
        a batch already: what comes meanwhile goes in the next one)."""
        if not self._relay.waiting_replies or not self._link.up \
                or self._writer.busy:
            return
        batch = self._relay.batch()
        pool = self.pool_name

        def send(client: RedisClient) -> None:
            add_replies(client, pool, batch)
        self._sending = len(batch)
        self._writer.submit(send)

    def _on_sent(self, wait: float = 0.0) -> None:
        """The writer thread's answer: the batch is out of the outbox, or
        kept to be sent again once the link is back (a batch added whose
        answer was lost is dropped by the dispatcher: its numbers)."""
        result = self._writer.result(wait)
        if result is None:
            return
        sending, self._sending = self._sending, 0
        _value, err = result
        if err is not None:
            self._link.down(err)
            return
        self._relay.sent(sending)

    def _send_replies_now(self) -> None:
        """Add what is queued with the main link, waiting for the answer
        (at exit, once the writer thread ended)."""
        if not self._relay.waiting_replies or not self._link.up:
            return
        batch = self._relay.batch()
        try:
            self._link.send(batch)
        except RedisDown:
            return  # kept: sent once the link is back
        self._relay.sent(len(batch))

    def _heartbeat(self, now: float) -> None:
        self._next_beat = now + rp.HEARTBEAT_INTERVAL
        if not self._link.up or self._state == 'done':
            return
        busy = sum(1 for h in self.pool.workers if h.active)
        try:
            self._link.heartbeat(self.host, self.pid,
                                 self.pool.workers_alive, busy,
                                 self._handled)
        except RedisDown:
            pass    # logged once by the link; retried after its back-off

    def _reconnect(self) -> None:
        try:
            self._link.connect()
        except RedisDown:
            return
        self._log.warning('Redis at %r is back', self._link)
        self._next_beat = 0.0

    # -- signals and the stop -------------------------------------------------

    def _watch_signals(self) -> None:
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        self._signal_pipe = (reader, writer)
        signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self._selector.register(reader, selectors.EVENT_READ,
                                lambda _mask: self._drain_signal_pipe())

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self._signals += 1      # the loop acts on it (a handler only counts)

    def _drain_signal_pipe(self) -> None:
        assert self._signal_pipe is not None
        try:
            while os.read(self._signal_pipe[0], 64):
                pass
        except BlockingIOError:
            pass

    def _check_signals(self) -> None:
        if not self._signals:
            return
        if self._state == 'running':
            self._settle_start()
            self._log.info('stopping: finishing %d started requests',
                           len(self._relay))
            self._begin_stop()
        if self._signals > 1 and not self._killed:
            self._killed = True
            self._log.warning('second signal: killing the workers')
            self.pool.kill()

    def _settle_start(self) -> None:
        """Before the stop: wait for the start under way (one call at
        most) and give the entries it won to idle workers, which finish
        them as they stop (as when its answer had come first)."""
        if not self._starter.busy or self._state != 'running':
            return
        self._on_started(CALL_WAIT)
        self._give_returned()
        # on their way before the stop message and its SIGTERM
        self._flush_workers()

    def _begin_stop(self) -> None:
        if self._state not in ('starting', 'running'):
            return
        self._settle_start()
        self._state = 'stopping'
        self._stop_began = time.monotonic()
        self._reader.stop()
        self._unblock_reader()
        # read, never started: another consumer may take them at once
        self._release([waiting.entry_id for waiting in self._waiting])
        self._waiting.clear()
        # started here (`_returned`): given to workers as they become idle;
        # the workers are stopped once each has begun what it was given
        self._stop_workers_when_drained(self._stop_began)

    def _stop_workers_when_drained(self, now: float) -> None:
        """Stop the workers once none holds a request it has not answered,
        deferred or begun streaming, or at `graceful_timeout`.

        A worker told to stop hands back, unrun, a request still in its
        channel; here no sibling could run it (all stop), so a request this
        host started and gave out would be LOST though it could have run.
        Until its first answer we cannot tell whether it still sits in the
        channel. Each worker then finishes what it holds (deferred and
        streaming too), runs teardown() and exits; SIGKILL at the same
        deadline."""
        if self._workers_stopped or self._stop_began is None:
            return
        deadline = self._stop_began + self.pool.graceful_timeout
        if now < deadline and (self._returned or any(
                h.active for h in self.pool.workers if not h.exited)):
            return
        self._workers_stopped = True
        for job in self._returned:      # (the deadline came first)
            self._relay.finish(job.local_id)
            self._relay.lost(job, _STOPPED_BEFORE)
        self._returned.clear()
        self.pool.stop()
        for handle in self.pool.workers:
            if handle.stopping and not handle.exited \
                    and handle.kill_deadline is not None:
                # one graceful_timeout in all, counted from the signal
                handle.kill_deadline = min(handle.kill_deadline, deadline)

    def _unblock_reader(self) -> None:
        """End the reader's blocking read now (it reads no more)."""
        if not self._link.up:
            return
        try:
            self._link.unblock(self._reader.client_id)
        except RedisDown:
            pass    # logged by the link; the read ends at its timeout

    def _release(self, entry_ids: list[bytes]) -> None:
        """Entries delivered here that this host will not start: made
        claimable by another consumer now rather than after CLAIM_IDLE_MS."""
        if not entry_ids:
            return
        try:
            self._link.release(entry_ids)
        except RedisDown:
            self._log.warning('%d entries read but not started are left '
                              'to be claimed after %d ms', len(entry_ids),
                              rp.CLAIM_IDLE_MS)
            return
        self._log.info('released %d entries read but not started',
                       len(entry_ids))

    def _finish(self) -> None:
        """After the loop: last replies, leave the pool, close. Each step
        runs even when one before it failed (each failure is logged), so
        the workers never outlive this process and the reader is joined."""
        self._step('killing the workers', self._kill_unless_done)
        self._step('ending the started requests', self._lose_the_rest)
        self._reader.stop()
        self._step('sending the last replies', self._send_last_replies)
        self._step('ending the stream reader', self._join_reader)
        self._step('leaving the pool', self._leave)
        self._step('closing the Redis link', self._link.close)
        self._log.info('consumer %s stopped', self.consumer)

    def _step(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as err:  # pylint: disable=broad-except
            # a step that failed must not skip the next ones
            self._log.error('at exit, %s failed: %r', what, err)
            if self.exit_status == 0:
                self.exit_status = EXIT_FAILED

    def _kill_unless_done(self) -> None:
        if self._state != 'done':     # an error in the loop: no orphans
            self.pool.kill()

    def _lose_the_rest(self) -> None:
        for job in self._relay.finish_all():
            self._relay.lost(job, 'the remote workers stopped')
        self._returned.clear()     # (those were among the started ones)

    def _send_last_replies(self) -> None:
        """Send what is left, retrying while Redis is away until
        `graceful_timeout` seconds have passed since the stop began."""
        deadline = time.monotonic() + self.pool.graceful_timeout \
            if self._stop_began is None \
            else self._stop_began + self.pool.graceful_timeout
        self._end_call_threads()
        while True:
            if not self._link.up and self._link.reconnect_due(
                    time.monotonic()):
                self._reconnect()
            if self._link.up:
                self._settle_uncertain()
                self._send_replies_now()
            if not (self._relay.waiting_replies or self._uncertain) \
                    or self._signals > 1 or time.monotonic() >= deadline:
                break
            time.sleep(0.05 if self._link.up else max(0.05, min(
                self._link.retry_at, deadline) - time.monotonic()))
        if self._relay.waiting_replies:
            self._log.error('%d replies could not be sent: Redis is away',
                            self._relay.waiting_replies)
        if self._uncertain:
            self._log.error('%d requests whose start got no answer may be '
                            'answered 504', len(self._uncertain))

    def _end_call_threads(self) -> None:
        """Take the answers of the calls under way, then end the starter
        and writer threads: what is left is sent by the main link. A call
        that did not answer in time counts as failed (a start is made
        again, a batch sent again: both are safe)."""
        if self._starter.busy:
            self._on_started(CALL_WAIT)
        if self._writer.busy:
            self._on_sent(CALL_WAIT)
        self._uncertain.extend(self._starting)
        self._starting = []
        for thread in (self._starter, self._writer):
            thread.stop()
            if thread.is_alive():
                thread.join(CALL_WAIT)
            if thread.is_alive():
                self._log.warning('the %s thread did not end in %.0f s',
                                  thread.name, CALL_WAIT)
            else:
                thread.close()

    def _settle_uncertain(self) -> None:
        """At a stop: entries whose start got no answer are started again
        (idempotent); one this consumer won gets LOST (never run here)."""
        if not self._uncertain:
            return
        batch, self._uncertain = self._uncertain, []
        try:
            won = self._link.start([(w.entry_id, w.dispatcher_id,
                                     w.message[1]) for w in batch])
        except RedisDown:
            self._uncertain = batch
            return
        for waiting, ours in zip(batch, won):
            if ours is None:
                self._uncertain.append(waiting)
            elif ours:
                job = self._relay.start(waiting.dispatcher_id,
                                        waiting.message)
                self._relay.finish(job.local_id)
                self._relay.lost(job, _STOPPED_BEFORE)

    def _leave(self) -> None:
        try:
            self._link.leave()
        except RedisDown:
            self._log.warning('could not delete the alive key: it expires '
                              'in %d ms', rp.ALIVE_TTL_MS)

    def _join_reader(self) -> None:
        if self._reader.is_alive():
            # one blocking read and one back-off pause at most
            self._reader.join(READER_JOIN)
        if self._reader.is_alive():
            # its connection may still answer: its wake-up pipe stays open
            # (the process exits anyway) rather than closed under it
            self._log.warning('the stream reader did not end in %.0f s',
                              READER_JOIN)
            return
        # read in its last moments: for another consumer to take at once
        self._release([entry_id for entry_id, _ in self._reader.take()])
        self._reader.close()


def _check_layout(message: Message) -> None:
    """Raise ProtocolError unless `message` is laid out as a REQUEST (see
    messages.request): a worker must never get one it cannot unpack."""
    if len(message) != 11 or not isinstance(message[1], int) \
            or not isinstance(message[2], str) \
            or not isinstance(message[3], str) \
            or not isinstance(message[5], dict):
        raise rp.ProtocolError('not laid out as a request message')


_STOPPED_BEFORE: Final = 'the remote workers stopped before it ran'
# the worker -> dispatcher kinds that carry a request id at index 1 and
# are relayed to that request's dispatcher
_ABOUT_A_REQUEST: Final = frozenset((
    messages.RESPONSE, messages.DEFERRED, messages.STREAM_START,
    messages.STREAM_DATA, messages.STREAM_END))

