"""Locks that elect one process among many: the holder of a lock runs what
must run in one place at a time (the jobs of a `JobRunner`, the duties of a
primary worker).

- `FileLock`: flock(2) on a file; one host. The kernel drops the lock when
  its holder dies, however it dies, so no timeout is needed for failover.
- `RedisLock`: a key set with NX and a time to live, renewed by its holder
  at ttl/3; many hosts. When the holder dies the key expires, so another
  process takes over within the ttl (plus its polling period).

Both also keep "done" markers for run-once-ever jobs. `make_lock()` builds
either from a picklable spec.

A FileLock cannot be lost by a live holder. A RedisLock can (Redis
unreachable, or a pause longer than the ttl): `held` turns False as soon as
the holder cannot prove it still holds the key.

This module owns taking, renewing and releasing a lock. It must never run
jobs or start threads, block in `acquire()` unless asked to, or delete a
Redis lock key that another holder owns.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time
from types import ModuleType
from typing import Any, Protocol, TypedDict

__all__ = ['FileLock', 'WorkerLock', 'RedisLock', 'make_lock']

# a picklable description of a lock: ('file', path) or
# ('redis', url, key[, ttl])
LockSpec = tuple[Any, ...] | list[Any]


class Lock(Protocol):
    """What a JobRunner (or a primary election) needs of a lock: the API
    FileLock and RedisLock share."""

    @property
    def renew_interval(self) -> float | None:
        """Seconds between two renew() calls; None: nothing to renew."""

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""

    def acquire(self) -> bool:
        """Take the lock if it is free; True when held."""

    def renew(self) -> bool:
        """Keep the lock; False when it was lost."""

    def release(self) -> None:
        """Give the lock up."""

    def is_done(self, name: str) -> bool:
        """True when the run-once job `name` has completed, ever."""

    def mark_done(self, name: str) -> None:
        """Record that the run-once job `name` has completed."""


class RedisClient(Protocol):
    """What a RedisLock calls of a redis.Redis client (its replies are
    Redis data: whatever the client decoded)."""

    def set(self, name: str, value: str, *, nx: bool = False,
            px: int | None = None) -> object: ...

    def eval(self, script: str, numkeys: int,
             *keys_and_args: str | int) -> object: ...

    def exists(self, *names: str) -> object: ...


class _RedisLockState(TypedDict):
    url: str
    key: str
    ttl: float

_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def _marker_name(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]', '_', name)


class FileLock:
    """An exclusive flock on `path`, for one host (`acquire()` waits only
    when asked to).

    The holder's pid is written into the file for humans. The lock belongs
    to the open file: a process forked while holding it shares it, so fork
    before acquiring (runner processes are spawned, which is fine).
    Pickles as its path only.
    """

    renew_interval: float | None = None  # nothing to renew: the kernel keeps it

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, str]:
        return {'path': self.path}

    def __setstate__(self, state: dict[str, str]) -> None:
        type(self).__init__(self, state['path'])

    def __repr__(self) -> str:
        return f'<FileLock {self.path}>'

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock if it is free; True when held. Never blocks unless
        `blocking`: then waits as long as another process holds it (the
        GIL is released meanwhile, so call it from a thread of its own)."""
        if self.held:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking
                        else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{self._pid}\n'.encode('ascii'), 0)
        return True

    def renew(self) -> bool:
        """Nothing to renew; returns `held`."""
        return self.held

    def release(self) -> None:
        """Give the lock up (no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._pid == os.getpid():    # not a copy inherited by fork
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def is_done(self, name: str) -> bool:
        """True when `mark_done(name)` was called, by anyone, ever."""
        return os.path.exists(self._marker(name))

    def mark_done(self, name: str) -> None:
        """Record that the run-once job `name` has completed: a file next to
        the lock file, `<path>.<name>.done`."""
        marker = self._marker(name)
        temporary = f'{marker}.{os.getpid()}.tmp'
        with open(temporary, 'w', encoding='ascii') as handle:
            handle.write(f'{time.time():.3f} {os.getpid()}\n')
        os.replace(temporary, marker)

    def _marker(self, name: str) -> str:
        return f'{self.path}.{_marker_name(name)}.done'


# The name this lock often has in applications that elect a primary worker
# (`WorkerLock(path).acquire()` / `.release()`): the same class.
WorkerLock = FileLock


def _import_redis() -> ModuleType:
    try:
        import redis  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(
            'RedisLock needs the redis package: pip install redis '
            '(or uhttp-workers[redis])') from err
    return redis


class RedisLock:
    """A lock on Redis key `key`, for many hosts: SET NX PX with a random
    token, renewed (and released) only while the key still holds it.

    `url_or_client` is a redis:// URL (the client is made on first use, so
    the lock pickles as its URL) or a redis.Redis client. `held` is True
    only within `ttl` of the last acquire or renew that succeeded.
    """

    url: str | None
    _client: RedisClient | None

    def __init__(self, url_or_client: str | RedisClient, key: str,
                 ttl: float = 10.0) -> None:
        if ttl <= 0:
            raise ValueError('ttl must be > 0')
        if isinstance(url_or_client, str):
            self.url, self._client = url_or_client, None
        else:
            self.url, self._client = None, url_or_client
        self.key = key
        self.ttl = ttl
        self.renew_interval = ttl / 3
        self._token: str | None = None
        self._valid_until = 0.0

    def __getstate__(self) -> _RedisLockState:
        if self.url is None:
            raise TypeError('a RedisLock made with a client object does not '
                            'pickle; give it a redis:// URL')
        return {'url': self.url, 'key': self.key, 'ttl': self.ttl}

    def __setstate__(self, state: _RedisLockState) -> None:
        type(self).__init__(self, state['url'], state['key'], state['ttl'])

    def __repr__(self) -> str:
        return f'<RedisLock {self.key!r} ttl={self.ttl:g}>'

    def _redis(self) -> RedisClient:
        if self._client is None:
            redis = _import_redis()
            timeout = max(0.5, self.renew_interval)
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=timeout,
                socket_connect_timeout=timeout)
        return self._client

    @property
    def _ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @property
    def held(self) -> bool:
        """True while the key is ours, as far as we can prove it."""
        return self._token is not None and time.monotonic() < self._valid_until

    def acquire(self) -> bool:
        """Take the lock if the key is free (or still ours); True when held.
        Redis errors propagate."""
        if self._token is not None and self.renew():
            return True
        token = secrets.token_hex(16)
        asked = time.monotonic()
        if self._redis().set(self.key, token, nx=True, px=self._ms):
            self._token, self._valid_until = token, asked + self.ttl
            return True
        return False

    def renew(self) -> bool:
        """Extend the ttl if the key still holds our token; False when the
        lock was lost (then `held` is False)."""
        token = self._token
        if token is None:
            return False
        asked = time.monotonic()
        if self._redis().eval(_RENEW_SCRIPT, 1, self.key, token, self._ms):
            # measured from before the request: never believe too long
            self._valid_until = asked + self.ttl
            return True
        self._token = None
        return False

    def release(self) -> None:
        """Delete the key if it still holds our token."""
        token, self._token = self._token, None
        if token is not None:
            self._redis().eval(_RELEASE_SCRIPT, 1, self.key, token)

    def is_done(self, name: str) -> bool:
        """True when `mark_done(name)` was called, by anyone, ever."""
        return bool(self._redis().exists(self._marker(name)))

    def mark_done(self, name: str) -> None:
        """Record that the run-once job `name` has completed: the key
        `<key>:done:<name>`, without expiry."""
        self._redis().set(self._marker(name), f'{time.time():.3f}')

    def _marker(self, name: str) -> str:
        return f'{self.key}:done:{name}'


def make_lock(spec: LockSpec | Lock) -> Lock:
    """A lock from a picklable spec: ('file', path) or
    ('redis', url, key[, ttl]); a lock object is returned as is."""
    if not isinstance(spec, (tuple, list)):
        return spec
    kind, *args = spec
    if kind == 'file' and len(args) == 1:
        return FileLock(args[0])
    if kind == 'redis' and len(args) in (2, 3):
        return RedisLock(*args)
    raise ValueError(f"bad lock spec {spec!r}: use ('file', path) or "
                     "('redis', url, key[, ttl])")
