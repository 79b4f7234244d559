"""Worker processes: the @api registry, ApiHandler and the Worker loop.

A worker owns no client socket. It reads requests from its channel, runs the
matching handler and writes the answer back; heartbeats, log records and
stream frames go the same way. Its loop waits on one selector holding the
channel and any descriptors the application registered, and wakes at least
every `heartbeat_interval` to prove it is alive and call `on_idle()`.

Must never: touch a socket of the dispatcher, swallow a handler error
without logging it, or outlive the dispatcher.
"""

import collections
import ctypes
import json
import functools
import os
import resource
import select
import selectors
import signal
import stat
import sys
import threading
import time

from . import framing, messages, stackdump
from .channel import Channel, ChannelClosed
from .descriptors import DescriptorWatch, WatchesDescriptors
from .log import (LOG_WARNING, DetailedLogger, Logger, install_forwarding,
                  printable, resolve_log_name, write_stderr)
from .output_capture import redirect_output
from .primary import PrimaryWorker
from .proctitle import set_title
from .request import (
    DEFERRED, RejectRequest, Request, add_cookies, encode_body, media_type,
    normalize_headers, split_result)
from .routing import MethodNotAllowed, RouteNotFound, Router, check_methods
from .upgrade import ENV_READY_FD
from .websocket import WebSocketWorker

# Named exit codes, so the dispatcher can tell why a worker ended.
EXIT_OK = 0
EXIT_SETUP_FAILED = 3       # the worker class or setup() raised
EXIT_PARENT_GONE = 4        # the dispatcher disappeared
EXIT_APP_ERROR = 5          # the application cannot run in a worker at all
# what EXIT_APP_ERROR means, said by the dispatcher (once, not per worker)
APP_ERROR_MESSAGE = (
    'a worker process imported the main module and it called '
    "Dispatcher.run(): start the dispatcher under `if __name__ == "
    "'__main__':` so that workers (started with spawn) can import the "
    'module without running it')

# signal whose arrival makes a worker log every thread's stack (sent by the
# dispatcher on SIGCONT, and before a stuck worker is killed, so the log
# shows where it hung)
TRACEBACK_SIGNAL = stackdump.DUMP_SIGNAL

# Signals a worker handles: SIGTERM stops it gracefully (it finishes what it
# holds, runs teardown() and exits 0), SIGQUIT at once (teardown() still
# runs), SIGCONT logs its stacks; SIGINT, SIGHUP and SIGUSR1 are the
# dispatcher's business (ignored here).
GRACEFUL_STOP_SIGNAL = signal.SIGTERM
IMMEDIATE_STOP_SIGNAL = signal.SIGQUIT

_ERROR_BODY = b'{"error": "Internal Server Error"}'
_ERROR_DATA = {'error': 'Internal Server Error'}

# While a handler runs, the channel is checked this often for requests the
# dispatcher takes back (to give them to an idle sibling).
REVOKE_POLL = 0.01
# longest a log call waits for the channel before writing to stderr instead
LOG_SEND_WAIT = 5.0


def api(pattern, *methods):
    """Route requests matching `pattern` (and `methods`, all if none) here.

    Use on methods of a Worker or an ApiHandler; in a handler the pattern is
    appended to the handler's PATTERN. Stack it to give one method several
    routes. A misspelt method (`'GTE'`) raises ValueError here, at import.
    """
    methods = check_methods(pattern, methods)

    def decorate(func):
        func._uhttp_api = getattr(func, '_uhttp_api', ()) + ((pattern, methods),)
        return func
    return decorate


class ApiHandler:
    """A group of @api routes under a common URL prefix, `PATTERN`.

    Instances live in the worker process; `self.worker` is the Worker.
    Subclasses inherit their parent's routes under their own PATTERN.
    """

    PATTERN = ''

    def __init__(self, worker):
        self.worker = worker


def _api_methods(cls):
    """(attribute name, pattern, methods) of @api methods, base classes first."""
    found = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            specs = getattr(attr, '_uhttp_api', None)
            if specs:
                found[name] = specs
            elif name in found:
                del found[name]  # overridden without @api: no longer a route
    for name, specs in found.items():
        for pattern, methods in specs:
            yield name, pattern, methods


def collect_routes(worker_class):
    """Every route of a Worker class: (pattern, methods, handler class, name).

    The handler class is None for @api methods of the worker itself. Used to
    validate routes in the dispatcher and to bind them in the worker.
    """
    routes = []
    for name, pattern, methods in _api_methods(worker_class):
        routes.append((pattern, methods, None, name))
    for handler_class in worker_class.HANDLERS:
        if not (isinstance(handler_class, type)
                and issubclass(handler_class, ApiHandler)):
            raise TypeError(
                f'{worker_class.__name__}.HANDLERS must hold ApiHandler '
                f'subclasses, not {handler_class!r}')
        for name, pattern, methods in _api_methods(handler_class):
            routes.append(
                (handler_class.PATTERN + pattern, methods, handler_class, name))
    return routes


def build_router(worker_class, bind=None):
    """Compile the routes of a worker class. Each target is (callable,
    pattern); `bind(handler_class, name)` returns the callable (the method
    name stands in when bind is None)."""
    router = Router()
    for pattern, methods, handler_class, name in collect_routes(worker_class):
        target = bind(handler_class, name) if bind else name
        router.add(pattern, methods, (target, pattern))
    return router


class Worker(WatchesDescriptors, PrimaryWorker, WebSocketWorker):
    """Base class of an application's worker; runs in its own process.

    Override `setup()` to open what cannot cross a fork (database
    connections, models), and define @api methods here or in `HANDLERS`.
    Extra keyword arguments given to the WorkerPool are in `self.kwargs`.
    `LOG_NAME` is the template of `self.log.name`, filled with `{cls}`,
    `{worker_id}`, `{pool_name}` and `{pid}` as the loop starts.

    A worker also has `self.worker_id` (its index in the pool),
    `self.pool_name`, `self.log` (its Logger; records are written by the
    dispatcher) and `self.services` (the dispatcher's helper services by
    name: `self.services['name'].client()`).
    """

    HANDLERS = []
    LOG_NAME = '{pool_name}[{worker_id}]'

    def __init__(self, worker_id=0, pool_name=None, log_level=LOG_WARNING,
                 heartbeat_interval=1.0, services=(), **kwargs):
        self.worker_id = worker_id
        self.pool_name = pool_name or type(self).__name__
        self.kwargs = kwargs
        self.heartbeat_interval = heartbeat_interval
        self.log = DetailedLogger(
            f'{self.pool_name}[{worker_id}]', log_level, self._emit_log)
        self._channel = None
        self._selector = None
        self._accepting = True
        self._stopping = False
        self._stop_announced = False
        self._signal_pipe = None
        self._exit_code = None
        self._current = None
        self._inbox = collections.deque()   # messages read, not yet handled
        self._fresh = False     # the inbox was filled by the latest read
        # The channel is read by the loop and, while a handler runs, by the
        # revocation watcher; writes come from both: one lock each way.
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._busy = threading.Event()  # a handler runs: watch the channel
        self._open = {}
        self._handled = 0
        self._descriptors = DescriptorWatch(self._descriptor_failed)
        self._next_beat = 0.0
        self._parent_pid = os.getppid()
        self._handlers = {}
        self._router = build_router(type(self), self._bind_route)
        self._service_states = {}
        self.services = {}
        for service in services:
            service.state_getter = functools.partial(
                self._service_states.get, service.name)
            self.services[service.name] = service

    # -- hooks for applications ---------------------------------------------

    def after_fork(self):
        """Called once in the new worker process (forked or spawned),
        before setup(): e.g. to reseed a random generator or reopen what a
        fork must not share. An exception here is logged; setup() runs."""

    def setup(self):
        """Called once in the worker process before it takes requests."""

    def teardown(self):
        """Called once in the worker process when its loop ends, whatever
        ended it (graceful stop or SIGTERM, recycling, rolling restart,
        SIGQUIT, the dispatcher gone; never after SIGKILL, nor when setup()
        failed). Close what
        setup() opened; an exception here is logged with its traceback."""

    def on_config(self, config):
        """Called with each configuration sent by `pool.send_config()`."""

    def on_idle(self):
        """Called every `heartbeat_interval` seconds from the worker loop."""

    def on_disconnect(self, request_id):
        """A deferred or streaming request ended without this worker
        answering it (client left, timeout, shutdown)."""

    def do_check(self, request):
        """Validate a request before routing: return (data, status) or raise
        RejectRequest to refuse it, None to go on."""
        return None

    def on_request_error(self, request, err):
        """A handler raised `err`: log it with its traceback, answer 500
        with the exception's message (as uhttp-workers 1.x did: the
        traceback and the exception's type stay in the log). Override to
        answer otherwise, e.g. to keep messages private."""
        self.log.error(
            '%s %s (request %s) failed: %r', request.method,
            printable(request.path), request.request_id, err, exc_info=err)
        return {'error': str(err) or 'Internal Server Error'}, 500

    # -- tools for applications ---------------------------------------------

    def keep_alive(self, request_id=None):
        """Reset the timeout of a request (default: every request this worker
        holds) and the stuck-worker clock."""
        if request_id is not None:
            ids = (request_id,)
        else:
            ids = list(self._open)
            if self._current is not None:
                ids.append(self._current)
        self._send(messages.keep_alive(ids))

    def pause(self):
        """Stop taking new requests; control messages, registered fds and
        on_idle() go on. Requests wait for the pool's other workers."""
        if self._accepting:
            self._accepting = False
            self._send(messages.accepting(False))

    def resume(self):
        """Take new requests again after pause()."""
        if not self._accepting:
            self._accepting = True
            self._send(messages.accepting(True))

    def forward(self, path, data=None, method='POST', headers=None):
        """Send a fire-and-forget request to whichever pool routes `path`
        (one of its workers runs it; nobody gets the answer)."""
        self._send(messages.forward(
            method.upper(), path, data, normalize_headers(headers)))

    def broadcast(self, path, data=None, method='POST', headers=None):
        """Run a fire-and-forget request on every live worker of the pool
        that routes `path` (this worker included, when it is that pool):
        e.g. to fan an event out to the streams each worker holds."""
        self._send(messages.forward(
            method.upper(), path, data, normalize_headers(headers), True))

    # -- handling a request ---------------------------------------------------

    def handle_request(self, request):
        """Run the whole worker-side pipeline for one request.

        do_check → route → handler, with errors turned into responses.
        Returns the handler's result (data, (data, status[, headers]), a
        Response or DEFERRED). Usable directly in unit tests of an application.
        """
        try:
            rejected = self.do_check(request)
            if rejected is not None:
                return rejected
            (target, request._route), request.path_params = \
                self._route(request.method, request.path)
            return target(request)
        except RejectRequest as err:
            return err.data, err.status
        except RouteNotFound:
            return {'error': 'Not Found'}, 404
        except MethodNotAllowed as err:
            return ({'error': 'Method Not Allowed'}, 405,
                    {'allow': ', '.join(err.allowed)})
        except Exception as err:  # pylint: disable=broad-except
            return self._handler_failed(request, err)

    def _route(self, method, path):
        try:
            return self._router.match(method, path)
        except MethodNotAllowed:
            if method != 'HEAD':
                raise
        # HEAD is GET without the body (RFC 9110 §9.3.2); the framing
        # keeps the length and drops the body
        return self._router.match('GET', path)

    def _handler_failed(self, request, err):
        try:
            return self.on_request_error(request, err)
        except Exception:  # pylint: disable=broad-except
            self.log.exception('on_request_error() raised')
            return {'error': 'Internal Server Error'}, 500

    def _on_request(self, message):
        (_, request_id, method, path, query, headers, data, remote, to_all,
         keep_alive, context) = message
        if self._stopping or not (self._accepting or to_all):
            if self._stopping:
                self._announce_stop()  # before the request goes back
            self._send(messages.returned(request_id))
            return
        self._flush_held()  # earlier answers go out before this handler runs
        content_type = media_type(headers) or ''
        if data.__class__ is bytes and remote is not None \
                and content_type == 'application/json':
            # a client's JSON body: decoded here, not in the dispatcher
            try:
                data = json.loads(data)
            except (ValueError, RuntimeError):  # (RuntimeError: too deep)
                self._hold(messages.response(
                    request_id, 400, _invalid_json(keep_alive), keep_alive))
                return
        request = Request(
            request_id if remote is not None else -1, method, path,
            query=query, data=data, headers=headers,
            content_type=content_type, remote_address=remote,
            context=context)
        request._channel_id = request_id
        request._worker = self
        request._keep_alive = keep_alive
        self._current = request_id
        if not self._busy.is_set():
            self._busy.set()
        try:
            result = self.handle_request(request)
        finally:
            with self._read_lock:  # the watcher stops filling the inbox
                self._current = None
        self._handled += 1
        self._finish(request, result)

    def _finish(self, request, result):
        if request._state == 'new':
            if result is DEFERRED:
                request._state = 'deferred'
                self._open[request._channel_id] = request
                self._send(messages.deferred(request._channel_id))
            else:
                self._send_response(request, *self._split(request, result))
        elif result is not None and result is not DEFERRED:
            self.log.debug(
                'request %s: return value ignored, it was already answered',
                request._channel_id)

    def _split(self, request, result):
        """(data, status, headers, cookies) of a handler's return value; a
        logged 500 for one that cannot be an answer."""
        try:
            return split_result(result)
        except TypeError as err:
            self.log.error('request %s: cannot encode the response to %s %s:'
                           ' %s', request.request_id, request.method,
                           printable(request.path), err)
            return _ERROR_DATA, 500, None, None

    # Answers and stream frames are held (so that an event fanned out to N
    # streams is one write) unless they belong to the request whose handler
    # is running: a handler streaming in a loop would otherwise keep its
    # whole stream in this process and its client would see nothing until
    # it returned. Those go at once, each write blocking while the
    # dispatcher is behind, which paces the handler.

    def _send_response(self, request, data, status, headers, cookies=None):
        # The complete answer is built here, so that the dispatcher (the one
        # serial process of the service) only writes bytes.
        keep_alive = request._keep_alive
        try:
            headers = {str(key).lower(): value
                       for key, value in headers.items()} if headers else {}
            if cookies:
                add_cookies(headers, cookies)
            body = encode_body(data, headers)
            wire, keep_alive = framing.frame_response(
                status, headers, body, keep_alive=keep_alive,
                head_only=request.method == 'HEAD')
        except Exception as err:  # pylint: disable=broad-except
            self.log.error(
                'request %s: cannot encode the response to %s %s: %s',
                request._channel_id, request.method, printable(request.path),
                err, exc_info=err)
            status = 500
            wire = framing.encode_response(
                500, {'content-type': 'application/json'}, _ERROR_BODY,
                keep_alive=keep_alive, head_only=request.method == 'HEAD')
        request._state = 'answered'
        self._open.pop(request._channel_id, None)
        self._hold(messages.response(
            request._channel_id, status, wire, keep_alive, request._route),
            now=request._channel_id == self._current)
        return True

    def _start_stream(self, request, headers, cookies):
        request._state = 'streaming'
        self._open[request._channel_id] = request
        cookies = {str(k): str(v) for k, v in cookies.items()} if cookies \
            else None
        self._hold(messages.stream_start(
            request._channel_id, 200, headers, cookies),
            now=request._channel_id == self._current)
        return True

    def _send_stream(self, request, body):
        self._hold(messages.stream_data(request._channel_id, body),
                   now=request._channel_id == self._current)
        return True

    def _end_stream(self, request):
        request._state = 'ended'
        self._open.pop(request._channel_id, None)
        self._hold(messages.stream_end(request._channel_id),
                   now=request._channel_id == self._current)
        return True

    # -- the loop -------------------------------------------------------------

    def _bind_route(self, handler_class, name):
        if handler_class is None:
            return getattr(self, name)
        handler = self._handlers.get(handler_class)
        if handler is None:
            handler = self._handlers[handler_class] = handler_class(self)
        return getattr(handler, name)

    def _send(self, message):
        channel = self._channel
        if channel is None or channel.closed:
            return
        try:
            with self._write_lock:
                channel.send(message)
        except ChannelClosed:
            self._exit_code = EXIT_PARENT_GONE

    def _hold(self, message, now=False):
        # Answers and stream frames wait for the end of this loop turn, the
        # next immediate send or the channel's HOLD_LIMIT, whichever comes
        # first (`now`: written at once, after those held before it).
        channel = self._channel
        if channel is None or channel.closed:
            return
        try:
            with self._write_lock:
                if now:
                    channel.send(message)
                else:
                    channel.hold(message)
        except ChannelClosed:
            self._exit_code = EXIT_PARENT_GONE

    def _flush_held(self):
        channel = self._channel
        if channel is None or channel.closed:
            return
        try:
            with self._write_lock:
                channel.flush_held()
        except ChannelClosed:
            self._exit_code = EXIT_PARENT_GONE

    def _emit_log(self, name, level, message, details=None):
        """Send one log record to the dispatcher (self.log's records and,
        once the loop runs, those of every stdlib logger of the process).

        Called from any thread, handlers included: it waits at most
        LOG_SEND_WAIT seconds for the channel (another thread's write, or a
        dispatcher that does not read it, e.g. a stream it holds back), then
        writes the record to stderr instead of blocking its caller."""
        channel = self._channel
        if channel is None or channel.closed:
            write_stderr(name, level, message)
            return
        if not self._write_lock.acquire(timeout=LOG_SEND_WAIT):
            write_stderr(name, level, f'{message} (log channel busy)')
            return
        try:
            if not _writable(channel.sock, LOG_SEND_WAIT):
                write_stderr(name, level, f'{message} (log channel full)')
                return
            channel.send(messages.log(name, level, message, details))
        except ChannelClosed:
            self._exit_code = EXIT_PARENT_GONE
        finally:
            self._write_lock.release()

    def _on_channel(self, _fileobj, _mask):
        self._receive()
        self._fresh = True
        self._handle_inbox()

    def _receive(self):
        """Read what the channel holds into the inbox; a CANCEL takes its
        request out of the inbox if it has not started (answered RETURNED):
        its client left, or the dispatcher gives it to an idle sibling."""
        with self._read_lock:
            self._receive_locked()
        if self._channel.closed:
            self._exit_code = EXIT_PARENT_GONE

    def _receive_locked(self):
        for message in self._channel.receive():
            kind = message[0]
            if kind == messages.CANCEL:
                self._cancel(message[1])
                continue
            if kind == messages.DISCONNECT:
                # a handler streaming in a loop sees its sends fail at once
                # (on_disconnect() runs from the loop, in order)
                request = self._open.get(message[1])
                if request is not None:
                    request._state = 'ended'
            self._inbox.append(message)

    def _cancel(self, request_id):
        """(Under the read lock.) Hand back a request not yet started."""
        for index, message in enumerate(self._inbox):
            if message[0] in messages.STARTS_WORK \
                    and message[1] == request_id:
                del self._inbox[index]
                self.log.debug('request %s handed back unstarted',
                               request_id)
                self._send(messages.returned(request_id))
                return

    def _handle_inbox(self):
        inbox = self._inbox
        while inbox and self._exit_code is None:
            if not self._fresh and inbox[0][0] == messages.REQUEST:
                self._receive()  # it may have been taken back meanwhile
            self._fresh = False
            with self._read_lock:
                if not inbox:
                    return
                message = inbox.popleft()
            self._on_message(message)

    def _watch_revocations(self):
        """Thread: while a handler runs, keep reading the channel so that a
        request waiting behind it can be handed back to the dispatcher (the
        loop reads it again once the handler returns)."""
        # signals stay the main thread's business, as in a worker without
        # this thread (a handler that blocks SIGTERM still blocks it)
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        busy = self._busy
        watched = None
        while True:
            busy.wait()
            time.sleep(REVOKE_POLL)
            with self._read_lock:
                if self._channel.closed:
                    return
                if self._current is None:
                    busy.clear()
                elif self._current != watched:
                    watched = self._current  # read only if it runs on
                else:
                    self._receive_locked()

    def _on_message(self, message):
        kind = message[0]
        if kind == messages.REQUEST:
            self._on_request(message)
        elif kind == messages.CONFIG:
            self._call_hook(self.on_config, message[1])
        elif kind == messages.DISCONNECT:
            request = self._open.pop(message[1], None)
            if request is not None:
                request._state = 'ended'
            self._call_hook(self.on_disconnect, message[1])
        elif kind == messages.STOP:
            self._stopping = True
        elif kind == messages.SERVICES:
            self._service_states.clear()
            self._service_states.update(message[1])
        elif kind in messages.WS_DISPATCHER_KINDS:
            self._ws_message(message)
        else:
            self.log.error('unknown message kind %r', kind)

    def _call_hook(self, hook, *args):
        try:
            hook(*args)
        except Exception:  # pylint: disable=broad-except
            self.log.exception('%s() raised', hook.__name__)

    def _descriptor_failed(self, fd, err):
        self.log.error('callback for fd %d raised %r', fd, err, exc_info=err)

    def _beat(self, now):
        self._next_beat = now + self.heartbeat_interval
        if os.getppid() != self._parent_pid:
            self._exit_code = EXIT_PARENT_GONE
            return
        self._send(messages.heartbeat(self._current, self._handled))
        self._call_hook(self.on_idle)

    def _should_exit(self):
        if self._exit_code is not None:
            return True
        if _SIGNALS.stop_requested:
            self._announce_stop()
        if self._stopping and not self._open:
            self._hand_back_unread()
            self._exit_code = EXIT_OK
            return True
        return False

    def _run(self, channel):
        """The worker loop; returns the process exit code."""
        self._channel = channel
        self.log.name = resolve_log_name(
            self.log, self.LOG_NAME, self.log.name, cls=type(self).__name__,
            worker_id=self.worker_id, pool_name=self.pool_name,
            pid=os.getpid())
        # stdlib logging of every module of this process goes to the
        # dispatcher, at the level of self.log
        install_forwarding(self._emit_log, self.log.level)
        self._selector = selectors.DefaultSelector()
        self._selector.register(channel.sock, selectors.EVENT_READ,
                                self._on_channel)
        self._descriptors.attach(self._selector)
        self._watch_signals()
        self._call_hook(self.after_fork)
        try:
            self.setup()
            self._primary_at_start()    # PRIMARY_LOCK: join the election
        except Exception:  # pylint: disable=broad-except
            self.log.critical('setup() failed', exc_info=True)
            return EXIT_SETUP_FAILED
        self._send(messages.ready(os.getpid()))
        threading.Thread(target=self._watch_revocations, daemon=True,
                         name='revocations').start()
        try:
            self._loop()
        finally:
            # also on SystemExit from SIGQUIT (sent by the kernel when the
            # dispatcher dies) and on an error of the loop itself
            self._teardown()
        return self._exit_code

    def _watch_signals(self):
        """Let a signal wake the loop (a handler only sets a flag)."""
        _SIGNALS.worker = self
        if _SIGNALS.stop_requested:
            self._stopping = True  # SIGTERM came while the worker was built
        # a pipe, not a socket: the worker holds no socket but its channel
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        try:
            signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        except ValueError:
            os.close(reader)
            os.close(writer)
            return  # not the main thread (a test running _run() directly)
        self._signal_pipe = (reader, writer)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_signal_wake)

    def _on_signal_wake(self, _fileobj, _mask):
        try:
            os.read(self._signal_pipe[0], 64)
        except BlockingIOError:
            pass

    def _hand_back_unread(self):
        """Before a graceful exit: requests that reached the channel since
        the last read go back to the dispatcher unstarted (so a sibling
        runs them; the dispatcher would count them as lost otherwise)."""
        if self._channel is None or self._channel.closed:
            return
        self._announce_stop()
        self._receive()
        with self._read_lock:
            unread, self._inbox = self._inbox, collections.deque()
        for message in unread:
            if message[0] in messages.STARTS_WORK:
                self._send(messages.returned(message[1]))

    def _announce_stop(self):
        """After SIGTERM: tell the dispatcher to send nothing more (a
        request already on its way is handed back, unstarted)."""
        if not self._stop_announced:
            self._stop_announced = True
            self._send(messages.accepting(False))

    def _loop(self):
        self._next_beat = time.monotonic() + self.heartbeat_interval
        while not self._should_exit():
            timeout = max(0.0, self._next_beat - time.monotonic())
            for key, mask in self._selector.select(timeout):
                key.data(key.fd, mask)
            now = time.monotonic()
            if now >= self._next_beat:
                self._beat(now)
            self._flush_held()

    def _teardown(self):
        self._flush_held()  # answers given before the end go out first
        try:
            self.teardown()
        except Exception:  # pylint: disable=broad-except
            self.log.exception('teardown() failed')
        self._primary_at_exit()     # the primary's duties ended above

    def _dump_stacks(self):
        """(From the SIGCONT handler.) Log every thread's stack; straight
        to stderr when the channel is busy in the interrupted code."""
        text = stackdump.format_stacks(f'stacks of worker {self.log.name}')
        channel = self._channel
        if channel is not None and not channel.closed and \
                self._write_lock.acquire(blocking=False):
            try:
                channel.send(messages.log(self.log.name, LOG_WARNING, text))
                return
            except ChannelClosed:
                pass
            finally:
                self._write_lock.release()
        stackdump.write_to_stderr(text)


def _writable(sock, timeout):
    """Whether the channel socket takes bytes within `timeout` seconds
    (writable means half its large buffer is free: a log frame fits)."""
    try:
        return bool(select.select((), (sock,), (), timeout)[1])
    except (OSError, ValueError):
        return True   # closed: the send reports it


def _invalid_json(keep_alive):
    return framing.encode_response(
        400, {'content-type': 'application/json'},
        b'{"error": "Invalid JSON body"}', keep_alive=keep_alive)


def _die_with_parent():
    # Linux only: have the kernel send SIGQUIT (stop at once: the answer has
    # nobody to go to) when the dispatcher dies, so a worker stuck in a
    # handler goes too. Elsewhere the loop notices instead.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, IMMEDIATE_STOP_SIGNAL)
    except (OSError, AttributeError):
        pass


class _SignalState:
    """What the worker's signal handlers saw (they only set flags)."""
    worker = None
    stop_requested = False


_SIGNALS = _SignalState()


def _graceful_stop(_signum, _frame):
    # the running handler goes on; the loop then hands back what it has not
    # started, waits for its deferred and streaming requests, and exits 0
    _SIGNALS.stop_requested = True
    if _SIGNALS.worker is not None:
        _SIGNALS.worker._stopping = True  # pylint: disable=protected-access


def _terminate(signum, _frame):
    # unwinds the running handler; teardown() runs in _run()'s finally
    worker = _SIGNALS.worker
    if worker is not None:
        if worker._exit_code is not None:  # pylint: disable=protected-access
            return  # the loop has ended: let teardown() run to its end
        worker._exit_code = 128 + signum  # pylint: disable=protected-access
    raise SystemExit(128 + signum)


def _dump_stacks(_signum, _frame):
    worker = _SIGNALS.worker
    if worker is not None:
        worker._dump_stacks()  # pylint: disable=protected-access
    else:
        stackdump.write_to_stderr(stackdump.format_stacks())


def _prepare_signals():
    # Ctrl-C reaches the whole process group; the dispatcher decides what
    # happens to workers, so they ignore it (and a terminal's hangup).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # the dispatcher's log-reopening signal, if sent to the whole group:
    # a worker has no log file of its own (its records go to the dispatcher)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(GRACEFUL_STOP_SIGNAL, _graceful_stop)
    signal.signal(IMMEDIATE_STOP_SIGNAL, _terminate)
    signal.signal(TRACEBACK_SIGNAL, _dump_stacks)


def _isolate_from_dispatcher(keep):
    """In a worker forked from the dispatcher: let go of its descriptors.

    A forked worker inherits every client socket, the listening socket and
    the selector of the dispatcher; holding them would keep connections open
    that the dispatcher closed. Each one is replaced by /dev/null rather than
    closed, so that the number stays taken: an inherited Python object that
    closes "its" descriptor later cannot close one the worker opened since.
    Pipes stay: one of them tells the dispatcher that this process exited.
    """
    descriptors = None
    for listing in ('/proc/self/fd', '/dev/fd'):
        try:
            descriptors = [int(name) for name in os.listdir(listing)]
            break
        except OSError:
            continue
    if descriptors is None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        descriptors = range(3, min(limit, 1 << 16))
    null = os.open(os.devnull, os.O_RDWR)
    # the pipe on which a new dispatcher announces it is ready is its own
    ready = os.environ.get(ENV_READY_FD, '')
    foreign = {int(ready)} if ready.isdigit() else set()
    for fd in descriptors:
        if fd <= 2 or fd == null or fd in keep:
            continue
        if fd in foreign:
            os.dup2(null, fd, inheritable=False)
            continue
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            os.dup2(null, fd, inheritable=False)
        except OSError:
            continue  # closed meanwhile (the fd listing itself)
    os.close(null)


def worker_main(worker_class, sock, options, kwargs):
    """Entry point of a worker process (target of multiprocessing)."""
    options = dict(options)
    output = options.pop('output', None)
    if output is not None:      # first: even setup() prints reach the log
        redirect_output(output)
    memory_limit = options.pop('memory_limit', None)
    dispatcher_port = options.pop('dispatcher_port', None)
    if options.pop('forked', False):
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                       signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT):
            signal.signal(signum, signal.SIG_DFL)
        _isolate_from_dispatcher({sock.fileno()})
    _prepare_signals()
    _die_with_parent()
    channel = Channel(sock)
    if memory_limit:
        # worker_memory_limit_mb: set before the worker is built and runs
        # setup(), soft = hard so the application cannot raise it again
        try:
            resource.setrlimit(resource.RLIMIT_AS,
                               (memory_limit, memory_limit))
        except (ValueError, OSError) as err:
            _send_quietly(channel, options.get('pool_name', '?'), LOG_WARNING,
                          f'RLIMIT_AS of {memory_limit} bytes refused: {err}')
    try:
        worker = worker_class(**options, **kwargs)
    except Exception:  # pylint: disable=broad-except
        logger = Logger(options.get('pool_name', '?'), emit=lambda name, level,
                        message: _send_quietly(channel, name, level, message))
        logger.critical('%s() failed', worker_class.__name__, exc_info=True)
        sys.exit(EXIT_SETUP_FAILED)
    worker.dispatcher_port = dispatcher_port    # names the primary's lock
    set_title(f'worker {worker.pool_name}[{worker.worker_id}]')
    code = worker._run(channel)  # pylint: disable=protected-access
    channel.close()
    sys.exit(code)


def _send_quietly(channel, name, level, message):
    try:
        channel.send(messages.log(name, level, message))
    except ChannelClosed:
        write_stderr(name, level, message)
