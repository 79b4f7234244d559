"""Client connections whose requests are read through `http11`, strictly.

This module owns reading a request from a client socket: the head, then a
Content-Length or chunked body, into the fields uhttp-server's
`HttpConnection` exposes (`method`, `path`, `query`, `headers`, `data`, ...),
and refusing what `http11` refuses with its status and `Connection: close`.
Bytes after a request (pipelining, a CRLF after a body) stay in the buffer
for the next one. `Server` is uhttp-server's `HttpServer` making these
connections. Responses, keep-alive, timeouts (408), TLS and streaming stay
uhttp-server's, except for three things its `respond()` leaves out or gets
wrong, fixed in `Connection.respond`: every answer carries a Date field, a
HEAD answer carries the Content-Length GET would send (without the body),
and an empty body gets no made-up Content-Type.

Must never: parse anything a refused request left behind, hand over a
request before its body is complete, send `100 Continue` for a body it will
refuse, or block (the sockets are non-blocking, the listener included).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from uhttp import server as _server

from . import http11
from .framing import Body, Headers, frame_response, http_date

if TYPE_CHECKING:
    from .access_log import AccessLog

# per recv(): above one TLS record (16 KiB), so no decrypted bytes stay
# behind in the TLS layer where select() cannot see them; and below the
# size where a recv() buffer costs an mmap()
READ_SIZE = 64 * 1024
_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
# statuses whose answers carry no Content-Length (RFC 9110 §8.6): 204, and
# 304, whose length would be that of the 200 (unknown here)
_NO_LENGTH = frozenset((204, 304))

# the query of a request as uhttp-server parses it: name -> value, None
# for a name without '=', a list for a repeated name
Query = dict[str, Any]


def _parse_url(url: str) -> tuple[str, Query | None]:
    """(path, query) as uhttp-server's parse_url() gives them; a plain
    path (the common case) needs no decoding."""
    if '%' in url or '+' in url or '?' in url:
        parsed: tuple[str, Query | None] = _server.parse_url(
            url.encode('ascii'))
        return parsed
    return url, None


# uhttp-server ships no annotations: its HttpConnection is Any here
class Connection(_server.HttpConnection):  # type: ignore[misc]
    """An `HttpConnection` that parses requests with `http11`.

    Only uhttp-server's non-event mode (`process_request()`) is supported.
    Extra keyword arguments: `max_headers_length` (bytes of a request head,
    default `http11.MAX_HEAD_SIZE`), `max_header_fields` (default
    `http11.MAX_FIELDS`).
    """

    # uhttp-server's, read and set here too (annotations only: its
    # HttpConnection defines them; the others take the type of what this
    # class assigns)
    _buffer: bytearray
    _method: str | None
    _request_start: float | None
    _data_loaded: bool
    _expect_continue: bool
    _is_streaming: bool
    _response_started: bool
    _response_keep_alive: bool


    def __init__(self, server: Server, sock: socket.socket,
                 addr: tuple[str, int | None], **kwargs: Any) -> None:
        super().__init__(server, sock, addr, **kwargs)
        self._max_headers_length: int = kwargs.get(
            'max_headers_length', http11.MAX_HEAD_SIZE)
        self._max_header_fields: int = kwargs.get(
            'max_header_fields', http11.MAX_FIELDS)
        # the ChunkedDecoder of the body being read
        self._chunked: http11.ChunkedDecoder | None = None
        self._json_body: bytes | None = None   # a JSON body not decoded yet
        # kept by the dispatcher across the requests of this connection
        self.pool_client = False    # its last request went to a pool
        # its address as workers see it
        self.client_address: str | None = None

    def respond(self, data: Any = None, status: int = 200,
                headers: dict[str, Any] | None = None,
                cookies: Mapping[str, str | None] | None = None) -> None:
        """uhttp-server's `respond()`, with a Date field (unless `headers`
        has one), the Content-Length GET would send on the answer to a
        HEAD (the body itself is not sent), no Content-Type invented for an
        empty body (e.g. a redirect: `content-length: 0` only) and no
        Content-Length on a 204 or 304. `headers` is given away."""
        if self._socket is None:
            return
        if headers is None:
            headers = {}
        if 'date' not in headers and 'Date' not in headers:
            headers['date'] = http_date()
        if data is not None:
            if status in _NO_LENGTH:
                data = None
            elif data == b'' or data == '':
                headers[_server.CONTENT_LENGTH] = 0
                data = None
            elif self._method == 'HEAD':
                # uhttp-server would count the bytes of an empty body (0):
                # encode the GET body for its length and type, send neither
                _server.encode_response_data(headers, data)
                data = None
        super().respond(data, status, headers, cookies)

    def respond_framed(self, status: int, headers: Headers | None,
                       body: Body) -> None:
        """Answer with bytes built by `framing` (checked fields, Date,
        Content-Length; on a HEAD the length without the body) instead of
        uhttp-server's header builder: the cheaper path of answers the
        dispatcher makes itself, e.g. static files. `headers` is not
        changed; a `connection: close` in it closes the connection after
        the answer. Raises framing.ResponseError for fields it refuses."""
        if self._socket is None:
            return
        if self._response_started:
            raise _server.HttpError('Response already sent for this request')
        wire, keep_alive = frame_response(
            status, headers, body, keep_alive=self._should_keep_alive(),
            head_only=self._method == 'HEAD')
        self._response_started = True
        self._is_streaming = False
        self._response_keep_alive = keep_alive
        try:
            self._send(wire)   # finishes (keep-alive reset) once all is out
        except OSError:
            self.close()

    @property
    def socket_address(self) -> str:
        """`ip:port` of the peer; '' for a peer on a Unix-domain socket
        (it has no address: clients of a Unix socket are unnamed)."""
        if self._addr[1] is None:
            return ''
        address: str = super().socket_address
        return address

    @property
    def is_loaded(self) -> bool:
        """True when a whole request (head and body) waits for its answer."""
        loaded: bool = self._data_loaded and not self._response_started
        return loaded

    def reset(self) -> None:
        """Forget the answered request (keep-alive); the buffer is kept."""
        super().reset()
        self._chunked = None
        self._json_body = None

    def process_request(self) -> bool | None:
        """Read from the socket; True once a request is loaded, False while
        waiting for more bytes, None when the connection was refused or
        lost."""
        if self._socket is None:
            return None
        if self._is_streaming or self._response_started:
            try:
                self._probe_streaming_close()
            except _server.ClientError:
                self.close()
            return False
        try:
            if self._method is None and not self._read_head():
                return False
            if not self._data_loaded and not self._read_body():
                return False
        except http11.ProtocolError as err:
            self._refuse(err.status, err.reason)
            return None
        except _server.HttpErrorWithResponse as err:
            # what uhttp-server refuses itself: path or query encoding
            self._refuse(err.status, str(err).partition(': ')[2])
            return None
        except _server.ClientError:
            self.close()
            return None
        self._requests_count += 1
        return True

    # -- the head -------------------------------------------------------------

    def _read_head(self) -> bool:
        """Parse what is buffered, read once if that is not a whole head."""
        head = self._parse_head()
        if head is None:
            self._recv_to_buffer(len(self._buffer) + READ_SIZE)
            head = self._parse_head()
            if head is None:
                return False
        self._start_request(head)
        return True

    def _parse_head(self) -> http11.RequestHead | None:
        buffer = self._buffer
        if not buffer:
            return None
        head, offset = http11.parse_head(
            buffer, 0, self._max_headers_length, self._max_header_fields)
        if head is None:
            # empty lines alone do not start the request clock: a client
            # may send one after a body, then idle in keep-alive
            if offset < len(buffer) and self._request_start is None:
                self._request_start = time.time()
            return None
        del buffer[:offset]
        return head

    def _start_request(self, head: http11.RequestHead) -> None:
        if self._request_start is None:
            self._request_start = time.time()
        self._method = head.method
        self._url = head.url
        self._protocol = head.version
        self._headers = head.headers
        self._headers_repeated = head.repeated
        self._content_length = head.content_length or False
        if head.content_length and \
                head.content_length > self._max_content_length:
            # before any 100 Continue: the client need not send the body
            raise http11.ProtocolError(
                413, f'Body larger than {self._max_content_length} bytes')
        self._path, self._query = _parse_url(head.url)
        if head.chunked:
            self._chunked = http11.ChunkedDecoder(
                self._max_content_length, self._max_headers_length,
                self._max_header_fields)
        elif not head.content_length:
            self._data_loaded = True   # no body: data stays None
        self._expect_continue = head.expect_continue and not \
            self._data_loaded

    # -- the body -------------------------------------------------------------

    def _read_body(self) -> bool:
        """Take the body from the buffer, reading once if it is not all
        there; True once it is complete."""
        if self._take_body():
            return True
        if self._expect_continue:
            self._expect_continue = False
            self._send(_CONTINUE)
            if self._socket is None:
                return False
        self._recv_to_buffer(len(self._buffer) + READ_SIZE)
        return self._take_body()

    def _take_body(self) -> bool:
        buffer = self._buffer
        decoder = self._chunked
        body: bytes | bytearray
        if decoder is not None:
            used = decoder.feed(buffer)
            if used:
                del buffer[:used]
            if not decoder.done:
                return False
            self._chunked = None
            body = decoder.body
            self._dechunked(len(body))
        else:
            length: int = self._content_length
            if len(buffer) < length:
                return False
            if len(buffer) == length:
                body, self._buffer = buffer, bytearray()
            else:
                body = buffer[:length]
                del buffer[:length]
        self._load_data(body)
        return True

    def _dechunked(self, length: int) -> None:
        """Describe the decoded body as a Content-Length body (as a
        buffering proxy forwards it)."""
        self._headers.pop('transfer-encoding', None)
        if self._headers_repeated:
            self._headers_repeated.pop('transfer-encoding', None)
        self._headers['content-length'] = str(length)
        self._content_length = length

    def _load_data(self, body: bytes | bytearray) -> None:
        """`data` as uhttp-server gives it: a form or JSON body decoded,
        other bodies as raw bytes, no body as None."""
        if not body:
            self._data_loaded = True
            return
        content_type = self.content_type.split(';')[0].strip().lower()
        if content_type == _server.CONTENT_TYPE_XFORMDATA:
            self._data = _server.parse_query(body)
        elif content_type == _server.CONTENT_TYPE_JSON:
            # decoded on first use of `data` (@sync routes, do_check); a
            # pool request carries the bytes and its worker decodes them
            self._json_body = bytes(body)
        else:
            self._data = body
        self._data_loaded = True

    @property
    def data(self) -> Any:
        """The body: a JSON or form body decoded, other bodies as bytes,
        None when empty. Raises HttpErrorWithResponse(400) for a JSON body
        that does not parse."""
        if self._json_body is not None:
            body, self._json_body = self._json_body, None
            try:
                self._data = json.loads(body)
            except (ValueError, RuntimeError) as err:
                # RuntimeError: nesting deep enough to exhaust the recursion
                raise _server.HttpErrorWithResponse(
                    400, 'Invalid JSON body') from err
        return self._data

    def take_raw_json(self) -> bytes | None:
        """The undecoded bytes of a JSON body (None when there is none, or
        when `data` decoded it already): for a worker to decode."""
        body, self._json_body = self._json_body, None
        return body

    # -- refusing -------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        """Answer `status` and close: nothing after a refused request is
        ever parsed, so the buffer goes."""
        # a HEAD refused before its head was parsed gets no body either
        head = self._method == 'HEAD' or (
            self._method is None
            and self._buffer.lstrip(b'\r\n').startswith(b'HEAD '))
        self._buffer = bytearray()
        self._chunked = None
        self._expect_continue = False
        self._data_loaded = False
        phrase: str = _server.STATUS_CODES.get(status, '')
        text = f'{status} {phrase}: {reason}' if reason else \
            f'{status} {phrase}'
        body = b'' if head else text.encode('utf-8')
        self.respond(data=body, status=status, headers={
            _server.CONNECTION: _server.CONNECTION_CLOSE,
            _server.CONTENT_TYPE: 'text/plain; charset=UTF-8'})


# uhttp-server ships no annotations: its HttpServer is Any here
class Server(_server.HttpServer):  # type: ignore[misc]
    """An `HttpServer` whose connections are `Connection`s.

    The listening socket is non-blocking: a wake-up for a connection that
    another process took (a listener shared during an upgrade) costs one
    failed accept(), never a blocked loop. One connection is accepted per
    wake-up, as uhttp-server does: taking several at once lets their
    requests be read in the same loop turn, where an answer from the
    dispatcher overtakes the request it has just queued for a worker.
    Event mode is not supported.
    """

    # the access log sets its own
    connection_class: type[Connection] = Connection
    access_log: AccessLog | None = None

    def __init__(self, *args: Any, event_mode: bool = False,
                 **kwargs: Any) -> None:
        if event_mode:
            raise ValueError('Server supports the non-event mode only')
        super().__init__(*args, **kwargs)
        self._socket.setblocking(False)

    def _accept(self) -> None:
        try:
            sock, addr = self._socket.accept()
        except OSError:
            return
        if not isinstance(addr, tuple):
            # a Unix-domain peer: its path, mostly '' (unnamed), no port
            addr = (addr if isinstance(addr, str) else '', None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix listener handed over): nothing to tune
        try:
            sock.setblocking(False)
            if self._ssl_context:
                sock = self._ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            return
        connection = self.connection_class(self, sock, addr, **self._kwargs)
        self._make_room()
        self._waiting_connections.append(connection)
        if not connection._register():
            connection.close()

    def _make_room(self) -> None:

        """Above max_waiting_clients the oldest connection goes (as in
        uhttp-server: 408 unless it is already answering)."""
        while len(self._waiting_connections) >= self._max_clients:
            oldest = self._waiting_connections.pop(0)
            if oldest._response_started:
                oldest.close()
                continue
            oldest.respond('Request Timeout, too many requests', status=408,
                           headers={_server.CONNECTION:
                                    _server.CONNECTION_CLOSE})
            if oldest.has_data_to_send:
                oldest.close()
