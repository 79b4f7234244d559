"""Requests and responses as application code sees them.

`Request` is what an @api handler receives in a worker: plain data that came
over the worker's channel, plus the means to answer it later (DEFERRED) or to
stream. `Response` is what the dispatcher's `on_response` hook receives.
Encoding of handler results into status, headers and body bytes lives here
too, so the dispatcher only copies bytes to sockets.
"""

import json
import re

from uhttp import server as _server

CONTENT_TYPE_JSON = 'application/json'
CONTENT_TYPE_TEXT = 'text/html; charset=utf-8'
CONTENT_TYPE_BINARY = 'application/octet-stream'

# a cookie name (RFC 6265 §4.1.1: an RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Deferred:
    """Marker a handler returns to answer later with request.respond()."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return 'DEFERRED'

    def __reduce__(self):
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

    def __init__(self, data=None, status=403):
        super().__init__(status)
        self.data = {'error': 'Rejected'} if data is None else data
        self.status = status


def encode_body(data, headers):
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


def normalize_headers(headers):
    """Copy headers into a dict of lowercase str keys and str values."""
    if not headers:
        return {}
    return {str(key).lower(): str(value) for key, value in headers.items()}


def media_type(headers):
    """The Content-Type of `headers` without parameters, lowercased; None
    when there is no Content-Type."""
    value = headers.get('content-type')
    if value is None:
        return None
    return value.split(';', 1)[0].strip().lower()


def add_cookies(headers, cookies):
    """Add a set-cookie field per cookie to `headers` (a dict with
    lowercase names, changed in place).

    `cookies`: dict of name -> value ('v; Path=/' carries attributes);
    None as a value deletes the cookie (Max-Age=0). A set-cookie already in
    `headers` (str or list) is kept before them. A name that is not an
    RFC 6265 token raises ValueError; values are checked by the framing.
    """
    lines = headers.get('set-cookie', [])
    lines = [lines] if isinstance(lines, str) else list(lines)
    for name, value in cookies.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f'cookie name {name!r} is not a token')
        lines.append(f'{name}=; Max-Age=0' if value is None
                     else f'{name}={value}')
    headers['set-cookie'] = lines


def split_result(result):
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


def encode_sse_event(data=None, event=None, event_id=None, retry=None):
    """Bytes of one Server-Sent Event (multi-line data split per line)."""
    lines = []
    if event_id is not None:
        lines.append(f'id: {event_id}')
    if event is not None:
        lines.append(f'event: {event}')
    if retry is not None:
        lines.append(f'retry: {int(retry)}')
    if data is not None:
        if not isinstance(data, str):
            data = json.dumps(data)
        lines.extend(f'data: {line}' for line in data.split('\n'))
    return ('\n'.join(lines) + '\n\n').encode('utf-8')


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

    # pylint: disable-next=too-many-arguments
    def __init__(self, request_id=-1, method='GET', path='/', query=None,
                 data=None, headers=None, content_type=None,
                 remote_address=None, context=None, *, path_params=None):
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

    def _reset(self):
        self._cookies = None
        self._worker = None
        self._state = 'new'
        self._route = ''
        self._keep_alive = False

    def __repr__(self):
        return f'<Request {self.request_id} {self.method} {self.path}>'

    def __getstate__(self):
        return (self.request_id, self.method, self.path, self.path_params,
                self.query, self.data, self.headers, self.content_type,
                self.remote_address, self.context)

    def __setstate__(self, state):
        (self.request_id, self.method, self.path, self.path_params,
         self.query, self.data, self.headers, self.content_type,
         self.remote_address, self.context) = state
        self._channel_id = self.request_id
        self._reset()

    @property
    def content_type(self):
        """The media type: as given to the constructor, else from the
        Content-Type header (without parameters, lowercased; None without
        the header)."""
        if self._content_type is None:
            self._content_type = media_type(self.headers)
        return self._content_type

    @content_type.setter
    def content_type(self, value):
        self._content_type = value

    @property
    def cookies(self):
        """Cookies from the Cookie header, parsed on first use."""
        if self._cookies is None:
            raw = self.headers.get('cookie')
            self._cookies = _server.parse_cookies(raw) if raw else {}
        return self._cookies

    @property
    def is_answered(self):
        """True once a response was sent or a stream was ended."""
        return self._state in ('answered', 'ended')

    @property
    def is_streaming(self):
        """True between response_stream() and response_stream_end()."""
        return self._state == 'streaming'

    # -- answering ---------------------------------------------------------

    def respond(self, data=None, status=200, headers=None, cookies=None):
        """Answer this request (now, or later when it was DEFERRED).

        `cookies`: dict of name -> value (attributes may follow the value:
        'v; Path=/'), sent as set-cookie fields; None as a value deletes
        that cookie. Returns False, and logs at debug level, when it was
        already answered or its worker is gone; a second answer is harmless.
        """
        if self._state != 'new' and self._state != 'deferred':
            return self._refuse('respond')
        return self._worker._send_response(
            self, data, status, headers, cookies)

    def response_stream(self, content_type=None, headers=None, cookies=None):
        """Start a streaming response (default text/event-stream)."""
        if self._state not in ('new', 'deferred'):
            return self._refuse('response_stream')
        headers = normalize_headers(headers)
        headers.setdefault(
            'content-type', content_type or _server.CONTENT_TYPE_EVENT_STREAM)
        headers.setdefault('cache-control', 'no-cache')
        return self._worker._start_stream(self, headers, cookies)

    def response_ndjson(self, headers=None, cookies=None):
        """Start a streaming response of newline-delimited JSON."""
        return self.response_stream(
            _server.CONTENT_TYPE_NDJSON, headers=headers, cookies=cookies)

    def send_chunk(self, data):
        """Send raw bytes (or str as UTF-8) on a started stream."""
        if isinstance(data, str):
            data = data.encode('utf-8')
        return self._stream(bytes(data))

    def send_event(self, data=None, event=None, event_id=None, retry=None):
        """Send one Server-Sent Event; dict/list data is sent as JSON."""
        return self._stream(encode_sse_event(data, event, event_id, retry))

    def send_ndjson(self, obj):
        """Send one object as a line of NDJSON."""
        return self._stream(json.dumps(obj).encode('utf-8') + b'\n')

    def response_stream_end(self):
        """End the stream; the dispatcher closes the connection."""
        if self._state != 'streaming':
            return self._refuse('response_stream_end')
        return self._worker._end_stream(self)

    def _stream(self, body):
        if self._state != 'streaming':
            return self._refuse('send on a stream')
        return self._worker._send_stream(self, body)

    def _refuse(self, what):
        worker = self._worker
        if worker is not None:
            worker.log.debug(
                'request %s: %s ignored (state %s)', self.request_id, what,
                self._state)
        return False


_UNSET = object()


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

    # pylint: disable-next=too-many-arguments
    def __init__(self, request_id=-1, data=None, status=200, headers=None,
                 cookies=None, *, body=None):
        if body is not None and data is not None:
            raise TypeError('Response() takes data or body, not both')
        self.request_id = request_id
        self.status = status
        self.headers = headers
        self.cookies = cookies
        self.body = body
        self._data = _UNSET if body is not None else data

    def __repr__(self):
        return f'<Response {self.request_id} {self.status}>'

    @classmethod
    def from_wire(cls, request_id, status, wire):
        """The Response of an answer's bytes as a worker built them."""
        head, _, body = bytes(wire).partition(b'\r\n\r\n')
        headers = {}
        for line in head.decode('latin-1').split('\r\n')[1:]:
            name, _, value = line.partition(':')
            name, value = name.lower(), value.strip()
            headers[name] = f'{headers[name]}, {value}' if name in headers \
                else value
        return cls(request_id, status=status, headers=headers, body=body)

    @property
    def data(self):
        """The data given, or the body decoded by its Content-Type: JSON,
        text, or bytes."""
        if self._data is _UNSET:
            headers = self.headers or {}
            content_type = headers.get('content-type', '')
            if content_type.startswith(CONTENT_TYPE_JSON):
                self._data = json.loads(self.body) if self.body else None
            elif content_type.startswith('text/'):
                self._data = self.body.decode('utf-8', errors='replace')
            else:
                self._data = self.body
        return self._data

    @data.setter
    def data(self, value):
        self._data = value
