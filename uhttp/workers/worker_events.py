"""The dispatcher's side of its workers: channels, exits, their messages.

A mixin of Dispatcher. It registers each worker's channel and exit sentinel
in the dispatcher's selector, writes queued messages when the channel can
take them, and turns what workers send (answers, stream frames, heartbeats,
log records, pause/resume, forwards) into actions on clients and pools. A
worker's exit fails exactly the requests it held.

Must never block on a channel, or trust a message to say which worker holds
a request: the dispatcher's own books (pool.assign) say that.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from uhttp import server as _server

from . import messages
from .log import WORKER_LOGGER, printable
from .pending import ASSIGNED, DEFERRED, DONE, STREAMING
from .request import Response
from .worker import APP_ERROR_MESSAGE

if TYPE_CHECKING:
    from .access_log import AccessLog
    from .log import Logger, LogOutput, LogRouter
    from .messages import Data, Message, Query
    from .metrics import Metrics
    from .pending import Pending, PendingTable, State
    from .pool import WorkerPool
    from .worker_handle import WorkerHandle

# the dispatcher's exit status when a pool could not start at all
EXIT_STARTUP_FAILED = 1

# Why a request left the pending table: the `reason` of on_pending_removed()
PENDING_COMPLETED = 'COMPLETED'          # its worker's answer was sent
PENDING_TIMEOUT = 'TIMEOUT'              # 504, or 503 if it never started
PENDING_DISCONNECTED = 'DISCONNECTED'    # the client left first
PENDING_STREAM_CLOSED = 'STREAM_CLOSED'  # its worker ended the stream
PENDING_SHUTDOWN = 'SHUTDOWN'            # 503: the dispatcher is stopping
PENDING_WORKER_DIED = 'WORKER_DIED'      # 502: its worker died (or the
                                         # pool is degraded: 503)


class VictimRequest:
    """The request of a victim, kept from the dispatcher's message to its
    worker (its connection is answered and may serve a next request)."""

    __slots__ = ('method', 'path', 'query', 'headers', 'data', 'body',
                 'remote_address')

    method: str
    path: str
    query: Query
    headers: dict[str, str]
    data: Data
    body: bytes | str | None
    remote_address: str | None

    def __init__(self, message: Message) -> None:
        (_, _, self.method, self.path, self.query, headers, self.data,
         self.remote_address) = message[:8]
        self.headers = dict(headers or {})
        data = self.data
        self.body = data if isinstance(data, (bytes, str)) else None


class Victim:
    """One request a dead worker took down, as on_worker_died() sees it:
    `client` (method, path, query, headers, data, body, remote_address),
    `pool`, `worker_id`, `streaming`, `timestamp` (time.time() it came)."""

    __slots__ = ('client', 'pool', 'worker_id', 'streaming', 'timestamp')

    def __init__(self, pending: Pending, handle: WorkerHandle) -> None:
        self.client = VictimRequest(pending.message)
        self.pool = pending.pool
        self.worker_id = handle.index
        self.streaming = pending.state == STREAMING
        self.timestamp = time.time() - (time.monotonic() - pending.started)


class WorkerEvents:
    """Worker channel events and messages (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    exit_status: int
    _state: str
    _selector: selectors.BaseSelector
    _pending: PendingTable
    _metrics: Metrics | None
    _access_log: AccessLog | None
    _log_router: LogRouter
    _log_output: LogOutput
    # workers with messages queued in their channel
    _flush_needed: set[WorkerHandle]
    # a worker gone, its exit status not known yet -> its failed requests
    _worker_victims: dict[WorkerHandle, list[tuple[int, Victim]]]
    _died_takes_victims: bool
    _has_response_hook: bool
    _has_removed_hook: bool
    _has_forward_hook: bool

    if TYPE_CHECKING:
        # pylint: disable=missing-function-docstring,too-many-arguments
        def on_worker_died(self, pool: WorkerPool, worker_id: int,
                           reason: str, exitcode: int | None,
                           victims: Sequence[tuple[int, Victim]] = (),
                           ) -> None: ...

        def on_response(self, response: Response,
                        pending: Pending) -> None: ...

        def stop(self, graceful: bool = True) -> None: ...

        def submit_internal(self, pool: WorkerPool, method: str, path: str,
                            data: Data, headers: dict[str, str],
                            query: Query = None,
                            to_all: bool = False) -> None: ...

        def _give_up(self, pending: Pending, status: int | None,
                     message: str | None = None,
                     reason: str | None = None) -> None: ...

        def _complete(self, pending: Pending) -> State: ...

        def _client_left(self, pending: Pending) -> None: ...

        def _removed(self, pending: Pending, reason: str) -> None: ...

        def _admission_changed(self) -> None: ...

        @staticmethod
        def _resume_reading(pending: Pending) -> None: ...

        def _send_answer(self, client: Any, wire: bytes,
                         keep_alive: bool) -> None: ...

        def _call_hook(self, name: str, *args: Any) -> Any: ...

        def _find_pool(self, path: str) -> WorkerPool | None: ...

        # WebSocketDispatch's
        def _ws_worker_gone(self, handle: WorkerHandle) -> None: ...

        def _on_ws_worker_message(self, handle: WorkerHandle,
                                  message: Message) -> None: ...

    def watch_worker(self, handle: WorkerHandle) -> None:
        """Register a started worker's channel and exit sentinel."""
        assert handle.channel is not None and handle.process is not None
        self._selector.register(
            handle.channel.sock, selectors.EVENT_READ,
            lambda _f, _m: self._on_worker_readable(handle))
        self._selector.register(
            handle.process.sentinel, selectors.EVENT_READ,
            lambda _f, _m: self._on_worker_exit(handle))
        if handle.channel.has_output:
            self._flush_needed.add(handle)

    def wants_flush(self, handle: WorkerHandle) -> None:
        """A message was queued for this worker."""
        self._flush_needed.add(handle)

    def _flush_workers(self) -> None:
        flush_needed, self._flush_needed = self._flush_needed, set()
        for handle in flush_needed:
            assert handle.channel is not None   # (a watched worker's)
            if handle.channel.closed:
                continue
            if not handle.pool.flush(handle):
                # the rest goes when the socket is writable (no spinning)
                self._watch_writable(handle)

    def _watch_writable(self, handle: WorkerHandle) -> None:
        # Only while its socket buffer is full: a worker busy with a long
        # request reads nothing for a while.
        assert handle.channel is not None   # (a watched worker's)
        try:
            self._selector.modify(
                handle.channel.sock,
                selectors.EVENT_READ | selectors.EVENT_WRITE,
                lambda _f, mask: self._on_worker_io(handle, mask))
        except (KeyError, ValueError):
            pass

    def _on_worker_io(self, handle: WorkerHandle, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and handle.pool.flush(handle):
            self._flush_needed.discard(handle)
            assert handle.channel is not None   # (a watched worker's)
            try:
                self._selector.modify(
                    handle.channel.sock, selectors.EVENT_READ,
                    lambda _f, _m: self._on_worker_readable(handle))
            except (KeyError, ValueError):
                pass
        if mask & selectors.EVENT_READ:
            self._on_worker_readable(handle)

    def _on_worker_readable(self, handle: WorkerHandle) -> None:
        channel = handle.channel
        assert channel is not None  # (a watched worker's)
        batch = channel.receive()
        if channel.closed:
            handle.ready = False  # its last answers must not pull in more
        if batch:
            handle.last_seen = time.monotonic()
            for message in batch:
                self._on_worker_message(handle, message)
        if channel.closed:
            self._unwatch_channel(handle)

    def _unwatch_channel(self, handle: WorkerHandle) -> None:
        assert handle.channel is not None   # (a watched worker's)
        try:
            self._selector.unregister(handle.channel.sock)
        except (KeyError, ValueError):
            pass

    def _on_worker_exit(self, handle: WorkerHandle) -> None:
        if handle.channel is None or handle.exited or handle.awaiting_exit:
            return
        assert handle.process is not None   # (as it has a channel)
        handle.ready = False  # its last answers must not pull in more
        for message in handle.channel.receive():
            self._on_worker_message(handle, message)
        self._unwatch_channel(handle)
        try:
            self._selector.unregister(handle.process.sentinel)
        except (KeyError, ValueError):
            pass
        handle.channel.close()
        self._flush_needed.discard(handle)
        self._ws_worker_gone(handle)
        orphans, unstarted = handle.split_orphans(handle.take_all_back())
        handle.lost = len(orphans)
        # on_worker_died() gets them once the exit status is known
        self._worker_victims[handle] = [
            (pending.request_id, Victim(pending, handle))
            for pending in orphans
            if pending.state != DONE and pending.client is not None]
        self._requeue_unstarted(handle, unstarted)
        handle.process.join(0)  # never blocks
        if handle.process.exitcode is None:
            # the sentinel can fire a moment before the exit status exists:
            # answer its clients now, account for the exit when it is known
            handle.awaiting_exit = True
            self._fail_orphans(handle, orphans, 'ended')
            return
        self._fail_orphans(handle, orphans, handle.pool.exit_reason(handle))
        self.worker_reaped(handle)

    def _requeue_unstarted(self, handle: WorkerHandle,
                           unstarted: Sequence[Pending]) -> None:
        """Requests the dead worker never started go to a sibling, first in
        line (a request runs at most once: these never ran)."""
        pool = handle.pool
        for pending in reversed(unstarted):
            if pending.state != ASSIGNED or pending.to_all:
                continue
            if pending.client is not None and pending.client.socket is None:
                continue  # its client left: the sweep forgets it
            pool.requeue(pending)
        if unstarted:
            self.log.info('worker %s ended: %d requests it had not started '
                          'go to its siblings', handle.name, len(unstarted))
            pool.pump()

    def worker_reaped(self, handle: WorkerHandle) -> None:
        """The exit status of a worker that ended is known: restart it or
        not, log it, tell on_worker_died()."""
        handle.awaiting_exit = False
        pool = handle.pool
        index, pid, was_stopping = handle.index, handle.pid, handle.stopping
        orphans = range(handle.lost)
        victims = self._worker_victims.pop(handle, [])
        reason, exitcode = pool.on_exit(handle)
        if self._metrics is not None:
            self._metrics.worker_exited(pool.name, reason)
        if was_stopping and reason == 'stopped':
            self.log.info('worker %s[%d] (pid %s) stopped', pool.name, index,
                          pid)
        elif reason == 'restarted':
            self.log.warning('worker %s[%d] (pid %s) restarted; %d requests '
                             'failed', pool.name, index, pid, len(orphans))
        else:
            self.log.error('worker %s[%d] (pid %s) %s; %d requests failed',
                           pool.name, index, pid, reason, len(orphans))
            try:
                if self._died_takes_victims:
                    self.on_worker_died(pool, index, reason, exitcode,
                                        victims)
                else:   # an override written without `victims`
                    self.on_worker_died(pool, index, reason, exitcode)
            except Exception:  # pylint: disable=broad-except
                self.log.exception('on_worker_died() raised')
        pool.pump()

    def _fail_orphans(self, handle: WorkerHandle,
                      orphans: Iterable[Pending], reason: str) -> None:
        for pending in orphans:
            if pending.state == DONE or pending.client is None:
                continue
            self.log.error('request %s %s %s lost: worker %s %s',
                           pending.request_id, pending.client.method,
                           printable(pending.client.path), handle.name,
                           reason)
            if self._state == 'running':
                self._give_up(pending, 502, 'Worker Died')
            else:
                self._give_up(pending, 503, 'Shutting down')

    def pool_failed_to_start(self, pool: WorkerPool, reason: str) -> None:
        """Every worker of `pool` ended before any was ready: say why once
        and shut down with a non-zero exit, so that a deploy fails where
        it can be seen (WorkerPool(exit_on_startup_failure=False) keeps
        retrying instead)."""
        if reason == 'application error':
            why = APP_ERROR_MESSAGE
        else:
            why = f'{reason}; the error is logged above'
        self.log.critical(
            'pool %s: all %d workers failed at start-up (%s). Exiting with '
            'status %d; WorkerPool(exit_on_startup_failure=False) keeps '
            'retrying instead', pool.name, pool.num_workers, why,
            EXIT_STARTUP_FAILED)
        self.exit_status = EXIT_STARTUP_FAILED
        self.stop(graceful=True)

    def pool_degraded(self, pool: WorkerPool) -> None:
        """A pool just became degraded: its backlog gets 503 now."""
        for pending in pool.queued_requests():
            self._give_up(pending, 503, 'Service Unavailable',
                          PENDING_WORKER_DIED)
        pool.compact_backlog()

    # -- messages from workers ---------------------------------------------

    def _on_worker_message(self, handle: WorkerHandle,
                           message: Message) -> None:
        kind = message[0]
        if kind == messages.RESPONSE:
            self._on_response_message(handle, message)
        elif kind == messages.LOG:
            self._on_worker_log(handle, message)
        elif kind == messages.HEARTBEAT:
            handle.handled = message[2]
        elif kind == messages.DEFERRED:
            self._on_deferred(handle, message[1])
        elif kind == messages.KEEP_ALIVE:
            self.keep_alive_pending(message[1])
        elif kind in (messages.STREAM_START, messages.STREAM_DATA,
                      messages.STREAM_END):
            self._on_stream_message(handle, message)
        elif kind == messages.READY:
            handle.pid = message[1]
            self.log.info('worker %s ready (pid %s)', handle.name,
                          handle.pid)
            handle.pool.on_ready(handle)
        elif kind == messages.ACCEPTING:
            handle.pool.on_accepting(handle, message[1])
        elif kind == messages.RETURNED:
            self._on_returned(handle, message[1])
        elif kind == messages.FORWARD:
            self._on_forward(message)
        elif kind in messages.WS_WORKER_KINDS:
            self._on_ws_worker_message(handle, message)
        else:
            self.log.error('worker %s sent an unknown message kind %r',
                           handle.name, kind)

    def _on_worker_log(self, handle: WorkerHandle,
                       message: Message) -> None:
        """A worker's log record: to stdlib logger
        `uhttp.workers.worker.<pool>` (the worker's own logger name in the
        record's `worker_logger`, its index in `worker_id`), or to on_log()
        as `name` (`pool[index]:name` for a module's logger)."""
        _, name, level, text, details = message
        pool = handle.pool.name
        details = details or {}
        # a module's logger says which worker it ran in: Items[0]:mymodule
        short = f'{handle.name}:{name}' if details.pop('stdlib', False) \
            else name
        try:
            self._log_router.route(
                f'{WORKER_LOGGER}.{pool}', short, level, text,
                details.get('exc_text'), details, {
                    'worker_logger': name, 'worker_id': handle.index,
                    'pool': pool, 'processName': handle.name})
        except Exception as err:  # pylint: disable=broad-except
            self._log_output.write('dispatcher', 40, f'log handler raised '
                                   f'{err!r}; record: [{name}] {text}')

    def _on_response_message(self, handle: WorkerHandle,
                             message: Message) -> None:
        request_id = message[1]
        pool = handle.pool
        pending = handle.in_flight.get(request_id)
        if pending is None:
            self.log.debug('request %s: late answer dropped', request_id)
            pool.pump(handle)
            return
        handle.forget(pending)
        if pending.state != DONE and pending.client is not None:
            self.answer_pending(pending, message, handle.name)
        pool.pump(handle)

    def answer_pending(self, pending: Pending, message: Message,
                       by: str) -> None:
        """Send a worker's RESPONSE `message` to the client of `pending`
        (not done yet, with a client), from a local worker or a remote
        one: the request leaves the table, metrics and on_response() see
        it, the access log names `by`, the connection stays open or not
        as the answer says; then on_pending_removed()."""
        _, request_id, status, wire, keep_alive, route = message
        client = pending.client
        self._complete(pending)
        if self._metrics is not None:
            # (the pool of a client's request has a name)
            pool = cast('WorkerPool', pending.pool)
            self._metrics.answered(pool.name, route, status,
                                   time.monotonic() - pending.started)
        if self._has_response_hook:
            # before writing: once written, a keep-alive connection is reset
            # and the hook could no longer read the request it answers
            try:
                self.on_response(
                    Response.from_wire(request_id, status, wire), pending)
            except Exception:  # pylint: disable=broad-except
                self.log.exception('on_response() raised')
        if client.socket is not None:
            if self._access_log is not None:
                # the body is what follows the head the worker built
                client.note(status, len(wire) - wire.find(b'\r\n\r\n') - 4,
                            by, request_id)
            self._send_answer(client, wire, keep_alive)
        if self._has_removed_hook:
            self._removed(pending, PENDING_COMPLETED)

    def fail_pending(self, pending: Pending, status: int | None,
                     message: str | None = None,
                     reason: str | None = None) -> None:
        """End `pending` without its worker's answer: its client gets
        `status` with `message` (None: nothing), on_pending_removed()
        hears `reason` (by default, from `status`)."""
        self._give_up(pending, status, message, reason)

    def keep_alive_pending(self, request_ids: Iterable[int]) -> None:
        """Push the deadline of these assigned or deferred requests."""
        self._pending.keep_alive(request_ids, time.monotonic())

    def _on_deferred(self, handle: WorkerHandle, request_id: int) -> None:
        pool = handle.pool
        pending = handle.in_flight.get(request_id)
        if pending is None:
            return
        handle.release(pending)
        if pending.state == ASSIGNED:
            pending.state = DEFERRED
        elif pending.client is not None:
            # answered already (timeout, client left): the worker may drop it
            pool.drop(handle, pending)
        pool.pump(handle)

    def _on_stream_message(self, handle: WorkerHandle,
                           message: Message) -> None:
        kind, request_id = message[0], message[1]
        pending = handle.in_flight.get(request_id)
        if pending is None or pending.state == DONE \
                or pending.client is None:
            if kind != messages.STREAM_END and pending is not None:
                handle.pool.drop(handle, pending)
            elif pending is not None:
                handle.forget(pending)
            return
        if kind == messages.STREAM_START:
            handle.release(pending)
        elif kind == messages.STREAM_END:
            handle.forget(pending)
        self.relay_stream(pending, message, handle.name)
        if kind == messages.STREAM_START:
            handle.pool.pump(handle)

    def relay_stream(self, pending: Pending, message: Message,
                     by: str) -> None:
        """Pass a STREAM_START, STREAM_DATA or STREAM_END `message` of a
        worker (local or remote) to the client of `pending` (not done yet,
        with a client); the access log names `by`."""
        kind = message[0]
        client = pending.client
        if kind == messages.STREAM_START:
            self._start_stream(pending, message, by)
        elif kind == messages.STREAM_DATA:
            if not client.send_chunk(message[2]):
                self._client_left(pending)
        else:
            self._complete(pending)
            client.response_stream_end()
            if self._has_removed_hook:
                self._removed(pending, PENDING_STREAM_CLOSED)

    def _start_stream(self, pending: Pending, message: Message,
                      by: str) -> None:
        _, request_id, _status, headers, cookies = message
        self._pending.start_stream(pending)
        self._admission_changed()
        client = pending.client
        self._resume_reading(pending)
        if self._access_log is not None:
            client.access_by, client.access_id = by, request_id
        try:
            started = client.response_stream(headers=headers, cookies=cookies)
        except _server.HttpError as err:
            # nothing was sent (e.g. CR/LF in a header): answer 500 instead
            self.log.error('request %s: cannot start stream: %s',
                           request_id, err)
            pending.state = DEFERRED  # not streaming yet: a plain answer
            self._give_up(pending, 500, 'Internal Server Error')
            started = True
        if not started:
            self._client_left(pending)

    def _on_returned(self, handle: WorkerHandle, request_id: int) -> None:
        pool = handle.pool
        pending = handle.in_flight.get(request_id)
        if pending is None:
            return
        handle.forget(pending)
        if pending.state == ASSIGNED and not pending.to_all:
            # (a broadcast copy is not passed on: its sibling has its own)
            pool.requeue(pending)
        pool.pump()

    def _on_forward(self, message: Message) -> None:
        _, method, path, data, headers, to_all = message
        if self._has_forward_hook:   # 1.x's on_forward(route, data)
            self._call_hook('on_forward', path, data)
            return
        pool = self._find_pool(path)
        if pool is None:
            self.log.warning('forward to %s %s: no pool serves this path',
                             method, path)
            return
        self.submit_internal(pool, method, path, data, headers, to_all=to_all)

