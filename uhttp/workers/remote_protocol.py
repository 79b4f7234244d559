"""What travels through Redis between a RemotePool and remote workers.

A `RemotePool` in a dispatcher and the workers started on other hosts with
`uhttp-workers worker app:MyWorker --redis URL` never talk directly: they
share a handful of Redis keys, all named here, and encode every message
with the functions here. This module owns those names and that encoding
and nothing else: it opens no connection and never blocks.

The keys of a remote pool called NAME:

- ``uhttp:NAME:requests``: a stream with the consumer group ``workers``.
  A dispatcher adds one entry per request (`encode_request`); each remote
  worker reads with XREADGROUP as its own consumer, one entry at a time
  and only when it is idle.
- ``uhttp:NAME:replies:DISPATCHER``: one stream per dispatcher (its
  `dispatcher_id`), read by that dispatcher alone with plain XREAD.
  Workers add their answers here (`encode_reply`): STARTED first, then the
  messages a local worker would send over its channel (RESPONSE, or
  STREAM_START / STREAM_DATA / STREAM_END, DEFERRED, KEEP_ALIVE).
- ``uhttp:NAME:consumers``: a set of the consumer names ever announced.
  A consumer is one `uhttp-workers worker` process, which reads for all
  of its local worker processes (so it asks for at most as many entries
  as it has idle workers).
- ``uhttp:NAME:started:ENTRY``: the consumer that started the request
  entry ENTRY (set by the start script with a time to live of
  `STARTED_TTL_MS`), so a start whose reply was lost can be run again by
  the same consumer and tell it won without running the request twice.
- ``uhttp:NAME:alive:CONSUMER``: a worker's heartbeat, a JSON object
  (`encode_heartbeat`) set with a time to live of `ALIVE_TTL_MS`. The key
  is there exactly while the worker is alive; expiry is measured by the
  Redis server's clock, so the hosts' clocks never have to agree.

At most once: a worker acknowledges an entry (XACK) and adds STARTED to
the reply stream in one server-side script that adds STARTED only when
its XACK acknowledged the entry (so a host that lost the entry to another
never claims to run it), and only then runs the handler. Every reply
about one request carries a sequence number (`FIELD_SEQ`: STARTED is 0,
then 1, 2, ...), so a dispatcher drops a reply added twice (a batch sent
again after its MULTI/EXEC ran but its answer was lost). An entry delivered but not yet started stays in the group's
pending list; another worker may claim it (XAUTOCLAIM) once it has been
idle for `CLAIM_IDLE_MS`. An entry already acknowledged is never run
again: if its worker's heartbeat key expires before the answer came, the
dispatcher answers 502.

Messages are JSON, never pickle: a Redis reachable from several hosts must
not be a way to run code in a worker or a dispatcher. Bytes (request
bodies, the answer's wire bytes) are tagged and base64-encoded; tuples
arrive as lists (a message is turned back into a tuple at the top level
only). So a remote pool takes requests whose data and context are made of
JSON values, str keys and bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from . import messages
from .messages import Message

GROUP: Final = 'workers'
HEARTBEAT_INTERVAL: Final = 1.0     # seconds between two heartbeats
ALIVE_TTL_MS: Final = 5000          # no heartbeat for this long: dead
CLAIM_IDLE_MS: Final = 10000        # delivered, unstarted, idle: claimable
REPLY_STREAM_MAXLEN: Final = 100_000  # approximate trim of reply streams
STARTED_TTL_MS: Final = 600_000     # how long a start is remembered

# worker -> dispatcher, remote pools only: the entry was acknowledged and
# its handler is about to run on `consumer`
STARTED: Final = 60         # (STARTED, request_id, consumer)
# worker -> dispatcher, remote pools only: the request was started but its
# worker process ended before it answered (the dispatcher answers 502)
LOST: Final = 61            # (LOST, request_id, reason)

# field names of a request entry and of a reply entry
FIELD_DISPATCHER: Final = b'd'  # request: the dispatcher_id to answer
FIELD_TIMEOUT_MS: Final = b't'  # request: skip it once older than this
FIELD_MESSAGE: Final = b'm'     # both: the JSON-encoded message
FIELD_CONSUMER: Final = b'c'    # reply: the consumer that sent it
FIELD_SEQ: Final = b's'         # reply: its number among its request's
                                # replies (STARTED 0, then 1, 2, ...)

_BYTES_TAG: Final = '$bytes'


class ProtocolError(ValueError):
    """An entry or a value that this protocol cannot carry."""


def requests_stream(pool: str) -> str:
    """The stream of requests of remote pool `pool`."""
    return f'uhttp:{pool}:requests'


def replies_stream(pool: str, dispatcher_id: str) -> str:
    """The stream where answers for one dispatcher arrive."""
    return f'uhttp:{pool}:replies:{dispatcher_id}'


def consumers_set(pool: str) -> str:
    """The set of consumer names that have announced themselves."""
    return f'uhttp:{pool}:consumers'


def alive_key(pool: str, consumer: str) -> str:
    """The heartbeat key of one consumer (present while it lives)."""
    return f'uhttp:{pool}:alive:{consumer}'


def started_key(pool: str, entry_id: bytes | str) -> str:
    """The key naming the consumer that started request entry
    `entry_id` (see the start script in remote_consumer.py)."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return f'uhttp:{pool}:started:{entry_id}'


def started(request_id: int, consumer: str) -> Message:
    """The reply a worker adds when it acknowledged a request."""
    return (STARTED, request_id, consumer)


def lost(request_id: int, reason: str) -> Message:
    """The reply a remote host adds when the worker process running a
    started request ended without answering it."""
    return (LOST, request_id, reason)


def encode_request(dispatcher_id: str, message: Message,
                   timeout_ms: int) -> dict[bytes, bytes]:
    """The fields of a request entry: a REQUEST message (see
    messages.request), the dispatcher to answer and how long the request
    may wait before nobody wants its answer any more."""
    if message[0] != messages.REQUEST:
        raise ProtocolError(f'not a request message: kind {message[0]}')
    return {FIELD_DISPATCHER: dispatcher_id.encode(),
            FIELD_TIMEOUT_MS: str(int(timeout_ms)).encode(),
            FIELD_MESSAGE: encode_message(message)}


def decode_request(fields: dict[bytes, bytes]
                   ) -> tuple[str, int, Message]:
    """(dispatcher_id, timeout_ms, message) of a request entry."""
    try:
        dispatcher_id = fields[FIELD_DISPATCHER].decode()
        timeout_ms = int(fields[FIELD_TIMEOUT_MS])
        message = decode_message(fields[FIELD_MESSAGE])
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f'malformed request entry: {err}') from err
    if message[0] != messages.REQUEST:
        raise ProtocolError(f'not a request message: kind {message[0]}')
    return dispatcher_id, timeout_ms, message


def encode_reply(consumer: str, message: Message,
                 seq: int | None = None) -> dict[bytes, bytes]:
    """The fields of a reply entry sent by `consumer`; `seq`: its number
    among the replies about its request (STARTED 0, then 1, 2, ...), or
    None for a reply about no single request (KEEP_ALIVE)."""
    fields = {FIELD_CONSUMER: consumer.encode(),
              FIELD_MESSAGE: encode_message(message)}
    if seq is not None:
        fields[FIELD_SEQ] = str(int(seq)).encode()
    return fields


def decode_reply(fields: dict[bytes, bytes]) -> tuple[str, Message]:
    """(consumer, message) of a reply entry."""
    try:
        return (fields[FIELD_CONSUMER].decode(),
                decode_message(fields[FIELD_MESSAGE]))
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f'malformed reply entry: {err}') from err


def decode_reply_seq(fields: dict[bytes, bytes]
                     ) -> tuple[str, Message, int | None]:
    """(consumer, message, seq) of a reply entry; seq is None when the
    reply has none (KEEP_ALIVE, or a sender older than FIELD_SEQ)."""
    consumer, message = decode_reply(fields)
    raw = fields.get(FIELD_SEQ)
    if raw is None:
        return consumer, message, None
    try:
        return consumer, message, int(raw)
    except ValueError as err:
        raise ProtocolError(f'malformed reply entry: {err}') from err


def entry_age_ms(entry_id: bytes | str, server_time_ms: int) -> int:
    """How old a stream entry is, both times taken from the Redis server's
    clock: the first part of an entry id is the server time it was added
    at, and `server_time_ms` comes from the TIME command."""
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return server_time_ms - int(entry_id.split('-', 1)[0])


def encode_heartbeat(host: str, pid: int, workers: int, busy: int,
                     handled: int) -> bytes:
    """The value of a consumer's alive key: the host and pid of the
    process that reads the stream, how many worker processes it has
    running and busy, and how many requests they answered."""
    return json.dumps({'host': host, 'pid': pid, 'workers': workers,
                       'busy': busy, 'handled': handled}).encode()


def decode_heartbeat(value: bytes) -> dict[str, Any]:
    """The fields of a heartbeat value (see encode_heartbeat)."""
    try:
        decoded = json.loads(value)
    except ValueError as err:
        raise ProtocolError(f'malformed heartbeat: {err}') from err
    if not isinstance(decoded, dict):
        raise ProtocolError('malformed heartbeat: not an object')
    return decoded


def encode_message(message: Message) -> bytes:
    """A message as JSON; raises ProtocolError for a value JSON cannot
    carry (say, a context that is a custom object)."""
    try:
        return json.dumps(list(message), default=_tag_bytes,
                          separators=(',', ':')).encode()
    except (TypeError, ValueError) as err:
        raise ProtocolError(
            f'cannot send {type(message[0]).__name__} message kind '
            f'{message[0]} to a remote pool: {err} (remote pools carry JSON '
            'values, str keys and bytes)') from err


def decode_message(payload: bytes) -> Message:
    """The message tuple encoded by encode_message."""
    decoded = json.loads(payload, object_hook=_untag_bytes)
    if not isinstance(decoded, list) or not decoded:
        raise ProtocolError('malformed message: not a non-empty list')
    return tuple(decoded)


def _tag_bytes(value: object) -> dict[str, str]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode('ascii')}
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


def _untag_bytes(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj
