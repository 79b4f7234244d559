"""WebSocket routes, as a worker process sees them.

The `@ws` decorator marks a handler class (with `on_open`, `on_message`,
`on_close`) nested in a Worker or an ApiHandler; `collect_ws_routes()` finds
them (the dispatcher, to know which upgrade requests are WebSockets; the
worker, to bind them). `WebSocketConnection` is the `conn` object handlers
get; `WebSocketWorker` (a mixin of Worker) turns the dispatcher's WS_*
messages into handler calls and handler calls into WS_* messages.

The client socket never comes here: the dispatcher owns it, speaks the
protocol (handshake, frames, ping/pong, close) and sends whole messages.
This module must never touch a socket or block on the channel for longer
than any other answer does.
"""

from __future__ import annotations

from . import messages
from .request import RejectRequest, Request
from .routing import compile_pattern

# close codes of RFC 6455 §7.4.1 used by the framework
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001         # the service shuts down
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005          # the client's close frame had no code
CLOSE_ABNORMAL = 1006           # no close frame (the peer vanished)
CLOSE_INVALID_DATA = 1007       # a text message that is not UTF-8
CLOSE_POLICY = 1008             # the client does not read what it is sent
CLOSE_TOO_BIG = 1009            # a message above ws_max_message_size
CLOSE_INTERNAL_ERROR = 1011     # the worker holding the connection died
CLOSE_SERVICE_RESTART = 1012    # the worker was stopped (rolling restart)


# RFC 6455 §7.4.1 codes an endpoint may put in a close frame
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                             1011, 1012, 1013, 1014))


def cut_close_reason(reason):
    """A close reason that fits a control frame (125 bytes with the code),
    cut on a character boundary."""
    return reason.encode('utf-8')[:123].decode('utf-8', 'ignore')


def ws(pattern):
    """Serve WebSocket connections to `pattern` with the decorated class.

    Use it on a class nested in a Worker (or an ApiHandler, whose PATTERN
    is then prepended)::

        class Chat(Worker):
            @ws('/chat/{room}')
            class Room(WebSocketHandler):
                def on_open(self, conn): conn.join(conn.path_params['room'])
                def on_message(self, conn, data): ...
                def on_close(self, conn, code, reason): ...

    One instance of the class is made per worker process, with the Worker
    as its argument (`self.worker`); every connection of the route is
    served by that instance. `on_message` gets a str for a text message
    and bytes for a binary one. A method left out does nothing.
    """
    compile_pattern(pattern)    # a bad pattern fails at import

    def decorate(handler_class):
        if not isinstance(handler_class, type):
            raise TypeError('@ws decorates a handler class (with on_open, '
                            f'on_message, on_close), not {handler_class!r}')
        handler_class._uhttp_ws = pattern
        return handler_class
    return decorate


class WebSocketHandler:
    """A convenient base for @ws handler classes: keeps the worker in
    `self.worker`, does nothing on each event, and offers
    `ws_broadcast()`."""

    def __init__(self, worker):
        self.worker = worker

    def on_open(self, conn):
        """A client connected; `conn` is its WebSocketConnection."""

    def on_message(self, conn, data):
        """A whole message: str (text) or bytes (binary)."""

    def on_close(self, conn, code, reason):
        """The connection ended (called once per connection; the client
        closed, the handler closed it, or the dispatcher did)."""

    def ws_broadcast(self, data, group=None):
        """See Worker.ws_broadcast()."""
        self.worker.ws_broadcast(data, group)


def collect_ws_routes(worker_class):
    """(pattern, owner class or None, attribute name) of every @ws route of
    a Worker class: its own nested classes (owner None) and those of its
    HANDLERS (owner: the ApiHandler class; the pattern is prefixed)."""
    routes = []
    for name, attr in _ws_attributes(worker_class):
        routes.append((attr._uhttp_ws, None, name))
    for handler_class in getattr(worker_class, 'HANDLERS', ()):
        prefix = getattr(handler_class, 'PATTERN', '')
        for name, attr in _ws_attributes(handler_class):
            routes.append((prefix + attr._uhttp_ws, handler_class, name))
    return routes


def _ws_attributes(cls):
    found = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            if isinstance(attr, type) and '_uhttp_ws' in vars(attr):
                found[name] = attr
            elif name in found:
                del found[name]     # overridden by something else
    return found.items()


class WebSocketConnection:
    """One WebSocket client, as its handler sees it (in the worker).

    `id` (unique in the service), `path`, `path_params`, `headers`
    (lowercase names), `query`, `remote_address`; `send()`, `close()`,
    `join()`, `leave()` queue a message to the dispatcher, which writes to
    the socket. `open` is False once the connection ended (sends are then
    dropped). `state` is a dict for the application's own per-connection
    data.
    """

    __slots__ = ('id', 'path', 'path_params', 'headers', 'query',
                 'remote_address', 'open', 'state', '_worker')

    def __init__(self, worker, conn_id, path, path_params, query, headers,
                 remote_address):
        self._worker = worker
        self.id = conn_id
        self.path = path
        self.path_params = path_params
        self.query = query or {}
        self.headers = headers or {}
        self.remote_address = remote_address
        self.open = True
        self.state = {}

    def send(self, data):
        """Send one message: a str goes as a text frame, bytes as binary.
        Returns False (nothing sent) once the connection ended."""
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f'WebSocket data must be str or bytes, not '
                            f'{type(data).__name__}')
        if not self.open:
            return False
        if not isinstance(data, (str, bytes)):
            data = bytes(data)
        self._worker._ws_out(messages.ws_send(self.id, data))
        return True

    def close(self, code=CLOSE_NORMAL, reason=''):
        """Close the connection with `code` (1000, 1001, 1003, 1007-1014,
        or 3000-4999 for the application's own) and `reason` (at most 123
        bytes of UTF-8; longer is cut). on_close() runs when the dispatcher
        confirms it ended."""
        code = int(code)
        if not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
            raise ValueError(f'{code} is not a close code a server may send')
        if self.open:
            self._worker._ws_out(messages.ws_close(
                self.id, code, cut_close_reason(str(reason))))

    def join(self, group):
        """Add this connection to broadcast `group` (any string)."""
        if self.open:
            self._worker._ws_out(messages.ws_join(self.id, str(group)))

    def leave(self, group):
        """Take this connection out of broadcast `group`."""
        if self.open:
            self._worker._ws_out(messages.ws_leave(self.id, str(group)))

    def __repr__(self):
        return f'<WebSocketConnection {self.id} {self.path}>'


class WebSocketWorker:
    """The worker side of WebSocket routes (mixed into Worker)."""

    def ws_broadcast(self, data, group=None):
        """Send `data` (str: text, bytes: binary) to every connection that
        joined `group`, whichever worker holds it; with group None, to
        every WebSocket connection of this worker's pool. One message
        crosses to the dispatcher, which writes it to each connection."""
        if not isinstance(data, (str, bytes)):
            data = bytes(data)
        self._ws_out(messages.ws_broadcast(
            None if group is None else str(group), data))

    @property
    def ws_connections(self):
        """The open WebSocket connections this worker holds, by id."""
        return {conn_id: entry[0]
                for conn_id, entry in self._ws_state()[1].items()}

    def _ws_state(self):
        """(pattern -> (owner, name), open connections by id, handler
        instances by pattern), made on first use."""
        state = self.__dict__.get('_ws_books')
        if state is None:
            routes = {pattern: (owner, name)
                      for pattern, owner, name in collect_ws_routes(
                          type(self))}
            state = self.__dict__['_ws_books'] = (routes, {}, {})
        return state

    def _ws_out(self, message):
        # held like answers: many sends of one loop turn are one write
        self._hold(message, now=self._current is not None)

    def _ws_handler(self, pattern):
        """The handler instance of the @ws route `pattern` (the dispatcher
        matched the path), made on first use; None for an unknown one."""
        routes, _, handlers = self._ws_state()
        handler = handlers.get(pattern)
        if handler is None and pattern in routes:
            owner, name = routes[pattern]
            cls = getattr(owner or type(self), name)
            handler = handlers[pattern] = cls(self)
        return handler

    def _ws_message(self, message):
        """One WS_* message from the dispatcher, in channel order."""
        kind = message[0]
        conns = self._ws_state()[1]
        if kind == messages.WS_OPEN:
            self._ws_open(message, conns)
        elif kind == messages.WS_MESSAGE:
            entry = conns.get(message[1])
            if entry is not None:
                self._ws_call(entry[1], 'on_message', entry[0], message[2])
        elif kind == messages.WS_CLOSED:
            entry = conns.pop(message[1], None)
            if entry is not None:
                entry[0].open = False
                self._ws_call(entry[1], 'on_close', entry[0], message[2],
                              message[3])

    def _ws_open(self, message, conns):
        """An upgrade request: do_check() as for any request; refused, it
        is answered as HTTP; accepted, WS_ACCEPT goes first, then whatever
        on_open() sends."""
        (_, request_id, method, path, query, headers, _, remote, _,
         keep_alive, context, pattern, params) = message
        if self._stopping or not self._accepting:
            if self._stopping:
                self._announce_stop()   # before the request goes back
            self._send(messages.returned(request_id))
            return
        request = Request(request_id, method, path, query=query,
                          headers=headers, content_type='',
                          remote_address=remote, context=context,
                          path_params=params)
        request._channel_id = request_id
        request._worker = self
        request._keep_alive = keep_alive
        request._route = pattern
        handler = self._ws_handler(pattern)
        refused = self._ws_check(request) if handler is not None else (
            {'error': 'Not Found'}, 404)   # the dispatcher runs other code
        if refused is not None:
            self._send_response(request, *self._split(request, refused))
            return
        self._ws_out(messages.ws_accept(request_id))
        conn = WebSocketConnection(self, request_id, path, params, query,
                                   headers, remote)
        conns[request_id] = (conn, handler)
        self._ws_call(handler, 'on_open', conn)

    def _ws_check(self, request):
        """do_check() of an upgrade request: None to accept it, else the
        answer that refuses it."""
        try:
            return self.do_check(request)
        except RejectRequest as err:
            return err.data, err.status
        except Exception as err:  # pylint: disable=broad-except
            return self._handler_failed(request, err)

    def _ws_call(self, handler, name, conn, *args):
        method = getattr(handler, name, None)
        if method is None:
            return
        try:
            method(conn, *args)
        except Exception:  # pylint: disable=broad-except
            self.log.exception('WebSocket %s.%s() raised (connection %s)',
                               type(handler).__name__, name, conn.id)
            if name != 'on_close' and conn.open:
                # a handler that failed cannot be trusted with more
                conn.close(CLOSE_INTERNAL_ERROR, 'handler error')

