"""The HTTP side of a service: where it answers (`Endpoint`), its health
check, and a small HTTP/1.1 client (`ServiceClient`, `ServiceResponse`) over
TCP or a Unix socket, with the errors every service module raises
(`ServiceError`, `ServiceUnavailable`, `HTTPStatusError`).

This module owns talking to a service that is already running. It must never
start, signal or wait for a process, take a service's ownership lock, or keep
any state between calls other than one client's kept-alive connection.
"""

from __future__ import annotations

import http.client
import json as _json
import os
import socket as _socket
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import Unpack

# a request body given as `data=`: bytes as they are, text (UTF-8), or a
# form (a dict or (name, value) pairs, values may be lists)
Data = bytes | str | dict[str, Any] | list[tuple[str, Any]] | \
    tuple[tuple[str, Any], ...]
# a query string given as `params=`: as it is, or a dict or pairs to encode
Params = str | bytes | Mapping[str, Any] | Sequence[tuple[str, Any]]
# seconds, or requests' (connect, read) pair
Timeout = float | tuple[float | None, float | None]
# the file system path of a Unix socket
SocketPath = str | os.PathLike[str]


class SendOptions(TypedDict, total=False):
    """The keywords of a request method besides its body (`post()`, ...)."""
    params: Params | None
    headers: Mapping[str, object] | None
    timeout: Timeout | None


class RequestOptions(SendOptions, total=False):
    """The keywords of `get()`, `head()` and `delete()`."""
    json: Any
    data: Data | None


_T = TypeVar('_T')
_Client = TypeVar('_Client', bound='ServiceClient')

STARTUP_POLL = 0.1      # seconds between health checks while a service starts
HEALTH_TIMEOUT_MAX = 2.0


class ServiceError(Exception):
    """A service could not be started, reached or understood."""


class ServiceUnavailable(ServiceError):
    """The service is not ready within the wait, or has been given up.

    `state` is the last state known to the caller (None when unknown).
    """

    def __init__(self, message: str, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state

    def __reduce__(self) -> tuple[type[ServiceUnavailable],
                                  tuple[str, str | None]]:
        return type(self), (str(self), self.state)


# -- HTTP client --------------------------------------------------------------

class HTTPStatusError(ServiceError):
    """raise_for_status() found a 4xx or 5xx answer; `response` is it."""

    def __init__(self, message: str, response: ServiceResponse) -> None:
        super().__init__(message)
        self.response = response


class Headers(dict[str, str]):
    """Response headers: a dict with lowercase keys, looked up in any case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    @overload
    def get(self, key: str, default: None = None) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    @overload
    def get(self, key: str, default: _T) -> str | _T: ...

    def get(self, key: str, default: object = None) -> object:
        return super().get(key.lower(), default)


class ServiceResponse:
    """One answer of a service, shaped like a `requests` response:
    `status_code`, `reason`, `headers` (keys in any case), `content` (bytes),
    `text`, `json()`, `ok`, `raise_for_status()`, `url`. The older names
    `status` and `body` are the same values."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str],
                 body: bytes, url: str = '') -> None:
        self.status = status
        self.reason = reason
        self.headers = Headers(headers)
        self.body = body
        self.url = url

    @property
    def status_code(self) -> int:
        """The HTTP status (the same as `status`)."""
        return self.status

    @property
    def content(self) -> bytes:
        """The body as bytes (the same as `body`)."""
        return self.body

    @property
    def ok(self) -> bool:
        """True for 1xx, 2xx and 3xx statuses."""
        return self.status < 400

    @property
    def encoding(self) -> str | None:
        """The charset of the content type, None when it names none."""
        for part in self.headers.get('content-type', '').split(';')[1:]:
            key, _, value = part.strip().partition('=')
            if key.lower() == 'charset' and value:
                return value.strip('"')
        return None

    @property
    def text(self) -> str:
        """The body decoded with the charset of its content type (UTF-8)."""
        try:
            return self.body.decode(self.encoding or 'utf-8', 'replace')
        except LookupError:
            return self.body.decode('utf-8', 'replace')

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def raise_for_status(self) -> None:
        """Raise HTTPStatusError for a 4xx or 5xx status, else do nothing."""
        if self.status >= 400:
            kind = 'Client' if self.status < 500 else 'Server'
            raise HTTPStatusError(
                f'{self.status} {kind} Error: {self.reason} for url: '
                f'{self.url}', self)

    def __repr__(self) -> str:
        return f'<ServiceResponse {self.status} {self.body[:60]!r}>'


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection to a server listening on a Unix socket path."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__('localhost', timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _encode_body(json: Any, data: Data | None,
                 given_headers: Mapping[str, object] | None
                 ) -> tuple[bytes | None, dict[str, str]]:
    headers = {key.lower(): str(value)
               for key, value in (given_headers or {}).items()}
    if json is not None and data is not None:
        raise ValueError('give json= or data=, not both')
    if json is not None:
        headers.setdefault('content-type', 'application/json')
        return _json.dumps(json).encode('utf-8'), headers
    if isinstance(data, (dict, list, tuple)):
        headers.setdefault('content-type', 'application/x-www-form-urlencoded')
        return urllib.parse.urlencode(data, doseq=True).encode('ascii'), \
            headers
    if isinstance(data, str):
        headers.setdefault('content-type', 'text/plain; charset=utf-8')
        return data.encode('utf-8'), headers
    return data, headers


def _target(path: str, params: Params | None) -> str:
    """The request target: `path` (a leading / added) with `params` (a dict
    or pairs, values may be lists) appended as a query string."""
    if not path.startswith('/'):
        path = '/' + path
    if not params:
        return path
    if isinstance(params, (str, bytes)):
        query = params.decode('ascii') if isinstance(params, bytes) else params
    else:
        query = urllib.parse.urlencode(params, doseq=True)
    return f"{path}{'&' if '?' in path else '?'}{query}"


def _seconds(timeout: Timeout) -> float:
    # requests accepts (connect, read): one socket timeout covers both here
    if isinstance(timeout, tuple):
        return max(value for value in timeout if value is not None)
    return timeout


def _read_headers(response: http.client.HTTPResponse) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in response.getheaders():
        key = key.lower()
        headers[key] = f'{headers[key]}, {value}' if key in headers else value
    return headers


class ServiceClient:
    """An HTTP/1.1 client of one service, on one kept-alive connection.

    The request methods take the keywords of `requests` that make sense
    here: `params=`, `json=`, `data=`, `headers=`, `timeout=` (seconds, for
    this request only). Use it as a context manager (the connection is
    closed at the end). Network and protocol failures raise ServiceError.
    `service` is a `Service` or an `Endpoint` (an address only).
    """

    def __init__(self, service: Endpoint, timeout: float = 30.0) -> None:
        self.service = service
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self._ready = False

    @property
    def base_url(self) -> str:
        """'http://host:port', or 'http+unix:///path' for a Unix socket."""
        if self.service.socket:
            return f'http+unix://{self.service.socket}'
        return f'http://{self.service.host}:{self.service.port}'

    @property
    def is_ready(self) -> bool:
        """True when the last readiness check (wait_ready, check_ready, or
        the wait of the call that made this client) passed."""
        return self._ready

    def check_ready(self) -> bool:
        """Run the health check once; True when it passes."""
        self._ready = self.service.is_healthy()
        return self._ready

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (default: the service's
        startup_timeout) for the health check to pass; True then, else
        raise ServiceUnavailable."""
        if timeout is None:
            timeout = self.service.startup_timeout
        deadline = time.monotonic() + timeout
        for pause in pauses():
            error = self.service.probe()
            if error is None:
                self._ready = True
                return True
            if not sleep_before(deadline, pause):
                self._ready = False
                raise self.service.not_ready(timeout, error)
        raise AssertionError('unreachable')

    def get(self, path: str,
            **kwargs: Unpack[RequestOptions]) -> ServiceResponse:
        """GET `path`."""
        return self.request('GET', path, **kwargs)

    def head(self, path: str,
             **kwargs: Unpack[RequestOptions]) -> ServiceResponse:
        """HEAD `path`."""
        return self.request('HEAD', path, **kwargs)

    def post(self, path: str, json: Any = None, data: Data | None = None,
             **kwargs: Unpack[SendOptions]) -> ServiceResponse:
        """POST a JSON value (`json=`), bytes/str or a form dict (`data=`)."""
        return self.request('POST', path, json=json, data=data, **kwargs)

    def put(self, path: str, json: Any = None, data: Data | None = None,
            **kwargs: Unpack[SendOptions]) -> ServiceResponse:
        """PUT a JSON value (`json=`), bytes/str or a form dict (`data=`)."""
        return self.request('PUT', path, json=json, data=data, **kwargs)

    def patch(self, path: str, json: Any = None, data: Data | None = None,
              **kwargs: Unpack[SendOptions]) -> ServiceResponse:
        """PATCH with a JSON value (`json=`), bytes/str or a form dict."""
        return self.request('PATCH', path, json=json, data=data, **kwargs)

    def delete(self, path: str,
               **kwargs: Unpack[RequestOptions]) -> ServiceResponse:
        """DELETE `path`."""
        return self.request('DELETE', path, **kwargs)

    def request(self, method: str, path: str, params: Params | None = None,
                json: Any = None, data: Data | None = None,
                headers: Mapping[str, object] | None = None,
                timeout: Timeout | None = None) -> ServiceResponse:
        """Send one request, return its ServiceResponse."""
        body, sent_headers = _encode_body(json, data, headers)
        target = _target(path, params)
        seconds = self.timeout if timeout is None else _seconds(timeout)
        for retry in (False, True):
            reused = self._connection is not None
            connection = self._connection or self._open()
            self._set_timeout(connection, seconds)
            try:
                connection.request(method, target, body=body,
                                   headers=sent_headers)
                response = connection.getresponse()
                result = ServiceResponse(
                    response.status, response.reason, _read_headers(response),
                    response.read(), self.base_url + target)
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as err:
                self.close()
                # the server may close a kept-alive connection while it is
                # idle: such a request never reached it, so one retry is safe
                if reused and not retry:
                    continue
                raise self._failure(method, target, err) from err
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise self._failure(method, target, err) from err
            if response.will_close:
                self.close()
            return result
        raise AssertionError('unreachable')

    @staticmethod
    def _set_timeout(connection: http.client.HTTPConnection,
                     timeout: float) -> None:
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)

    def _open(self) -> http.client.HTTPConnection:
        # pylint: disable-next=protected-access
        connection = self.service._http_connection(self.timeout)
        self._connection = connection
        return connection

    def _failure(self, method: str, path: str,
                 err: BaseException) -> ServiceError:
        return ServiceError(
            f'service {self.service.name!r} at {self.service.address}: '
            f'{method} {path} failed: {describe_error(err)}')

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_error(err: BaseException) -> str:
    """The message of an error for a log line or an exception."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError):
        return text
    return f'{type(err).__name__}: {text}'


# -- the service description -------------------------------------------------

class Endpoint:
    """Where a service answers and how to check it: TCP `host`:`port` or a
    Unix `socket` path, and its health check URL. A ServiceClient can be
    built over one alone (`ServiceClient(Endpoint(...))`)."""

    def __init__(self, name: str, port: int | None = None,
                 socket: SocketPath | None = None, host: str = '127.0.0.1',
                 health_check_url: str = '/',
                 health_check_interval: float = 5.0,
                 startup_timeout: float = 30.0) -> None:
        if (port is None) == (socket is None):
            raise ValueError(f'service {name!r}: give exactly one of port= '
                             'or socket=')
        self.name = name
        self.port = port
        self.socket = os.path.abspath(socket) if socket else None
        self.host = host
        self.health_check_url = health_check_url
        self.health_check_interval = health_check_interval
        self.startup_timeout = startup_timeout

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} at {self.address}>'

    @property
    def address(self) -> str:
        """Where the service listens: 'http://host:port' or 'unix:/path'."""
        if self.socket:
            return f'unix:{self.socket}'
        return f'http://{self.host}:{self.port}'

    def _http_connection(self, timeout: float | None
                         ) -> http.client.HTTPConnection:
        if self.socket:
            return _UnixHTTPConnection(self.socket, timeout)
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout)

    def probe(self, timeout: float | None = None) -> str | None:
        """Run the health check once: None when it passes, else why not."""
        if timeout is None:
            timeout = min(HEALTH_TIMEOUT_MAX, self.health_check_interval)
        connection = self._http_connection(timeout)
        try:
            connection.request('GET', self.health_check_url)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as err:
            return describe_error(err)
        finally:
            connection.close()
        if 200 <= response.status < 400:
            return None
        return f'GET {self.health_check_url} answered {response.status}'

    def is_healthy(self, timeout: float | None = None) -> bool:
        """True when the health check passes now."""
        return self.probe(timeout) is None

    def not_ready(self, waited: float, error: str | None = None,
                  state: str | None = None) -> ServiceUnavailable:
        """The ServiceUnavailable for a health check that did not pass
        within `waited` seconds."""
        known = f' (state: {state})' if state else ''
        detail = f'; last error: {error}' if error else ''
        return ServiceUnavailable(
            f'service {self.name!r} at {self.address} did not pass its '
            f'health check {self.health_check_url} within {waited:g}s'
            f'{known}{detail}', state)


def pauses() -> Iterator[float]:
    """Growing pauses between two health checks of a service that starts."""
    pause = STARTUP_POLL / 2
    while True:
        yield pause
        pause = min(pause * 1.5, 0.5)


def sleep_before(deadline: float, pause: float) -> bool:
    """Sleep `pause` but not past `deadline`; False when already past it."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    time.sleep(min(pause, remaining))
    return True
