"""Everything that crosses between the dispatcher and a worker, in one place.

A message is a plain tuple whose first item is its kind. Tuples pickle fast
and small; the named constructors below are the only places that build them,
so the layout of each kind is written down exactly once. Nothing here may
hold a socket, a file or any other object that only makes sense in one
process.

Bodies travel as bytes encoded once (by the worker for responses, by the
HTTP parser for requests); no kind re-encodes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

# Any message as it comes off a channel: a pickled tuple, its first item
# the kind; the types below give the layout of each kind.
Message = tuple[Any, ...]
# a request's query (name -> str, or list of str when repeated)
Query = dict[str, Any] | None
# decoded data (JSON, form) or the raw body: whatever pickles
Data = Any

RequestMessage = tuple[int, int, str, str, Query, dict[str, str], Data,
                       str | None, bool, bool, Any]
ConfigMessage = tuple[int, Any]
StopMessage = tuple[int]
RequestIdMessage = tuple[int, int]
# a helper service's status entry: name, state, pid, restarts, …
ServiceStatus = dict[str, Any]
ServicesMessage = tuple[int, dict[str, ServiceStatus]]
HeartbeatMessage = tuple[int, int | None, int]
ResponseMessage = tuple[int, int, int, bytes, bool, str]
KeepAliveMessage = tuple[int, tuple[int, ...]]
LogMessage = tuple[int, str, int, str, dict[str, Any] | None]
StreamStartMessage = tuple[int, int, int, dict[str, str],
                           dict[str, str] | None]
StreamDataMessage = tuple[int, int, bytes]
AcceptingMessage = tuple[int, bool]
ForwardMessage = tuple[int, str, str, Data, dict[str, str], bool]

# dispatcher -> worker
REQUEST: Final = 1         # (REQUEST, request_id, method, path, query, headers, data, remote_address, to_all, keep_alive, context)
CONFIG: Final = 2          # (CONFIG, config)
STOP: Final = 3            # (STOP,)  finish what you hold, then exit
DISCONNECT: Final = 4      # (DISCONNECT, request_id)  its client went away
CANCEL: Final = 5          # (CANCEL, request_id)  client left: skip it if not started
SERVICES: Final = 6        # (SERVICES, {name: status entry})  helper service states

# worker -> dispatcher
READY: Final = 20          # (READY, pid)  setup() finished
HEARTBEAT: Final = 21      # (HEARTBEAT, current_request_id, requests_handled)
RESPONSE: Final = 22       # (RESPONSE, request_id, status, wire_bytes, keep_alive, route)
DEFERRED: Final = 23       # (DEFERRED, request_id)  handler returned DEFERRED
KEEP_ALIVE: Final = 24     # (KEEP_ALIVE, request_ids)  reset timeout and stuck clock
LOG: Final = 25            # (LOG, name, level, message, details)
STREAM_START: Final = 26   # (STREAM_START, request_id, status, headers, cookies)
STREAM_DATA: Final = 27    # (STREAM_DATA, request_id, body)
STREAM_END: Final = 28     # (STREAM_END, request_id)
ACCEPTING: Final = 29      # (ACCEPTING, flag)  pause() / resume()
RETURNED: Final = 30       # (RETURNED, request_id)  a paused worker hands a request back
FORWARD: Final = 31        # (FORWARD, method, path, data, headers, to_all)  fire-and-forget


def request(request_id: int, method: str, path: str, query: Query,
            headers: dict[str, str], data: Data,
            remote_address: str | None, to_all: bool = False,
            keep_alive: bool = False, context: Any = None) -> RequestMessage:
    """A request for a worker pool; `to_all`: a copy of a broadcast, run
    even by a paused worker; `keep_alive`: whether its connection may stay
    open after the answer (the worker writes that into the answer);
    `context`: what Dispatcher.on_request_accepted() returned (picklable),
    the worker's Request.context."""
    return (REQUEST, request_id, method, path, query, headers, data,
            remote_address, to_all, keep_alive, context)


def config(value: Any) -> ConfigMessage:
    """New configuration for `Worker.on_config`."""
    return (CONFIG, value)


def stop() -> StopMessage:
    """Ask a worker to finish what it holds and exit."""
    return (STOP,)


def disconnect(request_id: int) -> RequestIdMessage:
    """Tell a worker that the client of a deferred/streaming request left."""
    return (DISCONNECT, request_id)


def cancel(request_id: int) -> RequestIdMessage:
    """Tell a worker to skip a request it has not started (client left)."""
    return (CANCEL, request_id)


def services(states: dict[str, ServiceStatus]) -> ServicesMessage:
    """Current states of the dispatcher's helper services."""
    return (SERVICES, states)


def ready(pid: int) -> RequestIdMessage:
    """The worker finished setup() and takes requests."""
    return (READY, pid)


def heartbeat(current_request_id: int | None,
              requests_handled: int) -> HeartbeatMessage:
    """Sign of life from the worker's loop."""
    return (HEARTBEAT, current_request_id, requests_handled)


def response(request_id: int, status: int, wire: bytes, keep_alive: bool,
             route: str = '') -> ResponseMessage:
    """The whole answer to a request as it goes on the wire (status line,
    headers, body: see framing.py); whether the connection stays open after
    it; route is the matched pattern (for metrics), '' when none matched."""
    return (RESPONSE, request_id, status, wire, keep_alive, route)


def deferred(request_id: int) -> RequestIdMessage:
    """The handler returned DEFERRED; the answer comes later."""
    return (DEFERRED, request_id)


def keep_alive(request_ids: Iterable[int]) -> KeepAliveMessage:
    """Reset the timeout of these requests and the worker's stuck clock."""
    return (KEEP_ALIVE, tuple(request_ids))


def log(name: str, level: int, message: str,
        details: dict[str, Any] | None = None) -> LogMessage:
    """One log record, printed by the dispatcher; `details`: None or a dict
    of LogRecord fields (exc_text, created, pathname, lineno, ...)."""
    return (LOG, name, level, message, details)


def stream_start(request_id: int, status: int, headers: dict[str, str],
                 cookies: dict[str, str] | None) -> StreamStartMessage:
    """Start a streaming response (headers only, no length)."""
    return (STREAM_START, request_id, status, headers, cookies)


def stream_data(request_id: int, body: bytes) -> StreamDataMessage:
    """One chunk of a streaming response; body is bytes."""
    return (STREAM_DATA, request_id, body)


def stream_end(request_id: int) -> RequestIdMessage:
    """End a streaming response and close its connection."""
    return (STREAM_END, request_id)


def accepting(flag: object) -> AcceptingMessage:
    """The worker paused (False) or resumed (True) taking requests."""
    return (ACCEPTING, bool(flag))


def returned(request_id: int) -> RequestIdMessage:
    """A paused worker did not run this request; give it to a sibling."""
    return (RETURNED, request_id)


def forward(method: str, path: str, data: Data, headers: dict[str, str],
            to_all: bool = False) -> ForwardMessage:
    """A fire-and-forget request from a worker to whichever pool routes it:
    to one of its workers, or to every one (`to_all`)."""
    return (FORWARD, method, path, data, headers, to_all)


# -- WebSocket connections (see websocket.py and ws_dispatch.py) --------------
# dispatcher -> worker
WS_OPEN: Final = 40        # (WS_OPEN, request_id, method, path, query, headers, None, remote_address, False, keep_alive, context, pattern, path_params)
WS_MESSAGE: Final = 41     # (WS_MESSAGE, conn_id, data)  str: a text message, bytes: binary
WS_CLOSED: Final = 42      # (WS_CLOSED, conn_id, code, reason)  the connection ended
# worker -> dispatcher
WS_SEND: Final = 50        # (WS_SEND, conn_id, data)
WS_CLOSE: Final = 51       # (WS_CLOSE, conn_id, code, reason)
WS_JOIN: Final = 52        # (WS_JOIN, conn_id, group)
WS_LEAVE: Final = 53       # (WS_LEAVE, conn_id, group)
WS_BROADCAST: Final = 54   # (WS_BROADCAST, group, data)  group None: the whole pool
WS_ACCEPT: Final = 55      # (WS_ACCEPT, request_id)  do_check passed: upgrade it

WS_WORKER_KINDS: Final = frozenset(
    (WS_SEND, WS_CLOSE, WS_JOIN, WS_LEAVE, WS_BROADCAST, WS_ACCEPT))
# the kinds that start work a worker may hand back unstarted
STARTS_WORK: Final = frozenset((REQUEST, WS_OPEN))
WS_DISPATCHER_KINDS: Final = frozenset((WS_OPEN, WS_MESSAGE, WS_CLOSED))


def ws_open(request_id: int, path: str, query: Query,
            headers: dict[str, str], remote_address: str | None,
            keep_alive: bool, context: Any, pattern: str,
            path_params: dict[str, Any]) -> Message:
    """An upgrade request for the @ws route `pattern`: the worker runs
    do_check() and answers WS_ACCEPT (the request id becomes the
    connection id) or a RESPONSE (refused, no upgrade). Its first items
    are laid out as a REQUEST's."""
    return (WS_OPEN, request_id, 'GET', path, query, headers, None,
            remote_address, False, keep_alive, context, pattern,
            path_params)


def ws_accept(request_id: int) -> Message:
    """The worker accepts the upgrade request `request_id`."""
    return (WS_ACCEPT, request_id)


def ws_message(conn_id: int, data: str | bytes) -> Message:
    """One whole message a client sent (str: text, bytes: binary)."""
    return (WS_MESSAGE, conn_id, data)


def ws_closed(conn_id: int, code: int, reason: str) -> Message:
    """A WebSocket connection ended, with this close code and reason."""
    return (WS_CLOSED, conn_id, code, reason)


def ws_send(conn_id: int, data: str | bytes) -> Message:
    """Send one message to a WebSocket client (str: text, bytes: binary)."""
    return (WS_SEND, conn_id, data)


def ws_close(conn_id: int, code: int, reason: str) -> Message:
    """Close a WebSocket connection with `code` and `reason`."""
    return (WS_CLOSE, conn_id, code, reason)


def ws_join(conn_id: int, group: str) -> Message:
    """Add a connection to a broadcast group (kept by the dispatcher)."""
    return (WS_JOIN, conn_id, group)


def ws_leave(conn_id: int, group: str) -> Message:
    """Take a connection out of a broadcast group."""
    return (WS_LEAVE, conn_id, group)


def ws_broadcast(group: str | None, data: str | bytes) -> Message:
    """Send `data` to every connection of `group` (None: every WebSocket
    connection of the sender's pool); the dispatcher fans it out."""
    return (WS_BROADCAST, group, data)
