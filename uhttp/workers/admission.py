"""Admission control: past `max_pending`, push back instead of refusing.

When the pools hold `max_pending` requests, the dispatcher stops taking
more: it parks every connection that sends a new request without reading
it (its bytes wait in the kernel; TCP slows the client), and once as many
connections are parked as the listen backlog holds, it stops accepting
too (the kernel queues the rest). Requests the dispatcher answers itself
(static files, @sync routes such as a health check, /metrics) are still
served, also on new connections: they cost no pool capacity. When the
pools drain below a low-water mark, every parked connection is read
again, oldest first (one that finds the pools full again is parked again
at the back). Not one per free place: a parked connection may hold no
request (its client left, or it was parked between two requests), and a
place kept for it would leave the others parked with nothing to wake
them.

This keeps the workers busy and the dispatcher's core on useful work under
overload, where answering 503 at once would make every client send again
at once (congestive collapse). A 503 goes only to a request that waited
in a backlog for its whole pool timeout.

Must never: read from a parked connection, hold more than `max_pending`
pool requests, or forget a parked connection (each is resumed or closed).
"""

from __future__ import annotations

import collections
import selectors
import socket as _socket
from collections.abc import Sequence
from typing import Any, Final, Protocol

# reasons for not accepting connections; the listener is watched only
# while none holds
# the pools hold max_pending requests
HOLD_FULL: Final = 'full'
# accept() failed: retry a moment later
HOLD_ACCEPT_FAILED: Final = 'failed'
# the old dispatcher serves until we are ready
HOLD_PREDECESSOR: Final = 'handover'
# shutting down
HOLD_CLOSED: Final = 'closed'


class ParkableConnection(Protocol):
    """What parking uses of a uhttp.server HttpConnection (its private
    read-pause machinery: uhttp-server has no public way to stop reading
    one connection)."""

    _read_paused: bool
    _read_pause_timeout: float | None
    _request_start: float | None
    _last_activity: float

    @property
    def socket(self) -> _socket.socket | None:
        """None once the connection is closed."""

    def _register(self) -> bool: ...

    def _unregister(self) -> None: ...

    def update_activity(self) -> None:
        """Restart the idle clock."""

    def close(self) -> None:
        """Close the connection."""


class ListenerGate:
    """Watches the listening socket in the selector unless something holds
    it; each reason is held and released on its own."""

    def __init__(self, selector: selectors.BaseSelector,
                 sock: _socket.socket | None, owner: Any) -> None:
        self._selector = selector
        self._sock = sock
        # the selector key's data: the uhttp.server HttpServer
        self._owner = owner
        self._holds: set[str] = set()
        self._watched = True    # HttpServer registers it when it binds

    def replace_socket(self, sock: _socket.socket | None) -> None:
        """Watch `sock` instead (an inherited listener)."""
        self._unwatch()
        self._sock = sock
        self._update()

    def hold(self, reason: str) -> None:
        """Stop accepting for `reason` until release(reason)."""
        self._holds.add(reason)
        self._update()

    def release(self, reason: str) -> None:
        """`reason` no longer stands in the way of accepting."""
        self._holds.discard(reason)
        self._update()

    def is_held(self, reason: str) -> bool:
        """True while `reason` holds the listener."""
        return reason in self._holds

    def _update(self) -> None:
        if self._holds or self._sock is None:
            self._unwatch()
        elif not self._watched:
            try:
                self._selector.register(self._sock, selectors.EVENT_READ,
                                        self._owner)
                self._watched = True
            except (ValueError, OSError):
                pass  # closed meanwhile

    def _unwatch(self) -> None:
        if self._watched:
            self._watched = False
            if self._sock is None:
                return  # no socket, nothing registered
            try:
                self._selector.unregister(self._sock)
            except (KeyError, ValueError, OSError):
                pass


class Admission:
    """Whether new pool requests may be read now, and the connections that
    wait for that (parked)."""

    def __init__(self, max_pending: int, park_limit: int) -> None:
        self.max_pending = max_pending
        # reopen a little below the limit: no flapping at every answer
        self.reopen_at = max(0, max_pending - max(1, max_pending // 10))
        # past this many parked connections, stop accepting: the kernel's
        # listen backlog queues the rest
        self.park_limit = park_limit
        self.closed = False
        self._parked: collections.deque[ParkableConnection] = \
            collections.deque()

    @property
    def parked_count(self) -> int:
        """Connections waiting to be read."""
        return len(self._parked)

    def park(self, connection: ParkableConnection,
             gate: ListenerGate) -> None:
        """Stop reading `connection` until there is room for its request."""
        connection._unregister()  # pylint: disable=protected-access
        # no idle or request timeout while we are the ones not reading
        connection._read_paused = True  # pylint: disable=protected-access
        connection._read_pause_timeout = 0  # pylint: disable=protected-access
        self._parked.append(connection)
        if len(self._parked) >= self.park_limit:
            gate.hold(HOLD_FULL)

    def update(self, pending_count: int,
               gate: ListenerGate) -> Sequence[ParkableConnection]:
        """Close or reopen after the number of pending requests changed;
        returns the parked connections to read again now. (Open, nothing
        parked and below the limit, there is nothing to do: the dispatcher
        checks that itself before calling, on every request.)"""
        if pending_count >= self.max_pending:
            self.closed = True
            return ()
        if self.closed and pending_count > self.reopen_at:
            return ()
        self.closed = False
        gate.release(HOLD_FULL)
        return self.release_all()

    def release_all(self) -> list[ParkableConnection]:
        """Every parked connection (at shutdown: they are answered or
        closed by the caller)."""
        parked, self._parked = list(self._parked), collections.deque()
        return parked


def resume(connection: ParkableConnection) -> bool:
    """Read a parked connection again; False when it is gone."""
    # pylint: disable=protected-access
    connection._read_paused = False
    connection._read_pause_timeout = None
    if connection.socket is None:
        return False
    connection.update_activity()
    if connection._request_start is not None:
        connection._request_start = connection._last_activity
    if not connection._register():
        connection.close()
        return False
    return True
