"""The two threads that carry a RemotePool's traffic to and from Redis.

A `RemoteBridge` belongs to one RemotePool in one dispatcher process. Its
sender thread adds the requests the pool queued to the pool's request
stream, pipelined in batches; its reader thread reads this dispatcher's
reply stream with a blocking XREAD, and every HEARTBEAT_INTERVAL reads the
heartbeat keys of the remote workers. Both hand what happened to the
dispatcher's loop through `post`, as events (plain tuples):

- ``(REPLIES, [(consumer, message, seq), ...])``: decoded reply entries
  (seq: the reply's number among its request's replies, or None);
- ``(BAD_REPLY, reason)``: a reply entry that could not be decoded;
- ``(HEARTBEATS, {consumer: heartbeat})``: the live remote workers, read
  just now (a successful read also says Redis answers);
- ``(DOWN, reason)``: Redis could not be reached (or refused a command);
  the requests sent in the batch that failed are not named: the pool fails
  every request it has in flight;
- ``(FAILED, thread, traceback)``: a thread ended on an unexpected error.

This module owns the Redis connections and the threads. It must never
touch a Pending, a client or the selector (the loop does), and never run
the loop's code: `post` only queues and wakes.
"""

from __future__ import annotations

import collections
import importlib
import threading
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from . import remote_protocol as proto

# event kinds (see the module docstring)
REPLIES: Final = 'replies'
BAD_REPLY: Final = 'bad_reply'
HEARTBEATS: Final = 'heartbeats'
DOWN: Final = 'down'
FAILED: Final = 'failed'

Event = tuple[Any, ...]

# seconds between two connection attempts while Redis is unreachable
RETRY_INTERVAL: Final = 1.0
# replies read per XREAD
READ_COUNT: Final = 1000
# the request stream is trimmed (approximately) to this many entries
REQUEST_STREAM_MAXLEN: Final = 100_000
# a reply stream whose dispatcher vanished without DEL expires after this
REPLY_STREAM_TTL_MS: Final = 60_000


def import_redis() -> ModuleType:
    """The redis package, or a clear error naming how to install it."""
    try:
        return importlib.import_module('redis')
    except ImportError as err:
        raise RuntimeError(
            'RemotePool needs the redis package: pip install redis '
            '(or uhttp-workers[redis])') from err


class RemoteBridge:
    """The sender and reader threads of one remote pool."""

    def __init__(self, pool: str, redis_url: str, dispatcher_id: str,
                 post: Callable[[Event], None], batch_size: int = 256,
                 connect_timeout: float = 2.0) -> None:
        self.pool = pool
        self.redis_url = redis_url
        self.dispatcher_id = dispatcher_id
        self.batch_size = batch_size
        self.connect_timeout = connect_timeout
        self._post = post
        self._requests = proto.requests_stream(pool)
        self._replies = proto.replies_stream(pool, dispatcher_id)
        # (request_id, fields) waiting for the sender thread
        self._outbox: collections.deque[
            tuple[int, dict[bytes, bytes]]] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- the loop's side ------------------------------------------------------

    def start(self) -> None:
        """Start both threads (the redis package is imported here)."""
        redis = import_redis()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._send_loop, redis),
                             name=f'remote-send-{self.pool}', daemon=True),
            threading.Thread(target=self._guard, args=(self._read_loop, redis),
                             name=f'remote-read-{self.pool}', daemon=True)]
        for thread in self._threads:
            thread.start()

    def send(self, request_id: int, fields: dict[bytes, bytes]) -> None:
        """Queue one encoded request entry for the sender thread."""
        with self._condition:
            self._outbox.append((request_id, fields))
            self._condition.notify()

    @property
    def queued(self) -> int:
        """Requests not handed to Redis yet."""
        return len(self._outbox)

    def stop(self) -> None:
        """Ask both threads to end (the reader deletes the reply stream
        first); never waits for them."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()

    @property
    def alive(self) -> bool:
        """True while either thread runs."""
        return any(thread.is_alive() for thread in self._threads)

    # -- the threads ----------------------------------------------------------

    def _client(self, redis: ModuleType, read_timeout: float) -> Any:
        return redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=self.connect_timeout,
            socket_timeout=read_timeout)

    def _guard(self, body: Callable[[ModuleType], None],
               redis: ModuleType) -> None:
        # an unexpected error must reach the log, not vanish with the thread
        try:
            body(redis)
        except Exception:  # pylint: disable=broad-except
            self._post((FAILED, threading.current_thread().name,
                        traceback.format_exc()))

    def _wait(self, seconds: float) -> None:
        with self._condition:
            if not self._stopping:
                self._condition.wait(seconds)

    def _send_loop(self, redis: ModuleType) -> None:
        client = self._client(redis, 10.0)
        try:
            while True:
                with self._condition:
                    while not self._outbox and not self._stopping:
                        self._condition.wait()
                    if self._stopping:
                        # (the dispatcher answered whatever is left)
                        return
                    count = min(len(self._outbox), self.batch_size)
                    batch = [self._outbox.popleft() for _ in range(count)]
                try:
                    pipe = client.pipeline(transaction=False)
                    for _, fields in batch:
                        pipe.xadd(self._requests, fields,
                                  maxlen=REQUEST_STREAM_MAXLEN,
                                  approximate=True)
                    pipe.execute()
                except redis.RedisError as err:
                    self._post((DOWN, f'adding {len(batch)} requests: '
                                f'{err}'))
        finally:
            client.close()

    def _read_loop(self, redis: ModuleType) -> None:
        # longer than the XREAD block, or a quiet stream reads as a failure
        client = self._client(redis, proto.HEARTBEAT_INTERVAL + 10.0)
        last_id = b'0-0'
        connected = made_once = False
        next_poll = 0.0
        try:
            while not self._stopping:
                try:
                    if not connected:
                        self._create_group(client, redis,
                                           first=not made_once)
                        connected = made_once = True
                        next_poll = 0.0
                    now = time.monotonic()
                    if now >= next_poll:
                        self._poll(client, last_id)
                        next_poll = now + proto.HEARTBEAT_INTERVAL
                    block = max(1, int((next_poll - time.monotonic()) * 1000))
                    found = client.xread({self._replies: last_id},
                                         count=READ_COUNT, block=block)
                    if found:
                        last_id = self._deliver(found[0][1])
                except redis.RedisError as err:
                    # every failure is said: the pool logs the first one
                    connected = False
                    self._post((DOWN, str(err)))
                    self._wait(RETRY_INTERVAL)
            self._delete_replies(client, redis)
        finally:
            client.close()

    def _create_group(self, client: Any, redis: ModuleType,
                      first: bool) -> None:
        """The consumer group of the request stream, made again at each
        connection (a restarted Redis may have lost it). The first time it
        starts at the stream's end (entries of an earlier life are not
        ours to run); made again, from the start: entries added meanwhile
        were never delivered, so delivering them runs nothing twice."""
        try:
            client.xgroup_create(self._requests, proto.GROUP,
                                 id='$' if first else '0', mkstream=True)
        except redis.ResponseError as err:
            if 'BUSYGROUP' not in str(err):
                raise

    def _poll(self, client: Any, last_id: bytes) -> None:
        """Read the heartbeats; keep the reply stream short and bounded in
        time (it expires if this dispatcher vanishes without deleting it)."""
        names = sorted(name.decode() for name in
                       client.smembers(proto.consumers_set(self.pool)))
        values = client.mget([proto.alive_key(self.pool, name)
                              for name in names]) if names else []
        live: dict[str, dict[str, Any]] = {}
        for name, value in zip(names, values):
            if value is None:
                continue    # expired: that consumer is gone
            try:
                live[name] = proto.decode_heartbeat(value)
            except proto.ProtocolError as err:
                live[name] = {'workers': 0, 'error': str(err)}
        pipe = client.pipeline(transaction=False)
        pipe.pexpire(self._replies, REPLY_STREAM_TTL_MS)
        if last_id != b'0-0':
            pipe.xtrim(self._replies, minid=last_id, approximate=True)
        pipe.execute()
        self._post((HEARTBEATS, live))

    def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]
                 ) -> bytes:
        """Decode reply entries (here, not in the loop) and post them;
        returns the id of the last one."""
        replies: list[tuple[str, tuple[Any, ...], int | None]] = []
        for _entry_id, fields in entries:
            try:
                replies.append(proto.decode_reply_seq(fields))
            except proto.ProtocolError as err:
                self._post((BAD_REPLY, str(err)))
        if replies:
            self._post((REPLIES, replies))
        last: bytes = entries[-1][0]
        return last

    def _delete_replies(self, client: Any, redis: ModuleType) -> None:
        try:
            client.delete(self._replies)
        except redis.RedisError:
            # unreachable at stop: the stream expires on its own (see _poll)
            pass
