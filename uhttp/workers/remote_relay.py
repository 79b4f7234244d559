"""The books of a remote worker host: started requests and owed replies.

A request a host started came from one dispatcher with that dispatcher's
request id; two dispatchers may use the same id. So each started request
(`Job`) gets a local id here, the one its local worker sees, and every
message that worker sends about it is turned back into the dispatcher's id
and queued for that dispatcher's reply stream. The queue (the outbox)
holds the encoded replies until the host adds them to Redis; while Redis
is away it keeps at most `OUTBOX_LIMIT` of them, dropping the oldest.
Each reply about one request gets the next number of that request's
sequence (STARTED, added by the start script, is 0), so a dispatcher can
drop a reply it got twice when a batch is sent again.

Must never: talk to Redis or to a worker process (remote_worker.py does
both), or decide what runs where.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from . import messages
from . import remote_protocol as rp
from .messages import Message

if TYPE_CHECKING:
    from .pending import Pending

OUTBOX_LIMIT: Final = 10_000    # replies kept while Redis is away, at most
BATCH_LIMIT: Final = 1000       # replies encoded and sent in one go, at most


class Job:
    """A started request: the dispatcher that sent it, its id there, its
    id here, and the message its local worker gets."""

    __slots__ = ('dispatcher_id', 'request_id', 'local_id', 'message',
                 'pending', 'seq')

    def __init__(self, dispatcher_id: str, request_id: int, local_id: int,
                 message: Message) -> None:
        self.dispatcher_id = dispatcher_id
        self.request_id = request_id
        self.local_id = local_id
        # the REQUEST message with the local id in place of the request id
        self.message = message
        # the worker's book entry while a local worker holds it
        self.pending: Pending | None = None
        # the sequence number of the last reply about it (STARTED: 0)
        self.seq = 0

    def next_seq(self) -> int:
        """The sequence number of the next reply about this request."""
        self.seq += 1
        return self.seq


class Relay:
    """Started requests by local id, and the replies not yet sent."""

    def __init__(self, consumer: str, log: Callable[[int, str], None],
                 limit: int = OUTBOX_LIMIT) -> None:
        self.consumer = consumer
        self._log = log
        self._limit = limit
        self._jobs: dict[int, Job] = {}
        self._next_id = 0
        # (dispatcher id, message, sequence number or None)
        self._outbox: collections.deque[tuple[str, Message, int | None]] \
            = collections.deque()
        self._dropped = 0
        # the oldest queued replies in the batch being sent (see batch())
        self._in_flight = 0

    # -- started requests ----------------------------------------------------

    def __len__(self) -> int:
        """Started requests not finished yet."""
        return len(self._jobs)

    def start(self, dispatcher_id: str, request: Message) -> Job:
        """Book a REQUEST message of `dispatcher_id` that this host won."""
        self._next_id += 1
        job = Job(dispatcher_id, request[1], self._next_id,
                  (request[0], self._next_id) + tuple(request[2:]))
        self._jobs[job.local_id] = job
        return job

    def get(self, local_id: int) -> Job | None:
        """The started request a local worker calls `local_id`."""
        return self._jobs.get(local_id)

    def finish(self, local_id: int) -> Job | None:
        """Forget a started request (answered, lost, handed back)."""
        return self._jobs.pop(local_id, None)

    def finish_all(self) -> list[Job]:
        """Forget every started request; returns them."""
        jobs = list(self._jobs.values())
        self._jobs.clear()
        return jobs

    # -- replies ----------------------------------------------------------------

    def from_worker(self, job: Job, message: Message) -> None:
        """Queue a worker's message about `job` (its local id at index 1)
        for the dispatcher, with the dispatcher's request id."""
        self.reply(job.dispatcher_id,
                   (message[0], job.request_id) + tuple(message[2:]),
                   job.next_seq())

    def keep_alive(self, local_ids: Iterable[int]) -> None:
        """A worker's KEEP_ALIVE: one per dispatcher of those requests."""
        by_dispatcher: dict[str, list[int]] = {}
        for local_id in local_ids:
            job = self._jobs.get(local_id)
            if job is not None:
                by_dispatcher.setdefault(job.dispatcher_id, []).append(
                    job.request_id)
        for dispatcher_id, request_ids in by_dispatcher.items():
            self.reply(dispatcher_id, messages.keep_alive(request_ids))

    def lost(self, job: Job, reason: str) -> None:
        """Queue LOST for a started request that will not be answered."""
        self.reply(job.dispatcher_id, rp.lost(job.request_id, reason),
                   job.next_seq())

    def reply(self, dispatcher_id: str, message: Message,
              seq: int | None = None) -> None:
        """Queue one message for a dispatcher's reply stream (`seq`: its
        number among the replies about its request, None for none)."""
        self._outbox.append((dispatcher_id, message, seq))
        if len(self._outbox) > self._limit:
            self._outbox.popleft()
            # the oldest is in the batch being sent, if one is: that
            # batch now covers one reply less of the outbox
            self._in_flight = max(0, self._in_flight - 1)
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                self._log(40, f'Redis is away and {self._limit} replies '
                          f'wait: {self._dropped} of the oldest dropped')

    @property
    def waiting_replies(self) -> int:
        """Replies queued, not sent yet."""
        return len(self._outbox)

    def batch(self) -> list[tuple[str, dict[bytes, bytes]]]:
        """The oldest queued replies (BATCH_LIMIT at most), encoded, as
        (dispatcher_id, fields); call sent() once they are in Redis. A
        reply JSON cannot carry becomes a LOST for its request. Replies
        may be queued (and the oldest dropped) while the batch is sent."""
        batch: list[tuple[str, dict[bytes, bytes]]] = []
        for dispatcher_id, message, seq in self._outbox:
            try:
                fields = rp.encode_reply(self.consumer, message, seq)
            except rp.ProtocolError as err:
                self._log(40, f'request {message[1]} of dispatcher '
                          f'{dispatcher_id}: its answer cannot be sent: '
                          f'{err}')
                fields = rp.encode_reply(
                    self.consumer, rp.lost(message[1], str(err)), seq)
            batch.append((dispatcher_id, fields))
            if len(batch) >= BATCH_LIMIT:
                break
        self._in_flight = len(batch)
        return batch

    def sent(self, count: int) -> None:
        """The batch of `count` replies is in Redis (those of them dropped
        meanwhile were out of the outbox already)."""
        for _ in range(min(count, self._in_flight)):
            self._outbox.popleft()
        self._in_flight = 0
        self._dropped = 0
