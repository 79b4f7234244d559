"""Validators, preconditions and byte ranges of static files (RFC 9110).

This module owns what a static answer decides from the request's fields:
the validators of a file (`ETag`, `Last-Modified`), whether a conditional
GET/HEAD is answered `304 Not Modified` (`If-None-Match`, else
`If-Modified-Since`, in the order of RFC 9110 §13.2.2), and which byte range
a `Range` asks for (honoured only while `If-Range` still matches).

It is pure: no I/O, no sockets, no knowledge of connections; it must never
answer anything itself. Decisions where the RFC leaves a choice:

- The ETag is strong and made of the file's size, modification time (ns)
  and inode: a file rewritten in place, or replaced by another one, gets a
  new tag, even within the same second.
- `If-Match` and `If-Unmodified-Since` are not evaluated (a static file is
  never changed through this service; they are ignored, as RFC 9110 allows
  a server without the state they protect).
- One range is served (206); several ranges get the whole file (200, which
  RFC 9110 §14.2 allows), so no multipart/byteranges body is ever built.
  A `Range` that does not parse, or of another unit, is ignored (200).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from email.utils import formatdate, parsedate_tz, mktime_tz
from typing import Final, Literal

__all__ = ['UNSATISFIABLE', 'Validators', 'not_modified', 'requested_range']

# requested_range() of a range that selects nothing of the file: 416
UNSATISFIABLE: Final = 'unsatisfiable'
# what requested_range() answers: None (the whole file), (start, stop) of
# one range, or UNSATISFIABLE
RequestedRange = tuple[int, int] | Literal['unsatisfiable'] | None
# request fields by lowercase name
RequestHeaders = Mapping[str, str]

_ENTITY_TAG = re.compile(r'(?:W/)?("[^"]*")')
_BYTE_RANGE = re.compile(r'[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*\Z', re.ASCII)


class Validators:
    """The validators of one version of a file, from its `os.stat_result`:
    `etag` (a quoted strong tag), `mtime` (whole seconds), `last_modified`
    (its IMF-fixdate) and `fields`, the response fields they make
    (etag, last-modified, accept-ranges), computed once."""

    __slots__ = ('etag', 'mtime', 'last_modified', 'fields')

    def __init__(self, info: os.stat_result) -> None:
        self.etag = (f'"{info.st_size:x}-{info.st_mtime_ns:x}'
                     f'-{info.st_ino:x}"')
        self.mtime = info.st_mtime_ns // 1_000_000_000
        self.last_modified = formatdate(self.mtime, usegmt=True)
        self.fields = {'etag': self.etag,
                       'last-modified': self.last_modified,
                       'accept-ranges': 'bytes'}


def _http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date (any of the three forms of
    RFC 9110 §5.6.7), or None when it is not one."""
    try:
        parsed = parsedate_tz(value)
        return None if parsed is None else mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError):
        return None


def _tag_matches(field: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2) of `etag` with an
    If-None-Match value: `*` or a list of (possibly weak) entity tags."""
    if field.strip() == '*':
        return True
    return etag in _ENTITY_TAG.findall(field)


def not_modified(request_headers: RequestHeaders,
                 validators: Validators) -> bool:
    """True when a GET or HEAD with these (lowercase) request fields is to
    be answered 304: If-None-Match matches the ETag, or, only when there is
    no If-None-Match, the file was not modified after If-Modified-Since (an
    invalid date is ignored)."""
    none_match = request_headers.get('if-none-match')
    if none_match is not None:
        return _tag_matches(none_match, validators.etag)
    since = request_headers.get('if-modified-since')
    if since is None:
        return False
    since_time = _http_date(since)
    return since_time is not None and validators.mtime <= since_time


def _if_range_holds(field: str, validators: Validators) -> bool:
    """If-Range (RFC 9110 §13.1.5): a strong match of the ETag, or a date
    equal to Last-Modified; anything else (a weak tag) does not hold."""
    field = field.strip()
    if field.startswith('"'):
        return field == validators.etag
    if field.startswith('W/'):
        return False
    return _http_date(field) == validators.mtime


def _byte_range(spec: str, size: int) -> RequestedRange:
    """(start, stop) of one byte-range-spec, UNSATISFIABLE, or None when
    it does not parse."""
    match = _BYTE_RANGE.match(spec)
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        if last:
            end = int(last)
            if end < start:
                return None   # invalid: the whole Range is ignored
            stop = min(end + 1, size)
        else:
            stop = size
        return (start, stop) if start < size else UNSATISFIABLE
    if not last:
        return None           # '-' alone
    suffix = int(last)
    if suffix == 0 or size == 0:
        return UNSATISFIABLE
    return max(size - suffix, 0), size


def requested_range(request_headers: RequestHeaders, size: int,
                    validators: Validators) -> RequestedRange:

    """What a GET with these (lowercase) request fields asks of a file of
    `size` bytes: None for all of it (no Range, one that does not parse,
    several ranges, or an If-Range that no longer holds), (start, stop) of
    one satisfiable range, or UNSATISFIABLE (answer 416)."""
    field = request_headers.get('range')
    if field is None:
        return None
    unit, sep, ranges = field.partition('=')
    if not sep or unit.strip().lower() != 'bytes':
        return None
    if_range = request_headers.get('if-range')
    if if_range is not None and not _if_range_holds(if_range, validators):
        return None
    specs = [spec for spec in ranges.split(',') if spec.strip()]
    if len(specs) != 1:
        return None           # several ranges (or none): the whole file
    return _byte_range(specs[0], size)
