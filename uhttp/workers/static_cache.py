"""Keeps recent static lookups and the bytes of small static files.

Resolving a request path safely costs a stat per path component, and
opening and reading a small file costs more than sending it. This cache
remembers each URL's resolution for a moment (`ttl`) and the contents of
small files, revalidated by one `os.stat` per request (inode, size and
modification time must still match), so a changed or removed file is never
served stale. Large files are not cached: they are streamed from disk.

It must never cache a refusal as an acceptance (404s are not remembered) or
hold more than `max_total` bytes.
"""

import os
import time

SMALL_FILE = 256 * 1024


class StaticCache:
    """Front of a StaticFiles: `lookup(path)` → (StaticResult, bytes|None)."""

    def __init__(self, static_files, ttl=1.0, max_file=SMALL_FILE,
                 max_total=32 * 1024 * 1024, max_entries=4096):
        self._static = static_files
        self._ttl = ttl
        self._max_file = max_file
        self._max_total = max_total
        self._max_entries = max_entries
        self._resolved = {}     # url path -> (StaticResult, expires)
        self._contents = {}     # file path -> (identity, bytes)
        self._total = 0

    def __bool__(self):
        return bool(self._static)

    def lookup(self, path):
        """None (not a static path), or the result and the file's bytes when
        it is small enough to be cached (None otherwise)."""
        now = time.monotonic()
        cached = self._resolved.get(path)
        if cached is not None and cached[1] > now:
            result = cached[0]
        else:
            result = self._static.lookup(path)
            if result is None:
                return None
            if result.status == 200:
                if len(self._resolved) >= self._max_entries:
                    self._resolved.clear()
                self._resolved[path] = (result, now + self._ttl)
        if result.status != 200 or result.size > self._max_file:
            return result, None
        return self._read(path, result)

    def _read(self, path, result):
        try:
            info = os.stat(result.file_path)
        except OSError:
            self._forget(path, result.file_path)
            return self._static.lookup(path), None
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        entry = self._contents.get(result.file_path)
        if entry is not None and entry[0] == identity:
            return result, entry[1]
        if info.st_size > self._max_file:
            return result, None
        try:
            with open(result.file_path, 'rb') as handle:
                data = handle.read(self._max_file + 1)
        except OSError:
            self._forget(path, result.file_path)
            return self._static.lookup(path), None
        self._store(result.file_path, identity, data)
        return result, data

    def _store(self, file_path, identity, data):
        old = self._contents.pop(file_path, None)
        if old is not None:
            self._total -= len(old[1])
        if self._total + len(data) > self._max_total:
            self._contents.clear()
            self._total = 0
        self._contents[file_path] = (identity, data)
        self._total += len(data)

    def _forget(self, path, file_path):
        self._resolved.pop(path, None)
        old = self._contents.pop(file_path, None)
        if old is not None:
            self._total -= len(old[1])
