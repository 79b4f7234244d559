"""Safe static file resolution for uhttp.workers.

This module owns mapping URL prefixes to directories, turning a request
path into a decision (serve this file, with type and size; redirect a
directory URL to its trailing-slash form; or 404), opening a decided file
without leaving the root, and handing a file's bytes or open file to a
connection (:class:`StaticBody`), whole or one byte range of it, or a 304
when the client's copy is current (the decisions are
:mod:`static_http`'s).

It must never decode the path again (the HTTP server already
percent-decoded it once; ``%2e`` arriving here is a literal name), list
directories, or open anything outside a configured root. Resolution checks
containment with ``os.path.realpath`` + ``os.path.commonpath``, so a symlink
leading out of the root is refused while one inside it works. Because the
tree may change between that check and the open (a file swapped for a
symlink), :func:`open_inside` opens the resolved real path again component
by component from the root, each with ``O_NOFOLLOW``: the file it returns
is the one the check approved, or none at all. Hidden files (``.name``) are
served like any other file; do not put secrets in a static root.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import posixpath
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, TypedDict

from .framing import HeaderValue, ResponseError, encode_response
from .static_http import (UNSATISFIABLE, Validators, not_modified,
                          requested_range)

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ['StaticBody', 'StaticFiles', 'StaticResult', 'open_inside']

_INDEX = 'index.html'

# Consulted before `mimetypes`, whose answers depend on the host's
# mime.types files (older ones say application/javascript for .js).
_WEB_TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.htm': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.mjs': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.txt': 'text/plain; charset=utf-8',
    '.json': 'application/json',
    '.map': 'application/json',
    '.svg': 'image/svg+xml',
    '.wasm': 'application/wasm',
    '.png': 'image/png',
    '.jpg': 'image/jpeg',
    '.jpeg': 'image/jpeg',
    '.gif': 'image/gif',
    '.webp': 'image/webp',
    '.ico': 'image/x-icon',
    '.woff': 'font/woff',
    '.woff2': 'font/woff2',
    '.mp4': 'video/mp4',
}

_TEXT_APPLICATION_TYPES = frozenset({
    'application/javascript', 'application/xml'})

_DEFAULT_TYPE = 'application/octet-stream'

# the extra response fields of a mount
MountHeaders = dict[str, HeaderValue]


class _MountPath(TypedDict):
    path: str | os.PathLike[str]


class MountOptions(_MountPath, total=False):
    """A mount of static_routes given as a dict (the uhttp-workers 1.x
    form): `path` (required), `headers`, `authoritative`."""

    headers: Mapping[str, HeaderValue] | None
    authoritative: bool


# what static_routes maps a prefix to: a directory, or mount options
StaticMount = str | os.PathLike[str] | MountOptions
# (real root, headers or None, authoritative) of one mount
_Mount = tuple[str, MountHeaders | None, bool]


def _content_type(name: str) -> str:
    """Return the Content-Type for a file name (by extension)."""
    ext = posixpath.splitext(name)[1].lower()
    known = _WEB_TYPES.get(ext)
    if known is not None:
        return known
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    # 'x.tar.gz' guesses as tar with gzip encoding; labelling the gzip
    # bytes as tar would be wrong, and we send no Content-Encoding.
    if guessed is None or encoding is not None:
        return _DEFAULT_TYPE
    if guessed.startswith('text/') or guessed in _TEXT_APPLICATION_TYPES:
        return guessed + '; charset=utf-8'
    return guessed


class StaticResult(NamedTuple):
    """Outcome of :meth:`StaticFiles.lookup` for a path under a prefix:
    status, file_path (its real path), content_type, size, location (of a
    301), root (the real root it was found in), headers (the mount's extra
    response headers, or None) and authoritative (a 404 of this mount is
    the answer; otherwise the path goes on to the pools), immutable."""

    status: int
    file_path: str | None = None
    content_type: str | None = None
    size: int | None = None
    location: str | None = None
    root: str | None = None
    headers: MountHeaders | None = None
    authoritative: bool = False


_NOT_FOUND = StaticResult(404)


def _is_inside(root: str, path: str) -> bool:
    """True when real path ``path`` is ``root`` or below it."""
    return os.path.commonpath((root, path)) == root


def _safe_segments(rest: str) -> list[str] | None:
    """Split the part after the prefix; None if it must be refused."""
    if '\x00' in rest:
        return None
    segments = [seg for seg in rest.split('/') if seg not in ('', '.')]
    if '..' in segments:
        return None
    return segments


class StaticFiles:
    """Maps URL prefixes to directories and resolves request paths to files, never outside a root.

    ``static_routes`` maps URL prefixes (normalised to end with '/') to
    directories, or to mount options ``{'path': directory, 'headers':
    {...}, 'authoritative': bool}`` (the form of uhttp-workers 1.x):
    ``headers`` go out with each file served, and an ``authoritative``
    mount answers 404 for what it does not have, where any other mount lets
    the path go on to a shorter mount, then to the pools. Relative
    directories are resolved against the current working directory at
    construction. The longest matching prefix wins, and the prefix without
    its trailing slash (``/static``) counts as the prefix itself (a
    directory URL, so it is redirected to ``/static/``).
    """

    def __init__(self,
                 static_routes: Mapping[str, StaticMount] | None) -> None:
        routes: dict[str, _Mount] = {}
        for prefix, mount in (static_routes or {}).items():
            prefix = self._normalise_prefix(prefix)
            if prefix in routes:
                raise ValueError(f'duplicate static prefix {prefix!r}')
            routes[prefix] = self._mount(prefix, mount)
        self._routes = sorted(
            routes.items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def _mount(cls, prefix: str, mount: StaticMount) -> _Mount:
        """(real root, headers or None, authoritative) of one mount."""
        if not isinstance(mount, dict):
            return cls._resolve_root(mount), None, False
        unknown = set(mount) - {'path', 'headers', 'authoritative'}
        if 'path' not in mount or unknown:
            raise ValueError(
                f'static_routes[{prefix!r}]: a mount dict takes path '
                f"(required), headers and authoritative; got {sorted(mount)}")
        headers = mount.get('headers')
        if headers is not None and not isinstance(headers, dict):
            raise ValueError(
                f'static_routes[{prefix!r}]: headers must be a dict')
        if headers:
            headers = {str(k).lower(): v for k, v in headers.items()}
            try:   # refused now rather than with every answer
                encode_response(200, headers, b'', keep_alive=True)
            except ResponseError as err:
                raise ValueError(
                    f'static_routes[{prefix!r}]: headers: {err}') from None
        return (cls._resolve_root(mount['path']), headers or None,
                bool(mount.get('authoritative', False)))

    @staticmethod
    def _normalise_prefix(prefix: object) -> str:
        if not isinstance(prefix, str) or not prefix.startswith('/'):
            raise ValueError(f"static prefix must start with '/': {prefix!r}")
        return prefix if prefix.endswith('/') else prefix + '/'

    @staticmethod
    def _resolve_root(root: str | os.PathLike[str]) -> str:
        real = os.path.realpath(os.path.expanduser(os.fspath(root)))
        if not os.path.isdir(real):
            raise ValueError(
                f'static root {root!r} is not a directory (resolved: {real})')
        return real

    def __bool__(self) -> bool:
        return bool(self._routes)

    def __repr__(self) -> str:
        return f'StaticFiles({dict(self._routes)!r})'

    @property
    def stems(self) -> tuple[str, ...]:
        """A tuple of strings every path under a mount starts with (for a
        cheap `str.startswith` test before any lookup)."""
        return tuple(prefix[:-1] for prefix, _mount in self._routes)

    def lookup(self, path: str) -> StaticResult | None:
        """Resolve an already percent-decoded request path.

        Returns None when no static prefix matches (routing continues
        elsewhere), otherwise a :class:`StaticResult`: 200 with the file,
        301 with ``location`` for a directory URL lacking its trailing
        slash, or 404 for anything missing, unreadable, not a regular file,
        malformed or outside the root. A 404 of a mount that is not
        authoritative lets a shorter matching mount try; the last such 404
        is returned (``authoritative`` False: the caller passes the path on).
        """
        missed = None
        for prefix, (root, headers, authoritative) in self._routes:
            if path.startswith(prefix):
                rest = path[len(prefix):]
            elif len(prefix) > 1 and path == prefix[:-1]:
                rest = ''
            else:
                continue
            result = self._resolve(root, path, rest)
            if result.status != 404:
                return result._replace(headers=headers) if headers else result
            if authoritative:   # file_path: what it looked for
                return StaticResult(404, file_path=os.path.normpath(
                    os.path.join(root, rest)), authoritative=True)
            missed = result
        return missed

    def _resolve(self, root: str, path: str, rest: str) -> StaticResult:
        segments = _safe_segments(rest)
        if segments is None:
            return _NOT_FOUND
        real = os.path.realpath(os.path.join(root, *segments))
        info = self._stat_inside(root, real)
        if info is None:
            return _NOT_FOUND
        if stat.S_ISDIR(info.st_mode):
            if not path.endswith('/'):
                return StaticResult(301, location=path + '/')
            return self._index(root, real)
        if path.endswith('/'):
            # 'file.txt/' names a directory that does not exist.
            return _NOT_FOUND
        name = segments[-1] if segments else real
        return self._file(root, real, info, name)

    def _index(self, root: str, directory: str) -> StaticResult:
        real = os.path.realpath(os.path.join(directory, _INDEX))
        info = self._stat_inside(root, real)
        if info is None:
            return _NOT_FOUND
        return self._file(root, real, info, _INDEX)

    @staticmethod
    def _stat_inside(root: str, real: str) -> os.stat_result | None:
        """os.stat of ``real`` if it lies inside ``root``, else None."""
        if not _is_inside(root, real):
            return None
        try:
            return os.stat(real)
        except OSError:
            return None

    @staticmethod
    def _file(root: str, real: str, info: os.stat_result,
              name: str) -> StaticResult:
        """200 for a readable regular file; the URL name picks the type."""
        if not stat.S_ISREG(info.st_mode) or not os.access(real, os.R_OK):
            return _NOT_FOUND
        return StaticResult(
            200, file_path=real, content_type=_content_type(name),
            size=info.st_size, root=root)


_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
# O_PATH (Linux) walks a directory that may be searched but not listed,
# as a path-based open would.
_DIR_FLAGS = (getattr(os, 'O_PATH', os.O_RDONLY) | os.O_DIRECTORY
              | os.O_NOFOLLOW | _CLOEXEC)
# O_NONBLOCK: a FIFO swapped in must not block the opener (it is refused
# after fstat); it changes nothing for a regular file.
_FILE_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
               | _CLOEXEC)


def open_inside(root: str,
                file_path: str) -> tuple[BinaryIO, os.stat_result]:
    """Open ``file_path``, a real path below the real directory ``root``,
    for reading, following no symlink on the way.

    The root and then each component are opened relative to the previous
    one (``dir_fd=``, i.e. openat) with ``O_NOFOLLOW``, so a component that
    became a symlink since the path was resolved (even one pointing inside
    the root) makes the open fail instead of leading elsewhere. Returns
    (binary file, ``os.stat_result`` of that open file); raises OSError when
    it cannot be opened or is not a regular file.
    """
    # both are real paths (normalised, no symlinks): a prefix test is a
    # containment test, and cheaper than relpath + commonpath per request
    prefix = root if root.endswith(os.sep) else root + os.sep
    parts = file_path[len(prefix):].split(os.sep)
    if not file_path.startswith(prefix) or '' in parts \
            or os.curdir in parts or os.pardir in parts:
        raise OSError(errno.EINVAL, 'not below the static root', file_path)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            parent, fd = fd, os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(parent)
        file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    try:
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, 'not a regular file', file_path)
        return os.fdopen(file_fd, 'rb'), info
    except BaseException:
        os.close(file_fd)
        raise


class _FileSpan:
    """The part [start, start + length) of an open file, read as the file
    itself would be: a connection streams a range from it, and never more
    than the Content-Length it announced (even if the file grows)."""

    __slots__ = ('_file', '_left')

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        if start:
            handle.seek(start)
        self._file = handle
        self._left = length

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of the span, b'' once it is all read."""
        if self._left <= 0:
            return b''
        chunk = self._file.read(min(size, self._left))
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class StaticBody:
    """What a static answer sends: the bytes of a small file (``data``) or
    a file opened by :func:`open_inside` (``file``); ``size`` is its
    length, the Content-Length of GET and HEAD alike; ``validators``
    (:class:`static_http.Validators` of the file read, or None) make its
    ETag and Last-Modified, and enable 304 and range answers.

    A body holding bytes can be reused for many answers; one holding a file
    is used once: :meth:`respond` hands the file to the connection, which
    streams it in chunks and closes it, or :meth:`close` drops it.
    """

    __slots__ = ('data', 'file', 'size', 'validators')

    def __init__(self, data: bytes | None = None,
                 file: BinaryIO | None = None, size: int | None = None,
                 info: os.stat_result | None = None) -> None:
        self.data = data
        self.file = file
        if size is None:
            if data is None:
                raise TypeError(
                    'StaticBody takes data, or a file and its size')
            size = len(data)
        self.size = size
        self.validators = None if info is None else Validators(info)

    def __repr__(self) -> str:
        kind = 'file' if self.file is not None else 'bytes'
        return f'<StaticBody {kind} {self.size}>'

    def respond(self, client: Connection, headers: MountHeaders,
                head_only: bool = False) -> int:
        """Answer a GET or HEAD on the uhttp-server connection ``client``;
        return the status sent.

        ``headers`` (given away) go out with the file's validators and the
        real length: 200 with the whole file, 304 when the request's
        preconditions say the client has it (no body), 206 with the one
        byte range it asked for, 416 when that range is beyond the file. A
        HEAD sends no body and ignores Range. The streamed file is this
        body's already-opened one, never the path opened again.
        """
        validators = self.validators
        if validators is None:
            return self._send(client, headers, head_only, None)
        headers.update(validators.fields)
        wanted = client.headers
        if ('if-none-match' in wanted or 'if-modified-since' in wanted) \
                and not_modified(wanted, validators):
            self.close()
            headers.pop('content-type', None)
            client.respond_framed(304, headers, b'')
            return 304
        if head_only or 'range' not in wanted:
            return self._send(client, headers, head_only, None)
        span = requested_range(wanted, self.size, validators)
        if span == UNSATISFIABLE:
            self.close()
            headers.pop('content-type', None)
            headers['content-range'] = f'bytes */{self.size}'
            client.respond_framed(416, headers, b'')
            return 416
        return self._send(client, headers, False, span)

    def _send(self, client: Connection, headers: MountHeaders,
              head_only: bool, span: tuple[int, int] | None) -> int:
        """Send all of the file (``span`` None: 200) or the bytes
        [start, stop) of it (206)."""
        if span is None:
            status, start, length = 200, 0, self.size
        else:
            start, stop = span
            status, length = 206, stop - start
            headers['content-range'] = f'bytes {start}-{stop - 1}/{self.size}'
        if self.data is not None:
            # the common case, a cached small file: framing builds the
            # answer (its Content-Length, none of the body on a HEAD)
            client.respond_framed(status, headers, self.data if span is None
                                  else self.data[start:stop])
            return status
        headers['content-length'] = length
        if head_only or client.socket is None:
            self.close()
            # data=None: uhttp-server keeps our Content-Length
            client.respond(data=None, status=status, headers=headers)
            return status
        handle, self.file = self.file, None
        # a body without data holds a file (see __init__)
        assert handle is not None

        try:
            reader = _FileSpan(handle, start, length)
        except OSError:
            handle.close()
            raise
        # what uhttp-server's respond_file() does after its own open():
        # the connection refills its send buffer from this reader and
        # closes it when done or when the connection closes
        client._file_handle = reader  # pylint: disable=protected-access
        client.respond(data=None, status=status, headers=headers)
        return status
    def close(self) -> None:
        """Close the file, if any
 (a body not handed to a connection)."""
        if self.file is not None:
            self.file.close()
            self.file = None
