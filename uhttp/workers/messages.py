"""Everything that crosses between the dispatcher and a worker, in one place.

A message is a plain tuple whose first item is its kind. Tuples pickle fast
and small; the named constructors below are the only places that build them,
so the layout of each kind is written down exactly once. Nothing here may
hold a socket, a file or any other object that only makes sense in one
process.

Bodies travel as bytes encoded once (by the worker for responses, by the
HTTP parser for requests); no kind re-encodes them.
"""

# dispatcher -> worker
REQUEST = 1         # (REQUEST, request_id, method, path, query, headers, data, remote_address, to_all, keep_alive, context)
CONFIG = 2          # (CONFIG, config)
STOP = 3            # (STOP,)  finish what you hold, then exit
DISCONNECT = 4      # (DISCONNECT, request_id)  its client went away
CANCEL = 5          # (CANCEL, request_id)  client left: skip it if not started
SERVICES = 6        # (SERVICES, {name: status})  helper service states

# worker -> dispatcher
READY = 20          # (READY, pid)  setup() finished
HEARTBEAT = 21      # (HEARTBEAT, current_request_id, requests_handled)
RESPONSE = 22       # (RESPONSE, request_id, status, wire_bytes, keep_alive, route)
DEFERRED = 23       # (DEFERRED, request_id)  handler returned DEFERRED
KEEP_ALIVE = 24     # (KEEP_ALIVE, request_ids)  reset timeout and stuck clock
LOG = 25            # (LOG, name, level, message, details)
STREAM_START = 26   # (STREAM_START, request_id, status, headers, cookies)
STREAM_DATA = 27    # (STREAM_DATA, request_id, body)
STREAM_END = 28     # (STREAM_END, request_id)
ACCEPTING = 29      # (ACCEPTING, flag)  pause() / resume()
RETURNED = 30       # (RETURNED, request_id)  a paused worker hands a request back
FORWARD = 31        # (FORWARD, method, path, data, headers, to_all)  fire-and-forget


def request(request_id, method, path, query, headers, data, remote_address,
            to_all=False, keep_alive=False, context=None):
    """A request for a worker pool; `to_all`: a copy of a broadcast, run
    even by a paused worker; `keep_alive`: whether its connection may stay
    open after the answer (the worker writes that into the answer);
    `context`: what Dispatcher.on_request_accepted() returned (picklable),
    the worker's Request.context."""
    return (REQUEST, request_id, method, path, query, headers, data,
            remote_address, to_all, keep_alive, context)


def config(value):
    """New configuration for `Worker.on_config`."""
    return (CONFIG, value)


def stop():
    """Ask a worker to finish what it holds and exit."""
    return (STOP,)


def disconnect(request_id):
    """Tell a worker that the client of a deferred/streaming request left."""
    return (DISCONNECT, request_id)


def cancel(request_id):
    """Tell a worker to skip a request it has not started (client left)."""
    return (CANCEL, request_id)


def services(states):
    """Current states of the dispatcher's helper services."""
    return (SERVICES, states)


def ready(pid):
    """The worker finished setup() and takes requests."""
    return (READY, pid)


def heartbeat(current_request_id, requests_handled):
    """Sign of life from the worker's loop."""
    return (HEARTBEAT, current_request_id, requests_handled)


def response(request_id, status, wire, keep_alive, route=''):
    """The whole answer to a request as it goes on the wire (status line,
    headers, body: see framing.py); whether the connection stays open after
    it; route is the matched pattern (for metrics), '' when none matched."""
    return (RESPONSE, request_id, status, wire, keep_alive, route)


def deferred(request_id):
    """The handler returned DEFERRED; the answer comes later."""
    return (DEFERRED, request_id)


def keep_alive(request_ids):
    """Reset the timeout of these requests and the worker's stuck clock."""
    return (KEEP_ALIVE, tuple(request_ids))


def log(name, level, message, details=None):
    """One log record, printed by the dispatcher; `details`: None or a dict
    of LogRecord fields (exc_text, created, pathname, lineno, ...)."""
    return (LOG, name, level, message, details)


def stream_start(request_id, status, headers, cookies):
    """Start a streaming response (headers only, no length)."""
    return (STREAM_START, request_id, status, headers, cookies)


def stream_data(request_id, body):
    """One chunk of a streaming response; body is bytes."""
    return (STREAM_DATA, request_id, body)


def stream_end(request_id):
    """End a streaming response and close its connection."""
    return (STREAM_END, request_id)


def accepting(flag):
    """The worker paused (False) or resumed (True) taking requests."""
    return (ACCEPTING, bool(flag))


def returned(request_id):
    """A paused worker did not run this request; give it to a sibling."""
    return (RETURNED, request_id)


def forward(method, path, data, headers, to_all=False):
    """A fire-and-forget request from a worker to whichever pool routes it:
    to one of its workers, or to every one (`to_all`)."""
    return (FORWARD, method, path, data, headers, to_all)
