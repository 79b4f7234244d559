"""Keeps recent static lookups and the bytes of small static files.

Resolving a request path safely costs a stat per path component, and
opening and reading a small file costs more than sending it. This cache
remembers each URL's resolution for a moment (`ttl`) and the contents of
small files, revalidated by one `os.lstat` per request: the path must still
name, without a symlink at its end, the very file whose bytes were read
(device, inode, size, modification and change times), so a changed,
removed or swapped file is never served stale. Every file is read or
streamed from a descriptor opened by `static.open_inside`, which follows no
symlink: a file swapped for a symlink since its path was resolved is
resolved afresh (a link leading out of the root then answers 404). Large
files are not cached: they are streamed from that descriptor. A body's
validators (ETag, Last-Modified) are those of the file its bytes came from
(the `fstat` of that descriptor), computed once per cached file.

It must never cache a refusal as an acceptance (404s are not remembered),
serve bytes it did not read through `open_inside`, or hold more than
`max_total` bytes.
"""

from __future__ import annotations

import os
import stat
import time

from .static import StaticBody, StaticFiles, StaticResult, open_inside

SMALL_FILE = 256 * 1024

# what lookup() answers for a static path: the result and, for a 200,
# its body
Found = tuple[StaticResult, StaticBody | None]
# _identity() of a file
_Identity = tuple[int, int, int, int, int]


def _identity(info: os.stat_result) -> _Identity:
    """What must not change for cached bytes to stay valid."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)


class StaticCache:
    """Front of a StaticFiles: `lookup(path)` → (StaticResult, StaticBody|None)."""

    def __init__(self, static_files: StaticFiles, ttl: float = 1.0,
                 max_file: int = SMALL_FILE, max_total: int = 32 * 1024 * 1024,
                 max_entries: int = 4096) -> None:
        self._static = static_files
        self._ttl = ttl
        self._max_file = max_file
        self._max_total = max_total
        self._max_entries = max_entries
        self._stems = static_files.stems
        # url path -> (StaticResult, expires)
        self._resolved: dict[str, tuple[StaticResult, float]] = {}
        # file path -> (identity, StaticBody)
        self._contents: dict[str, tuple[_Identity, StaticBody]] = {}
        self._total = 0

    def __bool__(self) -> bool:
        return bool(self._static)

    def serves(self, path: str) -> bool:
        """True when a static mount answers `path` (nothing is opened)."""
        result = self._resolve(path)
        return result is not None and (
            result.status != 404 or result.authoritative)

    def lookup(self, path: str) -> Found | None:
        """None (not a static path, or one a mount that is not authoritative
        does not have: it goes on to the pools), or the result and, for a
        200, its body.

        The body holds the bytes of a small file (cached) or a file opened
        for this answer, which the caller must send or close. The result's
        size is the body's.
        """
        result = self._resolve(path)
        if result is None:
            return None
        if result.status != 200:
            return self._miss(result)
        body = self._body(result)
        if body is None:
            # changed since it was resolved (removed, swapped for a link):
            # resolve it afresh, once
            self._forget(path, result.file_path)
            missing = StaticResult(404, authoritative=result.authoritative)
            result = self._resolve(path)
            if result is None or result.status != 200:
                return self._miss(result or missing)
            body = self._body(result)
            if body is None:
                self._forget(path, result.file_path)
                return self._miss(missing)
        if body.size != result.size:
            result = result._replace(size=body.size)
        return result, body

    @staticmethod
    def _miss(result: StaticResult) -> Found | None:
        """A result that is not a 200, as lookup() returns it."""
        if result.status == 404 and not result.authoritative:
            return None
        return result, None

    def _resolve(self, path: str) -> StaticResult | None:
        if not path.startswith(self._stems):
            return None  # the common case of a dispatcher: not static
        now = time.monotonic()
        cached = self._resolved.get(path)
        if cached is not None and cached[1] > now:
            return cached[0]
        result = self._static.lookup(path)
        if result is not None and result.status == 200:
            if len(self._resolved) >= self._max_entries:
                self._resolved.clear()
            self._resolved[path] = (result, now + self._ttl)
        return result

    def _body(self, result: StaticResult) -> StaticBody | None:
        """The file's body, or None if it cannot be opened inside the root."""
        file_path, root = result.file_path, result.root
        # (a 200, which names both)
        assert file_path is not None and root is not None
        entry = self._contents.get(file_path)
        if entry is not None:
            try:
                current: os.stat_result | None = os.lstat(file_path)
            except OSError:
                current = None
            if current is not None and stat.S_ISREG(current.st_mode) \
                    and _identity(current) == entry[0]:
                return entry[1]
        try:
            handle, info = open_inside(root, file_path)
        except OSError:
            return None
        if info.st_size > self._max_file:
            return StaticBody(file=handle, size=info.st_size, info=info)
        with handle:
            try:
                data = handle.read(self._max_file + 1)
            except OSError:
                return None
        if len(data) != info.st_size:
            # written to while we read: these bytes are no version the
            # validators (ETag, Last-Modified) would name
            return StaticBody(data)
        body = StaticBody(data, info=info)
        self._store(file_path, _identity(info), body)
        return body

    def _store(self, file_path: str, identity: _Identity,
               body: StaticBody) -> None:
        old = self._contents.pop(file_path, None)
        if old is not None:
            self._total -= old[1].size
        if self._total + body.size > self._max_total:
            self._contents.clear()
            self._total = 0
        self._contents[file_path] = (identity, body)
        self._total += body.size

    def _forget(self, path: str, file_path: str | None) -> None:
        self._resolved.pop(path, None)
        # (a 200's file_path, never None)
        old = self._contents.pop(file_path, None) \
            if file_path is not None else None

        if old is not None:
            self._total -= old[1].size
