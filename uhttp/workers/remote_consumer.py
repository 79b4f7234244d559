"""The Redis side of `uhttp-workers worker`: one consumer of a remote pool.

A remote worker host reads the requests of its pool as ONE consumer of the
pool's consumer group (see remote_protocol.py for the keys and the
encoding). This module owns every Redis command that host sends:

- `RedisLink`: the connection of the main loop. Its calls are short (no
  BLOCK) and none is on a request's path: join the pool (group, consumer
  set), acknowledge an entry to drop, refresh the heartbeat, read the
  server's clock, release entries at a stop, and at exit start requests
  and add replies (once the call threads ended) and leave the pool. A
  call that fails raises `RedisDown`, whether
  Redis is unreachable or answered with an error (out of memory, read
  only, no permission, the group gone): the link then waits a back-off
  (doubling, capped at RETRY_MAX seconds) before the caller may try again,
  and joins the pool again (re-creating a lost group) when it does.
- `CallThread`: a thread with a connection of its own that makes one
  call at a time for the main loop and wakes it through a pipe when the
  call ended. A host runs two: one starts requests (`start_entries`:
  acknowledge and add STARTED, atomically), one adds replies
  (`add_replies`). So the main loop never waits for a round trip on a
  request's path, and what it queues while a call is under way goes in
  the next one: under load, round trips carry batches. A call thread
  never retries: a failure goes back to the main loop, which takes the
  `RedisLink` down (one log line, one back-off for all the calls).
- `StreamReader`: a thread with a connection of its own that takes
  entries: XREADGROUP BLOCK (the one blocking call) and, every CLAIM_EVERY
  seconds, XAUTOCLAIM of entries delivered to some consumer and left
  unacknowledged for CLAIM_IDLE_MS (so never started: a dead consumer's,
  or one a stopping consumer released). The claim passes also forget dead
  consumers (no alive key): out of the set, and out of the group when
  nothing is pending for them.
  It takes at most as many as the main loop says it has idle workers
  (`want()`), and hands them over through an inbox and a wake-up pipe
  the main loop watches in its selector. So a blocked read never delays
  the relaying of answers, and no entry is taken from the stream while no
  local worker is free to start it.

Must never: decide what runs where (the agent in remote_worker.py does),
compare this host's clock with another's (entry ages come from the Redis
server's TIME), or run a request whose acknowledgement was not its own.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from . import remote_protocol as rp
from .messages import Message
from .wake_pipe import WakePipe

# redis-py is an optional dependency, imported when a link is made: its
# clients are typed Any here (as in locks.py)
RedisClient = Any
# one stream entry: (entry id, fields)
Entry = tuple[bytes, dict[bytes, bytes]]

RETRY_FIRST: Final = 0.5    # seconds before the first reconnection attempt
RETRY_MAX: Final = 5.0      # cap of the doubling reconnection back-off
READ_BLOCK_MS: Final = 1000  # longest XREADGROUP BLOCK (the reader checks
                             # its stop flag and the claim timer between)
CLAIM_EVERY: Final = 0.5    # seconds between two XAUTOCLAIM passes at least
                            # (short: entries a stopping host released wait
                            # for the next pass of another host)
FORGET_EVERY: Final = 5.0   # seconds between two passes forgetting dead
                            # consumers at least
SOCKET_TIMEOUT: Final = 5.0  # a Redis that stops answering: give up a call
CONNECT_TIMEOUT: Final = 2.0
TIME_REFRESH: Final = 1.0   # seconds between two TIME calls at most

# Acknowledge and announce in one step, and only if the acknowledgement
# was ours: XACK answers 1 for the one consumer whose XACK removed the
# entry from the pending list (a claim moves an entry between consumers
# but leaves it pending), so exactly one consumer adds STARTED and runs
# the request. A MULTI/EXEC would add STARTED for the loser too.
# The winner is remembered (KEYS[3], for STARTED_TTL_MS): a start whose
# answer was lost is run again by its consumer, which learns it won
# (1) without a second STARTED; any other consumer still gets 0.
_START_SCRIPT: Final = """
if redis.call('GET', KEYS[3]) == ARGV[4] then
    return 1
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 6))
    return 1
end
return 0
"""


# Forget a consumer in the group, only when nothing is pending for it.
_LEAVE_GROUP_SCRIPT: Final = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


class RedisDown(Exception):
    """Redis cannot be reached, stopped answering, or refuses the
    commands (an error reply) just now."""


class RedisMissing(ImportError):
    """The redis package is not installed."""


def import_redis() -> Any:
    """The redis module; raises RedisMissing with how to install it."""
    try:
        return importlib.import_module('redis')
    except ImportError as err:
        raise RedisMissing(
            'remote workers need the redis package: pip install redis '
            '(or uhttp-workers[redis])') from err


def make_client(url: str) -> RedisClient:
    """A redis.Redis client for `url` that fails fast: no retries of its
    own (the callers here have their back-off) and bounded socket waits."""
    redis = import_redis()
    retry = importlib.import_module('redis.retry').Retry(
        importlib.import_module('redis.backoff').NoBackoff(), 0)
    return redis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT, retry=retry)


def _connection_errors() -> tuple[type[BaseException], ...]:
    redis = import_redis()
    return (redis.ConnectionError, redis.TimeoutError, OSError)


def ensure_group(client: RedisClient, pool: str, first: bool) -> None:
    """Create the consumer group of `pool` (and its stream) unless it
    exists. `first` (this process joins the pool): for new entries only
    (`$`). Later (Redis lost the group while we ran, e.g. restarted
    without its data): from the start of the stream (`0`), because every
    entry there came after the loss and none was started; one too old for
    its timeout is dropped unrun as always."""
    redis = import_redis()
    try:
        client.xgroup_create(rp.requests_stream(pool), rp.GROUP,
                             id='$' if first else '0', mkstream=True)
    except redis.ResponseError as err:
        if 'BUSYGROUP' not in str(err):
            raise


def forget_dead_consumers(client: RedisClient, pool: str, me: str,
                          log: Callable[[int, str], None]) -> list[str]:
    """Forget the consumers of `pool` whose alive key is gone: out of the
    consumer set, and out of the group when nothing is pending for them
    (their pending entries stay, to be claimed). Never `me`. Returns the
    names taken out of the set or the group. An error reply (say, no
    permission for XINFO) is logged and skips the pass: tidying must never
    keep a consumer from joining or reading."""
    redis = import_redis()
    try:
        return _forget_dead_consumers(client, pool, me, log)
    except redis.ResponseError as err:
        log(30, f'forgetting dead consumers of pool {pool} failed: {err}')
        return []


def _forget_dead_consumers(client: RedisClient, pool: str, me: str,
                           log: Callable[[int, str], None]) -> list[str]:
    redis = import_redis()
    stream = rp.requests_stream(pool)
    names = {_text(name) for name in
             client.smembers(rp.consumers_set(pool)) or ()}
    try:
        in_group = {_text(c['name']): int(c['pending'])
                    for c in client.xinfo_consumers(stream, rp.GROUP)}
    except redis.ResponseError:
        in_group = {}   # no group (yet): only the set to tidy
    candidates = sorted((names | set(in_group)) - {me})
    if not candidates:
        return []
    pipe = client.pipeline(transaction=False)
    for name in candidates:
        pipe.exists(rp.alive_key(pool, name))
    dead = [name for name, there in zip(candidates, pipe.execute())
            if not there]
    forgotten = []
    for name in dead:
        removed = client.srem(rp.consumers_set(pool), name)
        left = False
        if in_group.get(name) == 0:
            # the script checks again: an entry delivered meanwhile stays
            left = client.eval(_LEAVE_GROUP_SCRIPT, 1, stream, rp.GROUP,
                               name) == 1
        if removed or left:
            forgotten.append(name)
    if forgotten:
        log(20, f'forgot dead consumers of pool {pool}: '
            f'{", ".join(forgotten)}')
    return forgotten


def _text(value: bytes | str) -> str:
    return value.decode(errors='replace') if isinstance(value, bytes) \
        else value


def _entries(raw: Sequence[Any]) -> list[Entry]:
    """(id, fields) pairs of a reply listing entries (an entry deleted
    from the stream while pending comes without fields: skipped)."""
    entries: list[Entry] = []
    for item in raw or ():
        entry_id, fields = item[0], item[1]
        if fields is None:
            continue
        if isinstance(entry_id, str):
            entry_id = entry_id.encode()
        entries.append((entry_id, dict(fields)))
    return entries


def start_entries(client: RedisClient, pool: str, consumer: str,
                  starts: Sequence[tuple[bytes, str, int]]
                  ) -> tuple[list[bool | None], BaseException | None]:
    """Run the start script for each (entry id, dispatcher id, request id)
    in one round trip (see RedisLink.start): (won, error), won holding
    True, False or None (its script failed) for each entry, and error the
    first error reply or None. Raises when no answer came."""
    # EVAL, not EVALSHA: a pipeline of EVALSHA would first ask whether the
    # script is loaded, a second round trip each time
    pipe = client.pipeline(transaction=False)
    for entry_id, dispatcher_id, request_id in starts:
        fields = rp.encode_reply(consumer, rp.started(request_id, consumer),
                                 0)
        args: list[bytes | str | int] = [
            rp.GROUP, entry_id, rp.REPLY_STREAM_MAXLEN, consumer,
            rp.STARTED_TTL_MS]
        for name, value in fields.items():
            args += [name, value]
        pipe.eval(_START_SCRIPT, 3, rp.requests_stream(pool),
                  rp.replies_stream(pool, dispatcher_id),
                  rp.started_key(pool, entry_id), *args)
    won: list[bool | None] = []
    error: BaseException | None = None
    for result in pipe.execute(raise_on_error=False):
        if isinstance(result, BaseException):
            error = error or result
            won.append(None)
        else:
            won.append(bool(result))
    return won, error


def add_replies(client: RedisClient, pool: str,
                replies: Sequence[tuple[str, dict[bytes, bytes]]]) -> None:
    """Add encoded replies, each to its dispatcher's reply stream, in one
    MULTI/EXEC (all of them or none). Raises when it failed."""
    pipe = client.pipeline(transaction=True)
    for dispatcher_id, fields in replies:
        pipe.xadd(rp.replies_stream(pool, dispatcher_id), fields,
                  maxlen=rp.REPLY_STREAM_MAXLEN, approximate=True)
    pipe.execute()


class RedisLink:
    """The main loop's connection: short calls only, each of which raises
    RedisDown when Redis is unreachable (see `available`)."""

    def __init__(self, url: str, pool: str, consumer: str,
                 log: Callable[[int, str], None]) -> None:
        self.url = url
        self.pool = pool
        self.consumer = consumer
        self._log = log
        self._client = make_client(url)
        self._errors = _connection_errors()
        self._response_error: type[BaseException] = \
            import_redis().ResponseError
        # any other error of redis-py (an error reply, a reply it could
        # not parse, ...) is an outage too, never the end of the host
        self._redis_error: type[BaseException] = import_redis().RedisError
        self._leave_group = self._client.register_script(_LEAVE_GROUP_SCRIPT)
        self.up = False
        self._joined = False    # the group was made or found once
        self._retry_at = 0.0
        self._delay = RETRY_FIRST
        # server clock - monotonic clock, in ms (see server_time_ms)
        self._time_offset: float | None = None
        self._time_read_at = 0.0

    # -- the state of the connection -----------------------------------------

    @property
    def retry_at(self) -> float:
        """When a link that is down may be tried again (monotonic)."""
        return self._retry_at

    def connect(self) -> None:
        """(Re)join the pool: ping, create the group if missing, add this
        consumer to the set. Raises RedisDown."""
        with self._calls():
            self._client.ping()
            ensure_group(self._client, self.pool, first=not self._joined)
            self._joined = True
            self._client.sadd(rp.consumers_set(self.pool), self.consumer)
            forget_dead_consumers(self._client, self.pool, self.consumer,
                                  self._log)
        if not self.up:
            self.up = True
            self._delay = RETRY_FIRST
            self._time_offset = None    # maybe another server now

    def reconnect_due(self, now: float) -> bool:
        """True when the link is down and its back-off has passed."""
        return not self.up and now >= self._retry_at

    def _failed(self, err: BaseException) -> RedisDown:
        if self.up:
            if isinstance(err, self._errors):
                self._log(40, f'lost Redis at {_safe_url(self.url)}: '
                          f'{err}; workers keep running, retrying')
            else:   # an error reply, or one redis-py could not read
                self._log(40, f'Redis at {_safe_url(self.url)} refused a '
                          f'command: {err}; workers keep running, retrying')
        self.up = False
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX)
        return RedisDown(str(err))

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Turns a connection error or an error reply inside the block
        into RedisDown (and the link's down state: the next connect joins
        again, re-creating a group Redis lost)."""
        try:
            yield
        except (*self._errors, self._redis_error) as err:
            raise self._failed(err) from err

    # -- the commands -------------------------------------------------------

    def server_time_ms(self) -> int:
        """The Redis server's clock now, in milliseconds: read with TIME at
        most every TIME_REFRESH seconds and carried forward in between by
        this host's monotonic clock (off by a round trip at most; no other
        host's clock is involved)."""
        now = time.monotonic()
        if self._time_offset is None or now >= self._time_read_at \
                + TIME_REFRESH:
            with self._calls():
                seconds, micros = self._client.time()
            after = time.monotonic()
            server_ms = int(seconds) * 1000 + int(micros) // 1000
            self._time_offset = server_ms - (now + after) * 500
            self._time_read_at = after
            now = after
        return int(now * 1000 + self._time_offset)

    def start(self, starts: Sequence[tuple[bytes, str, int]]
              ) -> list[bool | None]:
        """For each (entry id, dispatcher id, request id): acknowledge the
        entry and add STARTED to its dispatcher's reply stream, atomically
        (one script per entry, all in one round trip). True for each entry
        this consumer is the one to run, False for one it lost, None for
        one whose script failed (an error reply: the link is down then).
        Raises RedisDown when no answer came: whether the scripts ran is
        unknown. Starting the same entries again is safe: an entry this
        consumer won answers True again, with no second STARTED."""
        if not starts:
            return []
        with self._calls():
            won, error = start_entries(self._client, self.pool, self.consumer,
                                       starts)
        if error is not None:
            self._failed(error)
        return won

    def ack(self, *entry_ids: bytes) -> None:
        """Acknowledge entries that are not run (too old, malformed)."""
        with self._calls():
            self._client.xack(rp.requests_stream(self.pool), rp.GROUP,
                              *entry_ids)

    def send(self, replies: Sequence[tuple[str, dict[bytes, bytes]]]) -> None:
        """Add encoded replies, each to its dispatcher's reply stream, in
        one MULTI/EXEC (all of them or none)."""
        with self._calls():
            add_replies(self._client, self.pool, replies)

    def down(self, err: BaseException) -> None:
        """A call made on another connection (a `CallThread`'s) failed with
        `err`: the link goes down as if its own call had (logged once, the
        back-off, a new join when it is retried). Raises `err` again when
        it is neither a connection error nor an error reply (a bug)."""
        if not isinstance(err, (*self._errors, self._redis_error)):
            raise err
        self._failed(err)

    def heartbeat(self, host: str, pid: int, workers: int, busy: int,
                  handled: int) -> None:
        """Refresh this consumer's alive key, and its name in the set of
        consumers: a Redis restarted without its data (which redis-py may
        reconnect to without an error here) has lost both."""
        with self._calls():
            # in the set again too: a claim pass of another host may have
            # forgotten this consumer while its key had expired (a stopped
            # process, a long outage)
            pipe = self._client.pipeline(transaction=True)
            pipe.set(rp.alive_key(self.pool, self.consumer),
                     rp.encode_heartbeat(host, pid, workers, busy, handled),
                     px=rp.ALIVE_TTL_MS)
            pipe.sadd(rp.consumers_set(self.pool), self.consumer)
            pipe.execute()

    def release(self, entry_ids: Sequence[bytes]) -> None:
        """Entries delivered to this consumer that it will not start (it
        stops): make them claimable by another consumer at once, by
        setting their idle time to CLAIM_IDLE_MS (they stay pending)."""
        if not entry_ids:
            return
        with self._calls():
            self._client.xclaim(rp.requests_stream(self.pool), rp.GROUP,
                                self.consumer, 0, list(entry_ids),
                                idle=rp.CLAIM_IDLE_MS, justid=True)

    def unblock(self, client_id: int | None) -> None:
        """End the blocking read of the connection `client_id` (the
        reader's) now rather than at its BLOCK timeout."""
        if client_id is None:
            return
        with self._calls():
            self._client.client_unblock(client_id)

    def leave(self) -> None:
        """At a graceful exit: no alive key, no longer in the set, and out
        of the group unless entries are still pending for it (deleting the
        consumer would lose them; they stay to be claimed)."""
        with self._calls():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(rp.alive_key(self.pool, self.consumer))
            pipe.srem(rp.consumers_set(self.pool), self.consumer)
            pipe.execute()
            try:
                self._leave_group(keys=[rp.requests_stream(self.pool)],
                                  args=[rp.GROUP, self.consumer])
            except self._response_error as err:
                # no group any more (Redis lost it): nothing to leave
                self._log(10, f'leaving the consumer group: {err}')

    def close(self) -> None:
        """Close the connection."""
        try:
            self._client.close()
        except self._errors:
            pass    # closing a connection that is gone already

    def __repr__(self) -> str:
        return f'<RedisLink {_safe_url(self.url)} {self.consumer}>'


class StreamReader(threading.Thread):
    """The thread that reads new entries (XREADGROUP BLOCK) and claims
    abandoned ones (XAUTOCLAIM), never more than the main loop wants."""

    def __init__(self, url: str, pool: str, consumer: str,
                 log: Callable[[int, str], None]) -> None:
        super().__init__(name='stream-reader', daemon=True)
        self.pool = pool
        self.consumer = consumer
        self._url = url
        self._log = log
        self._lock = threading.Condition()
        self._inbox: list[Entry] = []
        self._free = 0          # idle local workers, as last said by want()
        self._delivered = 0     # entries handed over since that
        self._stopping = False
        self._wake = WakePipe()
        self._claim_cursor: bytes = b'0-0'
        self._next_claim = 0.0
        self._next_forget = 0.0
        # the Redis id of the reading connection (for CLIENT UNBLOCK)
        self.client_id: int | None = None

    # -- the main loop's side -------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that becomes readable when entries arrived."""
        return self._wake.fileno()

    def take(self) -> list[Entry]:
        """The entries read since the last call (empties the inbox)."""
        self._wake.drain()
        with self._lock:
            entries, self._inbox = self._inbox, []
        return entries

    def want(self, free: int) -> None:
        """`free` local workers are idle and nothing waits for them: the
        reader may take up to that many entries (minus those it hands over
        meanwhile)."""
        with self._lock:
            # entries still in the inbox will take some of those workers
            free -= len(self._inbox)
            if free != self._free or self._delivered:
                self._free = free
                self._delivered = 0
                self._lock.notify()

    def stop(self) -> None:
        """Read no more; the thread ends within READ_BLOCK_MS."""
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def close(self) -> None:
        """Close the wake-up pipe (a wake-up after that does nothing)."""
        self._wake.close()

    # -- the thread ----------------------------------------------------------

    def _budget(self) -> int | None:
        """How many entries to read now; None once stopping. Waits while
        there is no room."""
        with self._lock:
            while not self._stopping and self._free - self._delivered <= 0:
                self._lock.wait(READ_BLOCK_MS / 1000)
            if self._stopping:
                return None
            return self._free - self._delivered

    def _hand_over(self, entries: list[Entry]) -> None:
        if not entries:
            return
        with self._lock:
            self._inbox.extend(entries)
            self._delivered += len(entries)
        # (after close(), nobody takes them: they stay pending, claimable
        # by other consumers)
        self._wake.wake()

    def run(self) -> None:
        redis = import_redis()
        errors = _connection_errors()
        client: RedisClient = None
        delay = RETRY_FIRST
        need_group = True
        while True:
            budget = self._budget()
            if budget is None:
                break
            try:
                if client is None:
                    client = make_client(self._url)
                    self.client_id = int(client.client_id())
                if need_group:
                    # the main loop's link joined first: a group missing
                    # now was lost
                    ensure_group(client, self.pool, first=False)
                    need_group = False
                self._hand_over(self._read(client, budget))
                delay = RETRY_FIRST
            except redis.ResponseError as err:
                if 'NOGROUP' not in str(err):
                    self._log(40, f'reading the stream failed: {err}')
                    self._pause(delay)
                    delay = min(delay * 2, RETRY_MAX)
                need_group = True   # Redis lost its data: a new group
            except errors:
                # the main loop's link logs the outage once; here: retry
                if client is not None:
                    client.close()
                client = None
                self.client_id = None
                need_group = True
                self._pause(delay)
                delay = min(delay * 2, RETRY_MAX)
            except Exception as err:  # pylint: disable=broad-except
                # a reply this code did not expect: said, and tried again
                # (a reader that died would leave the host idle for good)
                self._log(40, f'reading the stream failed: {err!r}')
                self._pause(delay)
                delay = min(delay * 2, RETRY_MAX)
        if client is not None:
            client.close()

    def _pause(self, seconds: float) -> None:
        with self._lock:
            if not self._stopping:
                self._lock.wait(seconds)

    def _read(self, client: RedisClient, budget: int) -> list[Entry]:
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + CLAIM_EVERY
            claimed = self._claim(client, budget)
            if now >= self._next_forget:
                self._next_forget = now + FORGET_EVERY
                forget_dead_consumers(client, self.pool, self.consumer,
                                      self._log)
            if claimed:
                return claimed
        reply = client.xreadgroup(
            rp.GROUP, self.consumer, {rp.requests_stream(self.pool): '>'},
            count=budget, block=READ_BLOCK_MS)
        entries: list[Entry] = []
        for _stream, items in _stream_replies(reply):
            entries += _entries(items)
        return entries

    def _claim(self, client: RedisClient, budget: int) -> list[Entry]:
        """Entries delivered to some consumer CLAIM_IDLE_MS ago and never
        acknowledged (so never started): take them over (the start script
        still decides who runs one)."""
        reply = client.xautoclaim(
            rp.requests_stream(self.pool), rp.GROUP, self.consumer,
            rp.CLAIM_IDLE_MS, start_id=self._claim_cursor, count=budget)
        cursor = reply[0]
        self._claim_cursor = cursor if isinstance(cursor, bytes) \
            else str(cursor).encode()
        return _entries(reply[1])


class CallThread(threading.Thread):
    """A thread with a connection of its own that makes the main loop's
    calls on a request's path (starts, replies) one at a time, so the loop
    never waits for their round trip: the loop `submit()`s a call when
    the thread is not `busy`, goes on, and takes its `result()` once the
    wake-up pipe (`fileno()`) says it came. What was queued meanwhile
    goes in the next call: the round trips batch under load.

    The thread never retries: a call that failed hands its exception back,
    and the main loop's `RedisLink` (its back-off, its log) decides when
    to try again."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name=name, daemon=True)
        self._url = url
        self._lock = threading.Condition()
        self._call: Callable[[RedisClient], Any] | None = None
        self._result: tuple[Any, BaseException | None] | None = None
        self._stopping = False
        self._wake = WakePipe()
        # a call submitted whose result was not taken yet (the main
        # loop's view: set by submit, cleared by result)
        self.busy = False

    # -- the main loop's side ------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that becomes readable when a result came."""
        return self._wake.fileno()

    def submit(self, call: Callable[[RedisClient], Any]) -> None:
        """Make `call(client)` in the thread; only while not busy."""
        assert not self.busy, 'one call at a time'
        self.busy = True
        with self._lock:
            self._call = call
            self._lock.notify()

    def result(self, timeout: float = 0.0
               ) -> tuple[Any, BaseException | None] | None:
        """(value, None) or (None, the exception) of the submitted call
        once it ended, waiting `timeout` seconds at most for it; None
        while it runs (or when nothing was submitted)."""
        self._wake.drain()
        with self._lock:
            if self._result is None and self.busy and timeout > 0:
                self._lock.wait_for(lambda: self._result is not None,
                                    timeout)
            result, self._result = self._result, None
        if result is not None:
            self.busy = False
        return result

    def stop(self) -> None:
        """End the thread once the call it makes (if any) ended."""
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def close(self) -> None:
        """Close the wake-up pipe (a wake-up after that does nothing)."""
        self._wake.close()

    # -- the thread ----------------------------------------------------------

    def run(self) -> None:
        errors = _connection_errors()
        client: RedisClient = None
        while True:
            with self._lock:
                while self._call is None and not self._stopping:
                    self._lock.wait()
                call, self._call = self._call, None
            if call is None:
                break
            result: tuple[Any, BaseException | None]
            try:
                if client is None:
                    client = make_client(self._url)
                result = (call(client), None)
            except Exception as err:  # pylint: disable=broad-except
                # handed to the main loop, which logs it (and raises it
                # again when it is not Redis's); the thread carries on, so
                # the loop never waits for a result that cannot come
                result = (None, err)
                if isinstance(err, errors) and client is not None:
                    _close_quietly(client)
                    client = None
            with self._lock:
                self._result = result
                self._lock.notify_all()
            self._wake.wake()
        if client is not None:
            client.close()


def _close_quietly(client: RedisClient) -> None:
    """Close a client whose connection failed (a failure to close it
    changes nothing: it is dropped either way)."""
    try:
        client.close()
    except Exception:  # pylint: disable=broad-except
        pass    # (the connection is already broken: nothing to report)


def _stream_replies(reply: Any) -> list[tuple[Any, Any]]:
    """[(stream, entries)] of an XREADGROUP reply (pairs; a dict when the
    URL asked for RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(item[0], item[1]) for item in reply]


def _safe_url(url: str) -> str:
    """`url` without its password (for logs)."""
    scheme, sep, rest = url.partition('://')
    credentials, at, host = rest.rpartition('@')
    if not sep or not at:
        return url
    user = credentials.partition(':')[0]
    return f'{scheme}://{user + ":***" if user else "***"}@{host}'
