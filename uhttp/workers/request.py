"""Requests and responses as application code sees them.

`Request` is what an @api handler receives in a worker: plain data that came
over the worker's channel, plus the means to answer it later (DEFERRED) or to
stream. `Response` is what the dispatcher's `on_response` hook receives.
Encoding of handler results into status, headers and body bytes lives here
too, so the dispatcher only copies bytes to sockets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Literal, Protocol

from uhttp import server as _server

# What a handler answers with and what a request carries as its body:
# JSON-like data, str or bytes, checked when it is encoded.
Data = Any
# Response headers as an application gives them: lowercase str names; the
# values are str, except `set-cookie`, which may be a list of str.
OutHeaders = MutableMapping[str, Any]
# name -> value ('v; Path=/' carries attributes); None deletes the cookie
Cookies = Mapping[str, str | None]
# split_result's view of a handler's result
Result = tuple[Data, int, Mapping[str, Any] | None, Cookies | None]

# uhttp-server ships no annotations: the values taken from it, typed here
_EVENT_STREAM: str = _server.CONTENT_TYPE_EVENT_STREAM
_NDJSON: str = _server.CONTENT_TYPE_NDJSON


def _parse_cookies(raw: str) -> dict[str, str]:
    cookies: dict[str, str] = _server.parse_cookies(raw)
    return cookies


CONTENT_TYPE_JSON = 'application/json'
CONTENT_TYPE_TEXT = 'text/html; charset=utf-8'
CONTENT_TYPE_BINARY = 'application/octet-stream'

# a cookie name (RFC 6265 §4.1.1: an RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Deferred:
    """Marker a handler returns to answer later with request.respond()."""

    _instance: ClassVar[_Deferred | None] = None

    def __new__(cls) -> _Deferred:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return 'DEFERRED'

    def __reduce__(self) -> tuple[type[_Deferred], tuple[()]]:
        return (_Deferred, ())


DEFERRED = _Deferred()
"""Return this from a handler to answer later with `request.respond()`.

The worker takes its next request at once; the deferred request keeps its
pool `timeout` (504 when it expires, then `Worker.on_disconnect`). Starting
a stream (`request.response_stream()`) and returning DEFERRED keeps the
stream open."""


class RejectRequest(Exception):
    """Raise in a `do_check` to refuse a request.

    In `Dispatcher.do_check` the client gets `data`/`status` unless the
    check already responded itself; in `Worker.do_check` the worker answers
    with them.
    """

    def __init__(self, data: Data = None, status: int = 403) -> None:
        super().__init__(status)
        self.data: Data = {'error': 'Rejected'} if data is None else data
        self.status = status


def encode_body(data: Data, headers: OutHeaders) -> bytes:
    """Turn handler data into body bytes, setting Content-Type if missing.

    dict/list/tuple/numbers/bool → JSON; str → UTF-8 text; bytes stay bytes;
    None → empty body. Anything else raises TypeError.
    """
    if data is None:
        return b''
    if isinstance(data, (bytes, bytearray, memoryview)):
        headers.setdefault('content-type', CONTENT_TYPE_BINARY)
        return bytes(data)
    if isinstance(data, str):
        headers.setdefault('content-type', CONTENT_TYPE_TEXT)
        return data.encode('utf-8')
    if isinstance(data, (dict, list, tuple, int, float, bool)):
        headers.setdefault('content-type', CONTENT_TYPE_JSON)
        return json.dumps(data).encode('utf-8')
    raise TypeError(
        f'cannot send a {type(data).__name__} as a response body; return '
        'JSON-serialisable data, str or bytes')


def normalize_headers(
        headers: Mapping[Any, Any] | None) -> dict[str, str]:
    """Copy headers into a dict of lowercase str keys and str values."""
    if not headers:
        return {}
    return {str(key).lower(): str(value) for key, value in headers.items()}


def media_type(headers: Mapping[str, str]) -> str | None:
    """The Content-Type of `headers` without parameters, lowercased; None
    when there is no Content-Type."""
    value = headers.get('content-type')
    if value is None:
        return None
    return value.split(';', 1)[0].strip().lower()


def add_cookies(headers: OutHeaders, cookies: Cookies) -> None:
    """Add a set-cookie field per cookie to `headers` (a dict with
    lowercase names, changed in place).

    `cookies`: dict of name -> value ('v; Path=/' carries attributes);
    None as a value deletes the cookie (Max-Age=0). A set-cookie already in
    `headers` (str or list) is kept before them. A name that is not an
    RFC 6265 token raises ValueError; values are checked by the framing.
    """
    given: str | list[str] = headers.get('set-cookie', [])
    lines = [given] if isinstance(given, str) else list(given)
    for name, value in cookies.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f'cookie name {name!r} is not a token')
        lines.append(f'{name}=; Max-Age=0' if value is None
                     else f'{name}={value}')
    headers['set-cookie'] = lines


def split_result(result: object) -> Result:
    """Split a handler's return value into (data, status, headers, cookies).

    A `Response` gives its own four; a tuple (data, status[, headers])
    gives no cookies; anything else is data with status 200.
    """
    if isinstance(result, Response):
        return result.data, result.status, result.headers, result.cookies
    if isinstance(result, tuple) and 2 <= len(result) <= 3:
        status = result[1]
        if isinstance(status, int) and not isinstance(status, bool):
            headers = result[2] if len(result) == 3 else None
            return result[0], status, headers, None
        if isinstance(status, str) and status.strip().isdigit():
            # `return data, '200'` would otherwise go out as the JSON list
            # ["data", "200"] with status 200
            raise TypeError(
                f'the status {status!r} is a str: return an int, '
                f'e.g. `return data, {int(status)}`')
    return result, 200, None, None


def encode_sse_event(data: Data = None, event: str | None = None,
                     event_id: str | int | None = None,
                     retry: float | None = None) -> bytes:
    """Bytes of one Server-Sent Event (multi-line data split per line)."""
    lines: list[str] = []
    if event_id is not None:
        lines.append(f'id: {event_id}')
    if event is not None:
        lines.append(f'event: {event}')
    if retry is not None:
        lines.append(f'retry: {int(retry)}')
    if data is not None:
        text = data if isinstance(data, str) else json.dumps(data)
        lines.extend(f'data: {line}' for line in text.split('\n'))
    return ('\n'.join(lines) + '\n\n').encode('utf-8')


class _Log(Protocol):
    def debug(self, msg: str, /, *args: object) -> None: ...


class _Answerer(Protocol):
    """What a Request answers through: the worker that received it."""

    @property
    def log(self) -> _Log: ...

    def _send_response(self, request: Request, data: Data, status: int,
                       headers: Mapping[str, Any] | None,
                       cookies: Cookies | None = None) -> bool: ...

    def _start_stream(self, request: Request, headers: dict[str, str],
                      cookies: Cookies | None) -> bool: ...

    def _send_stream(self, request: Request, body: bytes) -> bool: ...

    def _end_stream(self, request: Request) -> bool: ...


# new → deferred (DEFERRED returned) → answered, or → streaming → ended
_State = Literal['new', 'deferred', 'answered', 'streaming', 'ended']


class Request:
    """An HTTP request handed to a worker, as the handler sees it.

    Attributes: request_id, method, path, path_params, query (dict or None),
    data (dict for JSON/form bodies, bytes otherwise, None when empty),
    headers (dict, lowercase keys), content_type, remote_address, context.
    `cookies` is parsed from the headers on first use.

    The arguments are those of uhttp-workers 1.x, in its order
    (request_id, method, path, query, data, headers, content_type,
    remote_address, context); `path_params` is a keyword. `content_type`
    defaults to the Content-Type header without its parameters,
    lowercased, or None without the header (a request from a client has
    '' then).

    A Request built in the dispatcher (e.g. in `on_response`) with
    request_id=-1 and put on `pool.request_queue` runs in a worker and its
    answer is dropped.
    """

    __slots__ = ('request_id', 'method', 'path', 'path_params', 'query',
                 'data', 'headers', '_content_type', 'remote_address',
                 'context', '_cookies', '_worker', '_state', '_route',
                 '_keep_alive', '_channel_id')

    request_id: int
    method: str
    path: str
    path_params: dict[str, Any]
    query: dict[str, Any] | None
    data: Data
    headers: dict[str, str]
    _content_type: str | None
    remote_address: str | None
    context: Any
    _cookies: dict[str, str] | None
    _worker: _Answerer | None
    _state: _State
    _route: str
    _keep_alive: bool
    _channel_id: int

    # pylint: disable-next=too-many-arguments
    def __init__(self, request_id: int = -1, method: str = 'GET',
                 path: str = '/', query: dict[str, Any] | None = None,
                 data: Data = None, headers: dict[str, str] | None = None,
                 content_type: str | None = None,
                 remote_address: str | None = None, context: Any = None, *,
                 path_params: dict[str, Any] | None = None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.path_params = path_params or {}
        self.query = query
        self.data = data
        self.headers = headers if headers is not None else {}
        # None: derived from the headers when first read
        self._content_type = content_type
        self.remote_address = remote_address
        self.context = context
        # the id the dispatcher knows the request by (request_id is -1
        # for a request no client waits for, as in uhttp-workers 1.x)
        self._channel_id = request_id
        self._reset()

    def _reset(self) -> None:
        self._cookies = None
        self._worker = None
        self._state = 'new'
        self._route = ''
        self._keep_alive = False

    def __repr__(self) -> str:
        return f'<Request {self.request_id} {self.method} {self.path}>'

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.request_id, self.method, self.path, self.path_params,
                self.query, self.data, self.headers, self.content_type,
                self.remote_address, self.context)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.request_id, self.method, self.path, self.path_params,
         self.query, self.data, self.headers, self.content_type,
         self.remote_address, self.context) = state
        self._channel_id = self.request_id
        self._reset()

    @property
    def content_type(self) -> str | None:
        """The media type: as given to the constructor, else from the
        Content-Type header (without parameters, lowercased; None without
        the header)."""
        if self._content_type is None:
            self._content_type = media_type(self.headers)
        return self._content_type

    @content_type.setter
    def content_type(self, value: str | None) -> None:
        self._content_type = value

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies from the Cookie header, parsed on first use."""
        if self._cookies is None:
            raw = self.headers.get('cookie')
            self._cookies = _parse_cookies(raw) if raw else {}
        return self._cookies

    @property
    def is_answered(self) -> bool:
        """True once a response was sent or a stream was ended."""
        return self._state in ('answered', 'ended')

    @property
    def is_streaming(self) -> bool:
        """True between response_stream() and response_stream_end()."""
        return self._state == 'streaming'

    # -- answering ---------------------------------------------------------

    def respond(self, data: Data = None, status: int = 200,
                headers: Mapping[str, Any] | None = None,
                cookies: Cookies | None = None) -> bool:
        """Answer this request (now, or later when it was DEFERRED).

        `cookies`: dict of name -> value (attributes may follow the value:
        'v; Path=/'), sent as set-cookie fields; None as a value deletes
        that cookie. Returns False, and logs at debug level, when it was
        already answered or its worker is gone; a second answer is harmless.
        """
        if self._state != 'new' and self._state != 'deferred':
            return self._refuse('respond')
        return self._bound()._send_response(
            self, data, status, headers, cookies)

    def response_stream(self, content_type: str | None = None,
                        headers: Mapping[str, Any] | None = None,
                        cookies: Cookies | None = None) -> bool:
        """Start a streaming response (default text/event-stream)."""
        if self._state not in ('new', 'deferred'):
            return self._refuse('response_stream')
        fields = normalize_headers(headers)
        fields.setdefault('content-type', content_type or _EVENT_STREAM)
        fields.setdefault('cache-control', 'no-cache')
        return self._bound()._start_stream(self, fields, cookies)

    def response_ndjson(self, headers: Mapping[str, Any] | None = None,
                        cookies: Cookies | None = None) -> bool:
        """Start a streaming response of newline-delimited JSON."""
        return self.response_stream(
            _NDJSON, headers=headers, cookies=cookies)

    def send_chunk(self, data: str | bytes | bytearray | memoryview) -> bool:
        """Send raw bytes (or str as UTF-8) on a started stream."""
        if isinstance(data, str):
            data = data.encode('utf-8')
        return self._stream(bytes(data))

    def send_event(self, data: Data = None, event: str | None = None,
                   event_id: str | int | None = None,
                   retry: float | None = None) -> bool:
        """Send one Server-Sent Event; dict/list data is sent as JSON."""
        return self._stream(encode_sse_event(data, event, event_id, retry))

    def send_ndjson(self, obj: Data) -> bool:
        """Send one object as a line of NDJSON."""
        return self._stream(json.dumps(obj).encode('utf-8') + b'\n')

    def response_stream_end(self) -> bool:
        """End the stream; the dispatcher closes the connection."""
        if self._state != 'streaming':
            return self._refuse('response_stream_end')
        return self._bound()._end_stream(self)

    def _stream(self, body: bytes) -> bool:
        if self._state != 'streaming':
            return self._refuse('send on a stream')
        return self._bound()._send_stream(self, body)

    def _bound(self) -> _Answerer:
        worker = self._worker
        if worker is None:
            # a Request built by hand, not received by a worker
            raise AttributeError(
                f'{self!r} was not received by a worker: it cannot be '
                'answered')
        return worker

    def _refuse(self, what: str) -> Literal[False]:
        worker = self._worker
        if worker is not None:
            worker.log.debug(
                'request %s: %s ignored (state %s)', self.request_id, what,
                self._state)
        return False


_UNSET: Any = object()


class Response:
    """An answer: returned by a handler, or seen by the dispatcher's
    `on_response` hook.

    `Response(request_id, data=None, status=200, headers=None,
    cookies=None)` is uhttp-workers 1.x's signature: a handler may return
    one (its request_id is replaced by the request's). The dispatcher's view
    is built from the bytes a worker sent (`from_wire`): there `headers` is
    the dict of the answer's fields, `body` its bytes and `data` the body
    decoded by its Content-Type (JSON, text or bytes) on first use.
    """

    __slots__ = ('request_id', 'status', 'headers', 'cookies', 'body',
                 '_data')

    request_id: int
    status: int
    headers: dict[str, Any] | None
    cookies: Cookies | None
    body: bytes | None
    _data: Data

    # pylint: disable-next=too-many-arguments
    def __init__(self, request_id: int = -1, data: Data = None,
                 status: int = 200, headers: dict[str, Any] | None = None,
                 cookies: Cookies | None = None, *,
                 body: bytes | None = None) -> None:
        if body is not None and data is not None:
            raise TypeError('Response() takes data or body, not both')
        self.request_id = request_id
        self.status = status
        self.headers = headers
        self.cookies = cookies
        self.body = body
        self._data = _UNSET if body is not None else data

    def __repr__(self) -> str:
        return f'<Response {self.request_id} {self.status}>'

    @classmethod
    def from_wire(cls, request_id: int, status: int,
                  wire: bytes | bytearray | memoryview) -> Response:
        """The Response of an answer's bytes as a worker built them."""
        head, _, body = bytes(wire).partition(b'\r\n\r\n')
        headers: dict[str, Any] = {}
        for line in head.decode('latin-1').split('\r\n')[1:]:
            name, _, value = line.partition(':')
            name, value = name.lower(), value.strip()
            headers[name] = f'{headers[name]}, {value}' if name in headers \
                else value
        return cls(request_id, status=status, headers=headers, body=body)

    @property
    def data(self) -> Data:
        """The data given, or the body decoded by its Content-Type: JSON,
        text, or bytes."""
        if self._data is _UNSET:
            headers = self.headers or {}
            content_type: str = headers.get('content-type', '')
            body = self.body
            if content_type.startswith(CONTENT_TYPE_JSON):
                self._data = json.loads(body) if body else None
            elif content_type.startswith('text/') and body is not None:
                self._data = body.decode('utf-8', errors='replace')
            else:
                self._data = body
        return self._data

    @data.setter
    def data(self, value: Data) -> None:
        self._data = value
