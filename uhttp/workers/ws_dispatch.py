"""The dispatcher's side of WebSocket routes: sockets, pinning, groups.

A mixin of Dispatcher. An upgrade request for a @ws route of a pool passes
the dispatcher's do_check(), goes to the pool like any request (the
pending table, the least busy worker), passes the worker's do_check(), and
once that worker accepts it, is pinned to it and switched to the WebSocket
protocol by uhttp-server, which then parses frames, answers pings and
echoes close frames. This module turns whole messages into WS_MESSAGE for
the pinned worker (in the order they came) and the worker's WS_SEND,
WS_CLOSE, WS_JOIN, WS_LEAVE, WS_BROADCAST into frames on the sockets. A
broadcast crosses the channel once and is framed once; the dispatcher
writes it to every member connection, whichever worker holds it.

Every connection ends exactly once, in `_ws_end()`: its worker hears
WS_CLOSED (when it still runs), the access log gets one line, the metrics
count it. Ends: the client closed (its code), the handler closed (its
code), a message too big (1009), invalid UTF-8 (1007), a client that does
not read its send buffer (1008, dropped: it would not read the close frame
either), no answer to a ping (1006, dropped), idle (1000), the worker died
(1011), the worker was stopped (1012), the service shuts down (1001).

Must never: block, read a socket for a closed link, let a socket leave the
dispatcher, or keep an unbounded amount of output for one client.
"""

from __future__ import annotations

import selectors
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uhttp import server as _server

from . import messages
from .log import printable
from .pending import DONE
from .remote_pool import is_remote
from .worker_events import PENDING_COMPLETED
from .routing import Router
from .websocket import (
    CLOSE_ABNORMAL, CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA, CLOSE_NO_STATUS, CLOSE_NORMAL, CLOSE_POLICY,
    CLOSE_SERVICE_RESTART, CLOSE_TOO_BIG, cut_close_reason, collect_ws_routes)

if TYPE_CHECKING:
    from .access_log import AccessLog
    from .connection import Connection, Server
    from .log import Logger
    from .messages import Message
    from .pending import Pending, PendingTable, State
    from .pool import WorkerPool
    from .worker_handle import WorkerHandle

WS_SWEEP_INTERVAL = 0.5     # seconds between ping / idle checks
# Bytes queued in the dispatcher for one worker above which the WebSocket
# clients pinned to it are not read (TCP then slows them down) until the
# worker has caught up to half of it: a client faster than its handler
# must not grow the dispatcher's memory.
WS_INBOUND_LIMIT = 4 * 1024 * 1024
_JSON = {'content-type': 'application/json'}
_RETRY = {'content-type': 'application/json', 'retry-after': '1',
          'connection': 'close'}
_WS_CHUNKS = (_server.EVENT_WS_CHUNK_FIRST, _server.EVENT_WS_CHUNK_NEXT,
              _server.EVENT_WS_CHUNK_LAST)


class WsLink:
    """One open WebSocket connection in the dispatcher: the uhttp-server
    WebSocket (`ws`) and connection (`client`), the worker it is pinned to
    (`handle`), its groups and its counts."""

    __slots__ = ('id', 'ws', 'client', 'pool', 'handle', 'groups', 'opened',
                 'last_message', 'ping_sent', 'msgs_in', 'msgs_out',
                 'bytes_in', 'bytes_out', 'ended')

    id: int
    # uhttp-server's WebSocket (no annotations there)
    ws: Any
    client: Connection
    pool: WorkerPool
    handle: WorkerHandle
    groups: set[str]
    opened: float
    last_message: float
    ping_sent: float | None
    msgs_in: int
    msgs_out: int
    bytes_in: int
    bytes_out: int
    ended: bool

    # pylint: disable-next=too-many-arguments
    def __init__(self, link_id: int, ws: Any, client: Connection,
                 pool: WorkerPool, handle: WorkerHandle, now: float) -> None:
        self.id = link_id
        self.ws = ws
        self.client = client
        self.pool = pool
        self.handle = handle
        self.groups = set()
        self.opened = now
        self.last_message = now
        self.ping_sent = None   # time.time() of a ping not yet answered
        self.msgs_in = self.msgs_out = 0
        self.bytes_in = self.bytes_out = 0
        self.ended = False


def _error_body(message: str) -> bytes:
    return ('{"error": "%s"}' % message).encode('utf-8')


def _close_payload(payload: bytes | None) -> tuple[int, str]:
    """(code, reason) of a client's close frame payload."""
    if not payload or len(payload) < 2:
        return CLOSE_NO_STATUS, ''
    return (int.from_bytes(payload[:2], 'big'),
            payload[2:].decode('utf-8', 'replace'))


class WebSocketDispatch:
    """WebSocket connections of the dispatcher (mixed into Dispatcher)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    max_pending: int
    max_connections: int
    _state: str
    _pending: PendingTable
    _access_log: AccessLog | None
    _has_check: bool
    _has_accepted_hook: bool
    _has_removed_hook: bool
    # set by _start(), before any client comes
    _selector: selectors.BaseSelector
    _server: Server

    if TYPE_CHECKING:
        # pylint: disable=missing-function-docstring,too-many-arguments
        def _answer(self, client: Connection, status: int,
                    headers: dict[str, Any], body: bytes,
                    owned: bool = False) -> None: ...

        def _check(self, client: Connection,
                   hook: Callable[[Connection], None] | None = None,
                   ) -> bool: ...

        def _new_request_id(self) -> int: ...

        def _has_workers(self, pool: WorkerPool) -> bool: ...

        def _open_pending(self, request_id: int, client: Connection,
                          pool: WorkerPool) -> tuple[Pending, Any]: ...

        def _client_address(self, client: Connection) -> str: ...

        def _admission_changed(self) -> None: ...

        def _give_up(self, pending: Pending, status: int | None,
                     message: str | None = None,
                     reason: str | None = None) -> None: ...

        def _complete(self, pending: Pending) -> State: ...

        def _removed(self, pending: Pending, reason: str) -> None: ...

    # pylint: disable-next=too-many-arguments
    def _ws_init(self, max_message_size: int, send_buffer: int,
                 ping_interval: float | None, pong_timeout: float,
                 idle_timeout: float | None) -> None:
        if max_message_size <= 0 or send_buffer <= 0:
            raise ValueError('ws_max_message_size and ws_send_buffer must '
                             'be positive')
        self.ws_max_message_size = max_message_size
        self.ws_send_buffer = send_buffer
        self.ws_ping_interval = ping_interval
        self.ws_pong_timeout = pong_timeout
        self.ws_idle_timeout = idle_timeout
        self._ws_links: dict[int, WsLink] = {}
        self._ws_by_worker: dict[WorkerHandle, set[WsLink]] = {}
        self._ws_by_pool: dict[WorkerPool, set[WsLink]] = {}
        self._ws_groups: dict[str, set[WsLink]] = {}    # by group name
        # pool -> Router of its @ws patterns (None: it has none)
        self._ws_routers: dict[WorkerPool, Router[str] | None] = {}
        self._ws_next_sweep = 0.0
        # worker handle -> its links not read
        self._ws_paused: dict[WorkerHandle, set[WsLink]] = {}
        self._ws_totals = {'opened': 0, 'messages_in': 0,
                           'messages_out': 0}

    # -- what others read ---------------------------------------------------

    @property
    def ws_count(self) -> int:
        """Open WebSocket connections."""
        return len(self._ws_links)

    def ws_status(self) -> dict[str, int]:
        """Counts for status(): open connections, buffered output bytes,
        groups, totals."""
        return dict(
            self._ws_totals, open=len(self._ws_links),
            groups=len(self._ws_groups),
            paused=sum(len(links) for links in self._ws_paused.values()),
            buffered_bytes=sum(link.client.send_buffer_size
                               for link in self._ws_links.values()))

    # -- the upgrade ---------------------------------------------------------

    def _ws_try_upgrade(self, client: Connection, pool: WorkerPool) -> bool:
        """Take `client`'s request if it upgrades to a @ws route of `pool`
        (it is answered here: 101, or an error); False for any other."""
        headers = client._headers  # pylint: disable=protected-access
        if not headers or 'upgrade' not in headers:
            return False
        router = self._ws_router(pool)
        if router is None or not client.is_websocket_request:
            return False
        found = router.lookup('GET', client.path)
        if found is None:
            return False
        self._ws_upgrade(client, pool, found[0], found[1])
        return True

    def _ws_router(self, pool: WorkerPool) -> Router[str] | None:
        if pool in self._ws_routers:
            return self._ws_routers[pool]
        router: Router[str] = Router()
        # a remote pool carries plain requests only: no WebSocket upgrade
        for pattern, _, _ in () if is_remote(pool) \
                else collect_ws_routes(pool.worker_class):
            router.add(pattern, ('GET',), pattern)
        found = self._ws_routers[pool] = router if len(router) else None
        return found

    def _ws_upgrade(self, client: Connection, pool: WorkerPool, pattern: str,
                    params: dict[str, Any]) -> None:
        """Hand an upgrade request to the pool like any request (do_check
        here, then in the worker that takes it); it is upgraded when that
        worker accepts it (WS_ACCEPT), which pins the connection there."""
        if self._state != 'running':
            self._answer(client, 503, _RETRY, _error_body('Shutting down'))
            return
        if self._has_check and not self._check(client):
            return
        if pool.degraded or not self._has_workers(pool):
            self._answer(client, 503, _RETRY,
                         _error_body('No Workers Available'))
            return
        if len(self._pending) >= self.max_pending \
                or len(self._ws_links) + 1 >= self.max_connections:
            self._answer(client, 503, _RETRY, _error_body('Too Busy'))
            return
        request_id = self._new_request_id()
        pending, context = self._open_pending(request_id, client, pool)
        # pylint: disable=protected-access
        pending.message = messages.ws_open(
            request_id, client.path, client._query, dict(client._headers),
            self._client_address(client), client._should_keep_alive(),
            context, pattern, params)
        if len(self._pending) >= self.max_pending:
            self._admission_changed()
        pool.submit(pending)

    def _ws_accepted(self, handle: WorkerHandle, request_id: int) -> None:
        """The worker ran do_check() and accepts the upgrade: 101, and the
        connection is pinned to it. A client gone meanwhile (or answered
        504) is reported to the worker as closed."""
        pool = handle.pool
        pending = handle.in_flight.get(request_id)
        if pending is not None:
            handle.forget(pending)
        client = pending.client if pending is not None else None
        if pending is None or pending.state == DONE or client is None \
                or client.socket is None:
            if pending is not None and pending.state != DONE:
                self._give_up(pending, None)
            pool.send_to(handle, messages.ws_closed(
                request_id, CLOSE_ABNORMAL, 'client left'))
            pool.pump(handle)
            return
        self._complete(pending)
        if self._has_removed_hook:
            self._removed(pending, PENDING_COMPLETED)
        try:
            ws = client.accept_websocket(selector=self._selector)
        except (_server.HttpError, OSError) as err:
            status = getattr(err, 'status', 400)
            self._answer(client, status, _JSON, _error_body(
                str(err).partition(': ')[2] or 'Bad Request'))
            pool.send_to(handle, messages.ws_closed(
                request_id, CLOSE_ABNORMAL, 'upgrade failed'))
        else:
            self._ws_open(ws, client, pool, handle, request_id)
        pool.pump(handle)

    # pylint: disable-next=too-many-arguments
    def _ws_open(self, ws: Any, client: Connection, pool: WorkerPool,
                 handle: WorkerHandle, link_id: int) -> None:
        # pylint: disable=protected-access
        # (limits of this connection only: the HTTP ones do not fit)
        client._max_ws_message_length = self.ws_max_message_size
        client._max_send_buffer_size = self.ws_send_buffer
        client._ws_demask = types.MethodType(_fast_demask, client)
        link = WsLink(link_id, ws, client, pool, handle, time.monotonic())
        ws.uhttp_link = link
        self._ws_links[link_id] = link
        self._ws_by_worker.setdefault(handle, set()).add(link)
        self._ws_by_pool.setdefault(pool, set()).add(link)
        self._ws_totals['opened'] += 1
        self._ws_room_changed()
        if client._buffer:
            # frames that came with the upgrade request: no event says so
            self._ws_drain(link)

    def _ws_room_changed(self) -> None:
        """WebSockets count against max_connections: the HTTP server gets
        what they leave."""
        # pylint: disable=protected-access
        self._server._max_clients = max(
            1, self.max_connections - len(self._ws_links))

    # -- frames from clients -------------------------------------------------

    def _on_ws_event(self, ws: Any, fileobj: object, mask: int) -> None:
        """A selector event on a WebSocket's socket."""
        link = getattr(ws, 'uhttp_link', None)
        if link is None or link.ended:
            return
        if ws.handle_event(fileobj, mask) is not None:
            self._ws_on_frame(link)
            self._ws_drain(link)
        if not link.ended and ws.is_closed:
            self._ws_end(link, CLOSE_ABNORMAL, 'connection lost')

    def _ws_drain(self, link: WsLink) -> None:
        """Every event already in the receive buffer (one read may carry
        many frames; the selector will not report them again)."""
        ws = link.ws
        while not link.ended and not ws.is_closed and ws.next():
            self._ws_on_frame(link)

    def _ws_on_frame(self, link: WsLink) -> None:
        ws = link.ws
        event = ws.event
        if event == _server.EVENT_WS_MESSAGE:
            self._ws_on_message(link, ws.read_buffer() or b'', ws.ws_is_text)
        elif event in _WS_CHUNKS:
            # the message outgrew ws_max_message_size (uhttp-server hands
            # the rest over in chunks): refuse it, do not assemble it
            ws.read_buffer()
            self._ws_end(link, CLOSE_TOO_BIG, 'message too big',
                         send_close=True)
        elif event == _server.EVENT_WS_CLOSE:
            if ws.is_closed:    # a protocol error or the peer vanished
                self._ws_end(link, CLOSE_ABNORMAL, 'connection lost')
            else:   # uhttp-server has echoed the close frame
                code, reason = _close_payload(ws.ws_message)
                self._ws_end(link, code, reason)
        # EVENT_WS_PING: uhttp-server sent the pong

    def _ws_on_message(self, link: WsLink, payload: bytes,
                       is_text: bool) -> None:
        data: str | bytes = payload
        if is_text:
            try:
                data = payload.decode('utf-8')
            except UnicodeDecodeError:
                self._ws_end(link, CLOSE_INVALID_DATA, 'invalid UTF-8',
                             send_close=True)
                return
        link.msgs_in += 1
        link.bytes_in += len(data)
        link.last_message = time.monotonic()
        self._ws_totals['messages_in'] += 1
        handle = link.handle
        link.pool.send_to(handle, messages.ws_message(link.id, data))
        if _queued_bytes(handle) > WS_INBOUND_LIMIT:
            link.ws.pause_reading()
            self._ws_paused.setdefault(handle, set()).add(link)

    def _ws_resume_paused(self) -> None:
        """Read again the clients of workers that caught up."""
        for handle in list(self._ws_paused):
            if _queued_bytes(handle) > WS_INBOUND_LIMIT // 2:
                continue
            for link in self._ws_paused.pop(handle):
                if not link.ended:
                    link.ws.resume_reading()
                    self._ws_drain(link)   # frames read before the pause

    # -- messages from workers -----------------------------------------------

    def _on_ws_worker_message(self, handle: WorkerHandle,
                              message: Message) -> None:
        """A WS_* message from a worker."""
        kind = message[0]
        if kind == messages.WS_ACCEPT:
            self._ws_accepted(handle, message[1])
            return
        if kind == messages.WS_BROADCAST:
            self._ws_broadcast(handle, message[1], message[2])
            return
        link = self._ws_links.get(message[1])
        if link is None or link.handle is not handle:
            return  # it ended meanwhile (the worker hears WS_CLOSED)
        if kind == messages.WS_SEND:
            self._ws_write(link, self._ws_frame(message[2]))
        elif kind == messages.WS_CLOSE:
            self._ws_end(link, message[2], message[3], send_close=True)
        elif kind == messages.WS_JOIN:
            link.groups.add(message[2])
            self._ws_groups.setdefault(message[2], set()).add(link)
        elif kind == messages.WS_LEAVE:
            self._ws_leave(link, message[2])

    @staticmethod
    def _ws_frame(data: str | bytes) -> bytes:
        # pylint: disable=protected-access
        # (uhttp-server's own framing: one frame built, written N times)
        frame: bytes
        if isinstance(data, str):
            frame = _server._ws_build_frame(_server.WS_OPCODE_TEXT,
                                            data.encode('utf-8'))
        else:
            frame = _server._ws_build_frame(_server.WS_OPCODE_BINARY, data)
        return frame

    def _ws_broadcast(self, handle: WorkerHandle, group: str | None,
                      data: str | bytes) -> None:
        members = self._ws_by_pool.get(handle.pool, ()) if group is None \
            else self._ws_groups.get(group, ())
        if not members:
            return
        frame = self._ws_frame(data)
        for link in list(members):
            self._ws_write(link, frame)

    def _ws_write(self, link: WsLink, frame: bytes,
                  message: bool = True) -> None:
        """Queue one frame; a client whose send buffer is full (it does not
        read) is dropped with 1008 instead of buffering without bound."""
        client = link.client
        if link.ended:
            return
        try:
            client._send(frame)  # pylint: disable=protected-access
        except OSError:
            self.log.warning(
                'WebSocket %s %s: the client does not read (%d bytes '
                'unsent): dropped', link.id, printable(client.path),
                client.send_buffer_size)
            self._ws_end(link, CLOSE_POLICY, 'send buffer full')
            return
        if client.socket is None:
            self._ws_end(link, CLOSE_ABNORMAL, 'connection lost')
            return
        link.ws._update_interest()  # pylint: disable=protected-access
        if message:
            link.last_message = time.monotonic()
            link.msgs_out += 1
            link.bytes_out += len(frame)
            self._ws_totals['messages_out'] += 1

    def _ws_leave(self, link: WsLink, group: str) -> None:
        link.groups.discard(group)
        members = self._ws_groups.get(group)
        if members is not None:
            members.discard(link)
            if not members:
                del self._ws_groups[group]

    # -- the end -----------------------------------------------------------

    def _ws_end(self, link: WsLink, code: int, reason: str,
                send_close: bool = False) -> None:
        """End a connection, once: close the socket (after a close frame
        when `send_close`), forget it, tell its worker and the logs."""
        if link.ended:
            return
        link.ended = True
        del self._ws_links[link.id]
        self._ws_paused.get(link.handle, set()).discard(link)
        self._ws_by_worker.get(link.handle, set()).discard(link)
        self._ws_by_pool.get(link.pool, set()).discard(link)
        for group in list(link.groups):
            self._ws_leave(link, group)
        self._ws_room_changed()
        client = link.client
        note = getattr(client, 'note', None)
        if note is not None:
            # one access line as the connection closes: how long, how much
            note(101, link.bytes_out, link.handle.name,
                 f'ws:{link.id} close={code} in={link.msgs_in}/'
                 f'{link.bytes_in}B out={link.msgs_out}/{link.bytes_out}B')
        ws = link.ws
        if send_close and client.socket is not None:
            ws.close(code, cut_close_reason(reason))
        else:
            ws._unregister()  # pylint: disable=protected-access
            client.close()
        handle = link.handle
        if not handle.exited and handle.channel is not None \
                and not handle.channel.closed:
            link.pool.send_to(handle, messages.ws_closed(link.id, code,
                                                         reason))

    def _ws_worker_gone(self, handle: WorkerHandle) -> None:
        """A worker ended: its connections close, 1012 when it was stopped
        on purpose (restart, recycle: clients reconnect to a sibling), 1011
        when it died, 1001 when the service shuts down."""
        links = self._ws_by_worker.pop(handle, None)
        self._ws_paused.pop(handle, None)
        if not links:
            return
        if self._state != 'running':
            code, reason = CLOSE_GOING_AWAY, 'shutting down'
        elif handle.stopping and handle.kill_reason is None:
            code, reason = CLOSE_SERVICE_RESTART, 'worker restarting'
        else:
            code, reason = CLOSE_INTERNAL_ERROR, 'worker died'
        self.log.info('worker %s ended: closing its %d WebSocket '
                      'connections (%d)', handle.name, len(links), code)
        for link in list(links):
            self._ws_end(link, code, reason, send_close=True)

    def _ws_close_all(self, code: int, reason: str) -> None:
        for link in list(self._ws_links.values()):
            self._ws_end(link, code, reason, send_close=True)

    def _ws_housekeeping(self, now: float) -> None:
        """Close every WebSocket once shutting down; ping quiet peers and
        drop those that never answer; close idle ones."""
        if self._ws_paused:
            self._ws_resume_paused()
        if not self._ws_links or now < self._ws_next_sweep:
            return
        self._ws_next_sweep = now + WS_SWEEP_INTERVAL
        if self._state != 'running':
            self._ws_close_all(CLOSE_GOING_AWAY, 'shutting down')
            return
        wall = time.time()
        for link in list(self._ws_links.values()):
            self._ws_check(link, now, wall)

    def _ws_check(self, link: WsLink, now: float, wall: float) -> None:
        client = link.client
        if client.socket is None:
            self._ws_end(link, CLOSE_ABNORMAL, 'connection lost')
            return
        if link.client._read_paused:  # pylint: disable=protected-access
            # not read because its worker is behind: its silence is ours
            link.ping_sent = None
            return
        idle = self.ws_idle_timeout
        if idle and now - link.last_message > idle:
            self._ws_end(link, CLOSE_NORMAL, 'idle timeout', send_close=True)
            return
        # any bytes from the peer since the ping count as its answer
        heard = client._last_activity  # pylint: disable=protected-access
        if link.ping_sent is not None:
            if heard >= link.ping_sent:
                link.ping_sent = None
            elif wall - link.ping_sent > self.ws_pong_timeout:
                self.log.info('WebSocket %s: no answer to a ping in %ss: '
                              'dropped', link.id, self.ws_pong_timeout)
                self._ws_end(link, CLOSE_ABNORMAL, 'no pong')
                return
        interval = self.ws_ping_interval
        if interval and link.ping_sent is None and wall - heard >= interval:
            link.ping_sent = wall
            # pylint: disable=protected-access
            self._ws_write(link, _server._ws_build_frame(
                _server.WS_OPCODE_PING, b''), message=False)


def _queued_bytes(handle: WorkerHandle) -> int:
    """Bytes the dispatcher holds for a worker, not yet in its channel."""
    channel = handle.channel
    if channel is None or channel.closed:
        return 0
    return len(channel._outbox)  # pylint: disable=protected-access


def _fast_demask(connection: Connection, length: int) -> bytes:
    """uhttp-server's `_ws_demask`, one XOR of two big integers instead of
    a Python loop per byte: unmasking is the dispatcher's whole per-byte
    cost of a client's message (ten times and more faster on 64 KiB)."""
    # pylint: disable=protected-access
    data = bytes(connection._buffer[:length])
    connection._buffer = connection._buffer[length:]
    mask = connection._ws_frame_mask
    if not mask or not length:
        return data
    offset = connection._ws_frame_mask_offset
    key = (mask[offset:] + mask[:offset]) * (length // 4 + 1)
    connection._ws_frame_mask_offset = (offset + length) & 3
    return (int.from_bytes(data, 'little')
            ^ int.from_bytes(key[:length], 'little')).to_bytes(
                length, 'little')
