"""The access log: one line per finished request, written by the dispatcher.

This module owns the access log's formats (`common`, `combined`, `json` or
a template with named fields), the connection class that notes what each
response was (`AccessLoggedConnection`) and `AccessLog`, which turns a
finished response into a line and hands it to the `uhttp.workers.access`
stdlib logger (or the logger the application named).

It runs in the dispatcher, the serial part of the whole server: per request
it does one format operation and one hand-over, never `strftime` (the time
text is made once a second), never a lookup it could have done at start.
It must never raise into the loop, and never cost anything when the access
log is off (the dispatcher then keeps plain `Connection`s and never calls
here).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeAlias

from .connection import Connection
from .framing import Body, Headers
from .log import LOG_INFO, LineSink, LogRouter

ACCESS_LOGGER = 'uhttp.workers.access'
FORMATS = ('common', 'combined', 'json')
# the named fields a template may use (and the keys of the json format)
FIELDS = ('remote', 'time', 'time_iso', 'method', 'path', 'protocol',
          'status', 'bytes', 'duration_ms', 'served_by', 'request_id',
          'referer', 'user_agent')

_encode_json = json.JSONEncoder(separators=(',', ':')).encode

# the length of a response body: a Content-Length field's value as the
# response headers hold it (an int, or the text an application gave), or
# None when unknown (a stream)
Size: TypeAlias = int | str | None


class Exchange(Protocol):
    """What AccessLog reads of a connection that has just answered (an
    AccessLoggedConnection): uhttp-server's fields of the request, read
    directly since this runs per request."""

    @property
    def _method(self) -> str | None:
        """The request method; None when no request line was read."""

    @property
    def _url(self) -> str | None:
        """The request target."""

    @property
    def _protocol(self) -> str | None:
        """The request's HTTP version."""

    @property
    def _headers(self) -> Mapping[str, str] | None:
        """The request's fields (lower-case names)."""

    @property
    def _request_start(self) -> float | None:
        """When the request began (time.time())."""

    @property
    def _socket_ip(self) -> str:
        """The address of the socket's peer."""

    @property
    def remote_address(self) -> str:
        """The client's address (X-Forwarded-For from trusted proxies)."""

    @property
    def access_by(self) -> str:
        """Who served the request."""

    @property
    def access_id(self) -> str:
        """The request id, '-' for none."""


_Line: TypeAlias = Callable[[Exchange, int, Size, float], str]


def _quoted(value: str | None) -> str:
    """A header value inside the double quotes of a log line."""
    if value is None:
        return '-'
    if '"' in value or '\\' in value:
        return value.replace('\\', '\\\\').replace('"', '\\"')
    return value


def check_template(template: str) -> None:
    """Raise ValueError unless `template` formats with FIELDS only."""
    try:
        template.format_map({name: '' for name in FIELDS})
    except KeyError as err:
        raise ValueError(f'access_log_format: unknown field {err} (known: '
                         f'{", ".join(FIELDS)})') from None
    except (ValueError, IndexError) as err:
        raise ValueError(f'access_log_format: {err}') from None


class AccessLog:
    """Formats finished requests and hands each line to the log.

    `fmt`: 'common' (the Common Log Format, then duration in ms, who served
    the request and its id), 'combined' (also referer and user agent, as
    Apache's combined format places them), 'json' (one object per line with
    the FIELDS as keys) or a template string such as
    `'{remote} {method} {path} {status} {duration_ms}'`.
    `resolve()` returns the callable that writes a line; it is asked once
    a second (with the time texts), so that logging configured meanwhile
    is honoured without a look-up per line.
    """

    def __init__(self, fmt: str, resolve: Callable[[], LineSink],
                 trusts_proxies: bool = False) -> None:
        if fmt not in FORMATS:
            if not isinstance(fmt, str):
                raise ValueError(f'access_log_format must be one of '
                                 f'{FORMATS} or a template string')
            check_template(fmt)
        self.format = fmt
        self._resolve = resolve
        self._trusts_proxies = trusts_proxies
        self._second: int | None = None
        self._clf = self._iso = ''   # this second as text, two ways
        self._write: LineSink | None = None
        self._line: _Line = {
            'common': self._common, 'combined': self._combined,
            'json': self._json}.get(fmt, self._template)

    def _new_second(self, second: int) -> None:
        local = time.localtime(second)
        self._clf = time.strftime('%d/%b/%Y:%H:%M:%S %z', local)
        self._iso = time.strftime('%Y-%m-%dT%H:%M:%S%z', local)
        self._write = self._resolve()
        self._second = second

    def finished(self, connection: Exchange, status: int,
                 size: Size) -> None:
        """Log the request `connection` has just answered `status`, with a
        body of `size` bytes (None: unknown, e.g. a stream)."""
        now = time.time()
        if int(now) != self._second:
            self._new_second(int(now))
        start = connection._request_start  # pylint: disable=protected-access
        duration = (now - start) * 1000 if start else 0.0
        if connection._method == 'HEAD':  # pylint: disable=protected-access
            size = 0
        assert self._write is not None    # resolved by _new_second()
        self._write(self._line(connection, status, size, duration))

    def _remote(self, connection: Exchange) -> str:
        if self._trusts_proxies and connection._headers:  # pylint: disable=protected-access
            return connection.remote_address
        return connection._socket_ip  # pylint: disable=protected-access

    # pylint: disable=protected-access
    # (the connection's fields are read directly: this runs per request)

    def _common(self, connection: Exchange, status: int, size: Size,
                duration: float) -> str:
        method = connection._method
        request = f'{method} {connection._url} {connection._protocol}' \
            if method else '-'
        remote = connection.remote_address if self._trusts_proxies \
            else connection._socket_ip
        return (f'{remote} - - [{self._clf}]'
                f' "{request}" {status} {"-" if size is None else size}'
                f' {duration:.3f}ms {connection.access_by}'
                f' {connection.access_id}')

    def _combined(self, connection: Exchange, status: int, size: Size,
                  duration: float) -> str:
        method = connection._method
        headers = connection._headers
        if method:
            assert headers is not None  # read with the method
            request = f'{method} {connection._url} {connection._protocol}'
            referer = _quoted(headers.get('referer'))
            agent = _quoted(headers.get('user-agent'))
        else:
            request = referer = agent = '-'
        return (f'{self._remote(connection)} - - [{self._clf}]'
                f' "{request}" {status} {"-" if size is None else size}'
                f' "{referer}" "{agent}"'
                f' {duration:.3f}ms {connection.access_by}'
                f' {connection.access_id}')

    def _fields(self, connection: Exchange, status: int, size: Size,
                duration: float) -> dict[str, object]:
        headers = connection._headers or {}
        request_id = connection.access_id
        return {
            'remote': self._remote(connection), 'time': self._clf,
            'time_iso': self._iso,
            'method': connection._method, 'path': connection._url,
            'protocol': connection._protocol, 'status': status,
            'bytes': size, 'duration_ms': round(duration, 3),
            'served_by': connection.access_by,
            'request_id': None if request_id == '-' else request_id,
            'referer': headers.get('referer'),
            'user_agent': headers.get('user-agent')}

    def _json(self, connection: Exchange, status: int, size: Size,
              duration: float) -> str:
        return _encode_json(self._fields(connection, status, size, duration))

    def _template(self, connection: Exchange, status: int, size: Size,
                  duration: float) -> str:
        fields = self._fields(connection, status, size, duration)
        for key, value in fields.items():
            if value is None:
                fields[key] = '-'
        return self.format.format_map(fields)

    # pylint: enable=protected-access


class AccessLoggedConnection(Connection):
    """A `Connection` that logs each response it finishes.

    The status and length come from the response head uhttp-server builds
    (or from the dispatcher, via `note()`, for a worker's ready-made
    answer); the line is written when the connection is reset for its next
    request or closed, i.e. once the response is over (a stream: when it
    ends). The dispatcher sets `access_by` (the worker, 'sync', 'static')
    and `access_id` (the request id) as it serves the request.
    """

    # the status of the response under way
    access_status: int | None = None
    access_length: Size = None
    access_by = '-'
    access_id = '-'

    def note(self, status: int, length: Size, served_by: str,
             request_id: str) -> None:
        """Record a response the dispatcher writes itself (a worker's)."""
        self.access_status = status
        self.access_length = length
        self.access_by = served_by
        self.access_id = request_id

    def _build_response_header(
            self, status: int = 200, headers: dict[str, Any] | None = None,
            cookies: Any = None) -> Any:
        self.access_status = status
        self.access_length = headers.get('content-length') \
            if headers else None
        return super()._build_response_header(status, headers, cookies)

    def respond_framed(self, status: int, headers: Headers | None,
                       body: Body) -> None:
        self.access_status = status
        self.access_length = len(body)
        super().respond_framed(status, headers, body)

    def _log_access(self) -> None:
        status, self.access_status = self.access_status, None
        try:
            self._server.access_log.finished(self, status, self.access_length)
        except Exception as err:  # pylint: disable=broad-except
            # a broken log handler must not take the connection down
            logging.getLogger(ACCESS_LOGGER).error(
                'access log failed: %r', err)
        self.access_by = self.access_id = '-'

    def reset(self) -> None:
        if self.access_status is not None:
            self._log_access()
        super().reset()

    def close(self) -> None:
        if self.access_status is not None:
            self._log_access()
        super().close()


def build(access_log: bool | str | logging.Logger | None,
          access_log_format: str, router: LogRouter,
          trusts_proxies: bool = False) -> AccessLog | None:
    """The dispatcher's AccessLog for its `access_log` and
    `access_log_format` options, or None when it is off.

    `access_log`: True (the `uhttp.workers.access` logger, routed by
    `router` like every record), False/None (off), a logger name or a
    `logging.Logger` (that logger, at INFO, honouring its level)."""
    if not access_log:
        return None
    if access_log is True:
        def resolve() -> LineSink:
            return router.sink(ACCESS_LOGGER, 'access', LOG_INFO)
    else:
        logger = access_log if isinstance(access_log, logging.Logger) \
            else logging.getLogger(str(access_log))

        def deliver(line: str) -> None:
            if logger.isEnabledFor(LOG_INFO):
                # args None: no arguments (logging takes it; its stubs
                # want a tuple)
                logger.handle(logger.makeRecord(
                    logger.name, LOG_INFO, '', 0, line,
                    None, None))  # type: ignore[arg-type]

        def resolve() -> LineSink:
            return deliver
    return AccessLog(access_log_format, resolve, trusts_proxies)
