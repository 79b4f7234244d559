"""Safe static file resolution for uhttp.workers.

This module owns mapping URL prefixes to directories and turning a request
path into a decision: serve this file (with type and size), redirect a
directory URL to its trailing-slash form, or 404.

It must never read file contents, decode the path again (the HTTP server
already percent-decoded it once; ``%2e`` arriving here is a literal name),
list directories, or resolve anything outside a configured root. The final
containment check is ``os.path.realpath`` + ``os.path.commonpath``, so a
symlink leading out of the root is refused while one inside it works.
Hidden files (``.name``) are served like any other file; do not put secrets
in a static root.
"""

import collections
import mimetypes
import os
import posixpath
import stat

__all__ = ['StaticFiles', 'StaticResult']

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


def _content_type(name):
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


class StaticResult(collections.namedtuple(
        'StaticResult', 'status file_path content_type size location',
        defaults=(None, None, None, None))):
    """Outcome of :meth:`StaticFiles.lookup` for a path under a prefix:
    status, file_path, content_type, size, location (immutable)."""

    __slots__ = ()


_NOT_FOUND = StaticResult(404)


def _is_inside(root, path):
    """True when real path ``path`` is ``root`` or below it."""
    return os.path.commonpath((root, path)) == root


def _safe_segments(rest):
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
    directories; relative directories are resolved against the current
    working directory at construction. The longest matching prefix wins,
    and the prefix without its trailing slash (``/static``) counts as the
    prefix itself (a directory URL, so it is redirected to ``/static/``).
    """

    def __init__(self, static_routes):
        routes = {}
        for prefix, root in (static_routes or {}).items():
            prefix = self._normalise_prefix(prefix)
            if prefix in routes:
                raise ValueError(f'duplicate static prefix {prefix!r}')
            routes[prefix] = self._resolve_root(root)
        self._routes = sorted(
            routes.items(), key=lambda item: len(item[0]), reverse=True)

    @staticmethod
    def _normalise_prefix(prefix):
        if not isinstance(prefix, str) or not prefix.startswith('/'):
            raise ValueError(f"static prefix must start with '/': {prefix!r}")
        return prefix if prefix.endswith('/') else prefix + '/'

    @staticmethod
    def _resolve_root(root):
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise ValueError(
                f'static root {root!r} is not a directory (resolved: {real})')
        return real

    def __bool__(self):
        return bool(self._routes)

    def __repr__(self):
        return f'StaticFiles({dict(self._routes)!r})'

    def lookup(self, path):
        """Resolve an already percent-decoded request path.

        Returns None when no static prefix matches (routing continues
        elsewhere), otherwise a :class:`StaticResult`: 200 with the file,
        301 with ``location`` for a directory URL lacking its trailing
        slash, or 404 for anything missing, unreadable, not a regular file,
        malformed or outside the root.
        """
        for prefix, root in self._routes:
            if path.startswith(prefix):
                return self._resolve(root, path, path[len(prefix):])
            if len(prefix) > 1 and path == prefix[:-1]:
                return self._resolve(root, path, '')
        return None

    def _resolve(self, root, path, rest):
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
        return self._file(real, info, name)

    def _index(self, root, directory):
        real = os.path.realpath(os.path.join(directory, _INDEX))
        info = self._stat_inside(root, real)
        if info is None:
            return _NOT_FOUND
        return self._file(real, info, _INDEX)

    @staticmethod
    def _stat_inside(root, real):
        """os.stat of ``real`` if it lies inside ``root``, else None."""
        if not _is_inside(root, real):
            return None
        try:
            return os.stat(real)
        except OSError:
            return None

    @staticmethod
    def _file(real, info, name):
        """200 for a readable regular file; the URL name picks the type."""
        if not stat.S_ISREG(info.st_mode) or not os.access(real, os.R_OK):
            return _NOT_FOUND
        return StaticResult(
            200, file_path=real, content_type=_content_type(name),
            size=info.st_size)
