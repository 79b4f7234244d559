"""The private, lock-free link between the dispatcher and one worker.

Each worker gets one end of a Unix socketpair; the dispatcher keeps the other.
Messages are pickled and framed with a 4-byte length. Nothing is shared
between processes except the two ends of that one socket: no queue locks that
a killed process could leave held, no feeder thread that could lose a message
already "sent". A worker that dies shows up as end-of-file on its channel,
after every complete frame it wrote has been read.

The dispatcher's end never blocks: writes are buffered and flushed when the
socket is writable. The worker's end writes synchronously (the worker may
wait for the dispatcher, never the other way round: that wait is the
backpressure a worker streaming faster than the dispatcher reads gets) and
reads without blocking. It may hold frames back to write many in one call,
never more than `HOLD_LIMIT` bytes of them.
"""

from __future__ import annotations

import pickle
import socket
import struct

from .messages import Message

_HEADER = struct.Struct('!I')
_HEADER_SIZE = _HEADER.size
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_RECV_SIZE = 256 * 1024
# Bound the work one wake-up may do on one channel, so a chatty worker
# cannot starve the dispatcher's other sockets (invariant: no unbounded tick).
_MAX_RECVS_PER_CALL = 16
_SOCKET_BUFFER = 1024 * 1024
# Held frames are written once they pass this many bytes: batching many
# small frames pays off, keeping megabytes in the worker does not.
HOLD_LIMIT = 64 * 1024


class ChannelClosed(Exception):
    """The other end of the channel is gone."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """Return (dispatcher_end, worker_end) sockets of a new channel."""
    dispatcher_end, worker_end = socket.socketpair(
        socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (dispatcher_end, worker_end):
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            except OSError:
                pass  # the kernel default works, only with more wake-ups
    dispatcher_end.setblocking(False)
    return dispatcher_end, worker_end


def encode(message: Message) -> bytes:
    """Frame one message: length prefix + pickle."""
    payload = pickle.dumps(message, _PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class Channel:
    """One end of a channel: framed messages over a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._inbox = bytearray()
        self._outbox = bytearray()
        # worker side: frames waiting for flush_held()
        self._held: list[bytes] = []
        self._held_size = 0
        self.closed = False

    def fileno(self) -> int:
        """The socket's descriptor (for selectors)."""
        return self.sock.fileno()

    # -- reading -----------------------------------------------------------

    def receive(self) -> list[Message]:
        """Read what is available without blocking; return complete messages.

        Sets `closed` when the peer has gone (end of file or a socket error);
        the messages that arrived before that are still returned.
        """
        for _ in range(_MAX_RECVS_PER_CALL):
            try:
                data = self.sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            self._inbox += data
            if len(data) < _RECV_SIZE:
                break
        return self._parse()

    def _parse(self) -> list[Message]:
        inbox = self._inbox
        messages: list[Message] = []
        offset = 0
        size = len(inbox)
        while size - offset >= _HEADER_SIZE:
            (length,) = _HEADER.unpack_from(inbox, offset)
            end = offset + _HEADER_SIZE + length
            if end > size:
                break
            messages.append(pickle.loads(
                memoryview(inbox)[offset + _HEADER_SIZE:end]))
            offset = end
        if offset:
            del inbox[:offset]
        return messages

    # -- writing, dispatcher side (never blocks) ---------------------------

    def queue(self, message: Message) -> None:
        """Append a message to the outbox; call flush() to send."""
        self._outbox += encode(message)

    @property
    def has_output(self) -> bool:
        """True while queued bytes wait for the socket."""
        return bool(self._outbox)

    def flush(self) -> bool:
        """Send as much of the outbox as the socket takes now.

        Returns True when the outbox is empty. Raises ChannelClosed when the
        peer is gone.
        """
        outbox = self._outbox
        while outbox:
            try:
                sent = self.sock.send(outbox)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as err:
                self.closed = True
                raise ChannelClosed(str(err)) from err
            del outbox[:sent]
        return True

    # -- writing, worker side (blocks until written) -----------------------

    def send(self, message: Message) -> None:
        """Write one message synchronously (after any held ones); raises
        ChannelClosed."""
        frame = encode(message)
        if self._held:
            self._held.append(frame)
            self.flush_held()
            return
        self._write(frame)

    def hold(self, message: Message) -> None:
        """Keep a message to write with the next send() or flush_held():
        many small frames then cost one system call. Once the held frames
        pass HOLD_LIMIT bytes they are written at once (raises
        ChannelClosed then)."""
        frame = encode(message)
        self._held.append(frame)
        self._held_size += len(frame)
        if self._held_size >= HOLD_LIMIT:
            self.flush_held()

    @property
    def held_size(self) -> int:
        """Bytes of frames held, not yet written."""
        return self._held_size

    def flush_held(self) -> None:
        """Write the held messages; raises ChannelClosed."""
        if self._held:
            frames, self._held = self._held, []
            self._held_size = 0
            self._write(frames[0] if len(frames) == 1 else b''.join(frames))

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as err:
            self.closed = True
            raise ChannelClosed(str(err)) from err

    def close(self) -> None:
        """Close the socket."""
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
