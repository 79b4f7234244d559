"""Bytes of HTTP/1.1 responses: status line, header fields, framing, body.

This module owns the wire form of an answer (RFC 9110 / RFC 9112): it
checks what a handler gave (status, header names and values, body), sets
the framing itself (Content-Length, Connection, Date) and returns the
complete bytes, so that the dispatcher only has to write them. It is pure:
no I/O, no sockets, no logging, no knowledge of requests beyond the two
facts its caller passes (may the connection stay open, is it a HEAD).
It must never send something it did not check; what cannot be sent
raises `ResponseError` (the caller then answers 500 instead).

Public API:

- `encode_response(status, headers, body, *, keep_alive, head_only=False)`
  -> bytes of a complete answer.
- `frame_response(...)`, same arguments -> `(bytes, keep_alive)`: the same
  bytes, and whether the connection stays open after them (False when the
  caller passed keep_alive=False or the handler set `connection: close`).
- `encode_stream_head(status, headers, cookies=None)` -> bytes of the head
  of a streaming answer (its body is delimited by closing the connection).
- `with_close(data)` -> the same answer saying `connection: close`, for a
  caller that decides to close after the bytes were built (e.g. shutdown).
- `reason_phrase(status)` -> str.
- `http_date()` -> the Date field value of now, for answers built elsewhere.

Decisions (where the RFCs leave a choice):

- Status: an int (bool refused; int subclasses such as `HTTPStatus` are
  accepted as their value) in 200..599. 1xx statuses are interim answers,
  never a complete response: all are refused, 101 included (this service
  cannot hand a connection over to another protocol).
- 204 and 304 carry no body and no Content-Length; 205 carries no body and
  `content-length: 0` (RFC 9110 §15.3.6). A body given with them is dropped
  silently: it must not reach the wire, or it would be read as the start of
  the next response.
- HEAD (`head_only=True`): the Content-Length GET would send, no body bytes.
- Header names: tokens (RFC 9110 §5.6.2), any case, sent as given (the
  project's handlers give lowercase names). Values: str, int or float (the
  latter two sent as `str()`), or a list/tuple of those for a repeated
  field (one line each, e.g. set-cookie; an empty list sends nothing).
  None, bool, bytes and any other object are refused: their text form is
  a guess. A value must not contain a control character other than HTAB
  (NUL, CR, LF, DEL...). Non-ASCII text is sent as UTF-8 (obs-text bytes,
  as uhttp-server did); leading/trailing spaces are allowed (a recipient
  strips them).
- Framing is ours: a handler's `content-length` is dropped (the real
  length is sent), a `transfer-encoding` is refused (a body the handler
  chunk-encoded would otherwise reach the client as content). A handler's
  `connection` field is replaced by ours: `close` in it closes the
  connection, any other token is ignored.
- A handler's `date` is kept; otherwise a Date (IMF-fixdate) is added,
  recomputed at most once per second.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from time import time as _now

from uhttp.server import STATUS_CODES

# one value of a header field: str, int or float (checked when encoded)
Scalar = str | int | float
# a field's value: one, or several (a repeated field such as set-cookie)
HeaderValue = Scalar | list[Scalar] | tuple[Scalar, ...]
# the handler's header fields: name -> value (see the module docstring)
Headers = Mapping[str, HeaderValue]
# a streaming answer's cookies: name -> value; None deletes the cookie
StreamCookies = Mapping[str, Scalar | None]
# what a body may be given as (copied into bytes)
Body = bytes | bytearray | memoryview

# `type(x) is int/str/bytes` below are the fast paths, and exact on purpose:
# 200.0 and True hash and compare like ints, subclasses take the slow path
# pylint: disable=unidiomatic-typecheck


class ResponseError(ValueError):
    """A response that must not go on the wire (the caller answers 500 instead)."""


# -- status lines ----------------------------------------------------------

def _reasons() -> dict[int, str]:
    reasons = {int(status): status.phrase for status in HTTPStatus}
    # uhttp-server's phrases, as sent until now
    server_phrases: dict[int, str] = STATUS_CODES
    reasons.update(server_phrases)
    return reasons


_REASONS = _reasons()

# status line of every final status, built once: a dict lookup per answer
_STATUS_LINES = {
    code: f'HTTP/1.1 {code} {_REASONS.get(code, "")}\r\n'
    for code in range(200, 600)}

# final statuses whose answers carry no content (RFC 9110 §15.3.5,
# §15.3.6, §15.4.5)
_BODYLESS = frozenset((204, 205, 304))


def reason_phrase(status: int) -> str:
    """The reason phrase sent for `status`, '' for a code without one."""
    return _REASONS.get(status, '')


def _final_status(status: object) -> tuple[int, str]:
    """(code, status line) of an unusual status value, or ResponseError."""
    if isinstance(status, bool) or not isinstance(status, int):
        raise ResponseError(
            f'status must be an int, not {type(status).__name__} {status!r}')
    code = int(status)  # an IntEnum such as HTTPStatus.OK
    line = _STATUS_LINES.get(code)
    if line is not None:
        return code, line
    if code == 101:
        raise ResponseError(
            'status 101 (Switching Protocols) is not a complete response: '
            'switching protocols is not supported')
    if 100 <= code <= 199:
        raise ResponseError(
            f'status {code} is an interim (1xx) response, not a final answer')
    raise ResponseError(f'status {code} is outside 100..599')


# -- header fields ---------------------------------------------------------

# tchar of RFC 9110 §5.6.2
_TCHARS = ("!#$%&'*+-.^_`|~0123456789"
           'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ')
# what a field value must not hold: CTLs except HTAB, and DEL
_BAD_VALUE_CHAR = re.compile('[\x00-\x08\x0a-\x1f\x7f]').search

# kinds of field name: the framing ones are handled by this module
_PLAIN, _DATE, _CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING = range(5)
_SPECIAL = {'date': _DATE, 'connection': _CONNECTION,
            'content-length': _CONTENT_LENGTH,
            'transfer-encoding': _TRANSFER_ENCODING}

# validated field names -> kind: names repeat from answer to answer, so
# each is checked once. Bounded, so that generated names cannot grow it.
_NAME_KINDS: dict[str, int] = {}
_NAME_CACHE_MAX = 1024

# flags _collect returns
_CLOSE = 1
_HAS_DATE = 2

_KEEP_ALIVE_LINE = 'connection: keep-alive\r\n'
_CLOSE_LINE = 'connection: close\r\n'


def _learn_name(name: object) -> int:
    """Kind of a field name seen for the first time, or ResponseError."""
    if not isinstance(name, str):
        raise ResponseError(
            f'header name must be a str, not {type(name).__name__} {name!r}')
    # every char a tchar <=> stripping the tchars leaves nothing
    if not name or name.strip(_TCHARS):
        raise ResponseError(
            f'header name {name!r} is not a token (RFC 9110 §5.6.2)')
    kind = _SPECIAL.get(name.lower(), _PLAIN)
    if type(name) is str and len(_NAME_KINDS) < _NAME_CACHE_MAX:
        _NAME_KINDS[name] = kind
    return kind


def _check_text(name: str, value: str) -> None:
    """Refuse a str value holding a control character (CR/LF injection)."""
    found = _BAD_VALUE_CHAR(value)
    if found is not None:
        raise ResponseError(
            f'header {name!r}: value {value!r} contains the control '
            f'character {found.group()!r}')


def _scalar(name: str, value: object) -> str:
    """A checked str of one field value given as str, int or float."""
    if isinstance(value, str):
        value = str.__str__(value)  # a plain str, whatever the subclass
        if not value.isprintable():
            _check_text(name, value)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResponseError(
            f'header {name!r}: value must be a str, int or float (or a '
            f'list of them), not {type(value).__name__} {value!r}')
    # int()/float() first: the plain number, not an enum's or subclass' text
    return str(float(value)) if isinstance(value, float) else str(int(value))


def _values(name: str, value: object) -> list[str]:
    """Checked str values of a field: one, or several for a list/tuple."""
    if isinstance(value, (list, tuple)):
        return [_scalar(name, item) for item in value]
    return [_scalar(name, value)]


def _special(kind: int, name: str, values: list[str],
             out: list[str]) -> int:
    """Handle a framing field of the handler; return _collect's flags."""
    if kind == _DATE:
        out.extend(f'{name}: {value}\r\n' for value in values)
        return _HAS_DATE
    if kind == _TRANSFER_ENCODING:
        raise ResponseError(
            f'header {name!r} is refused: the framing is set by the encoder '
            '(give the body as plain bytes)')
    if kind == _CONNECTION:
        tokens = ','.join(values).lower().split(',')
        if 'close' in (token.strip() for token in tokens):
            return _CLOSE
    return 0  # content-length: dropped, the real length is sent


def _collect(headers: Headers, out: list[str]) -> int:
    """Append the handler's checked header lines to `out`; return flags."""
    flags = 0
    kinds = _NAME_KINDS
    append = out.append
    for name, value in headers.items():
        kind = kinds.get(name)
        if kind is None:
            kind = _learn_name(name)
        if kind:
            flags |= _special(kind, name, _values(name, value), out)
        elif type(value) is str:
            # the common case, kept short: one str value of a plain field
            if not value.isprintable():
                _check_text(name, value)
            append(f'{name}: {value}\r\n')
        else:
            out.extend(f'{name}: {item}\r\n' for item in _values(name, value))
    return flags


# -- Date ------------------------------------------------------------------

# the Date line of the current second, and when it expires; _date_line
# writes the line before the expiry, so a reader that sees a fresh expiry
# also sees the line of that second
_date = ''
_date_expires = 0.0


_date_value = ''


def _date_line() -> str:
    """The Date field of now (RFC 9110 §5.6.7 IMF-fixdate), once a second."""
    # pylint: disable-next=global-statement
    global _date, _date_value, _date_expires
    now = _now()
    if now >= _date_expires:
        second = int(now)
        _date_value = formatdate(second, usegmt=True)
        _date = f'date: {_date_value}\r\n'
        _date_expires = second + 1
    return _date


def http_date() -> str:
    """The value of a Date field for now (IMF-fixdate, RFC 9110 §5.6.7),
    computed at most once per second: for answers built elsewhere than in
    this module (uhttp-server's respond() adds none)."""
    if _now() >= _date_expires:
        _date_line()
    return _date_value


# -- body ------------------------------------------------------------------

def _body_bytes(body: object) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise ResponseError(
        f'body must be bytes, not {type(body).__name__}: encode it first')


# -- complete answers ------------------------------------------------------

def frame_response(status: int, headers: Headers | None, body: Body, *,
                   keep_alive: bool,
                   head_only: bool = False) -> tuple[bytes, bool]:
    """Bytes of a complete answer, and whether the connection stays open.

    `status`: int 200..599. `headers`: dict of field name -> value (see the
    module docstring), or None. `body`: bytes (the body a GET would get,
    also for HEAD). `keep_alive`: the caller's decision from the request
    (HTTP version, its Connection field, request count); a handler's
    `connection: close` turns it off. `head_only`: answer a HEAD request.

    Returns (data, keep_alive). Raises ResponseError for an answer that
    must not be sent.
    """
    return _frame(status, headers, body, keep_alive, head_only)


def encode_response(status: int, headers: Headers | None, body: Body, *,
                    keep_alive: bool, head_only: bool = False) -> bytes:
    """Bytes of a complete answer (see frame_response for the arguments).

    The connection stays open after it unless keep_alive is false or the
    handler's headers say `connection: close`; use frame_response to get
    that decision back. Raises ResponseError.
    """
    return _frame(status, headers, body, keep_alive, head_only)[0]


def _frame(status: int, headers: Headers | None, body: Body,
           keep_alive: bool, head_only: bool) -> tuple[bytes, bool]:
    line = _STATUS_LINES.get(status) if type(status) is int else None
    if line is None:  # not a plain int 200..599: convert or refuse
        status, line = _final_status(status)
    if type(body) is not bytes:
        body = _body_bytes(body)
    out = [line, '']  # [1]: the Connection line, known after the headers
    flags = _collect(headers, out) if headers else 0
    if flags & _CLOSE:
        keep_alive = False
    out[1] = _KEEP_ALIVE_LINE if keep_alive else _CLOSE_LINE
    if not flags & _HAS_DATE:
        out.append(_date_line())
    if status in _BODYLESS:
        # 204/304: no Content-Length at all; 205: an explicit zero
        out.append('content-length: 0\r\n\r\n' if status == 205 else '\r\n')
        return ''.join(out).encode(), keep_alive
    out.append(f'content-length: {len(body)}\r\n\r\n')
    if head_only or not body:
        return ''.join(out).encode(), keep_alive
    return ''.join(out).encode() + body, keep_alive


_KEEP_ALIVE_BYTES = _KEEP_ALIVE_LINE.encode()
_CLOSE_BYTES = _CLOSE_LINE.encode()


def with_close(data: bytes) -> bytes:
    """The answer `data` (from this module) saying `connection: close`.

    For a caller that decides to close the connection after the bytes were
    built. The Connection line is the first field this module writes, so
    this is a check and one copy, no parsing.
    """
    start = data.find(b'\r\n') + 2
    if data.startswith(_CLOSE_BYTES, start):
        return data
    if not data.startswith(_KEEP_ALIVE_BYTES, start):
        raise ValueError('not an answer built by uhttp.workers.framing')
    return data[:start] + _CLOSE_BYTES + data[start + len(_KEEP_ALIVE_BYTES):]


# -- streaming answers -----------------------------------------------------

_STREAM_DEFAULTS = (('content-type', 'text/event-stream'),
                    ('cache-control', 'no-cache'))


def _cookie_lines(cookies: StreamCookies, out: list[str]) -> None:
    """set-cookie lines of a {name: value} dict; None deletes the cookie."""
    for name, value in cookies.items():
        if not isinstance(name, str) or not name or name.strip(_TCHARS):
            raise ResponseError(
                f'cookie name {name!r} is not a token (RFC 6265 §4.1.1)')
        value = '; Max-Age=0' if value is None else _scalar(
            f'set-cookie: {name}', value)
        out.append(f'set-cookie: {name}={value}\r\n')


def encode_stream_head(status: int, headers: Headers | None,
                       cookies: StreamCookies | None = None) -> bytes:

    """Bytes of the head of a streaming answer; its body follows as is.

    Like uhttp-server's response_stream: no Content-Length, the stream ends
    when the connection closes, so the head says `connection: close` (a
    handler's Connection field is ignored). content-type defaults to
    text/event-stream and cache-control to no-cache. `cookies`: dict of
    name -> value (attributes may follow the value: 'v; Path=/'), None as a
    value deletes that cookie. Headers are checked as in frame_response;
    a status without content (204, 205, 304) is refused. Raises
    ResponseError.
    """
    line = _STATUS_LINES.get(status) if type(status) is int else None
    if line is None:
        status, line = _final_status(status)
    if status in _BODYLESS:
        raise ResponseError(
            f'status {status} carries no content: it cannot start a stream')
    out = [line, _CLOSE_LINE]
    flags = _collect(headers, out) if headers else 0
    given = {name.lower() for name in headers} if headers else ()
    for name, value in _STREAM_DEFAULTS:
        if name not in given:
            out.append(f'{name}: {value}\r\n')
    if cookies:
        _cookie_lines(cookies, out)
    if not flags & _HAS_DATE:
        out.append(_date_line())
    out.append('\r\n')
    return ''.join(out).encode()
