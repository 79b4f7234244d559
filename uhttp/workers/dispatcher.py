"""The Dispatcher: one process, one selector loop, every client socket.

It accepts connections (uhttp-server on a selector it owns), answers static
files and @sync routes itself, checks authentication, and hands everything
else to worker pools over their channels. Worker channels, worker exit
sentinels and a signal wake-up socket sit in the same selector as the client
sockets, so one `select()` sees all there is to do.

The pending table maps request ids to waiting clients. Every entry ends in
exactly one answer: the worker's, 504 on timeout, 503 when the pool is
degraded or has no live worker or the service is shutting down, 502 when
its worker died.

Must never: block (no sleep, no blocking read or write, no waiting on a
worker), let a loaded request be parsed twice, or leave a client without an
answer.
"""

from __future__ import annotations

import inspect
import os
import pickle
import resource
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from uhttp import server as _server

from . import framing, host_status, log_files, messages
from .admission import (
    HOLD_ACCEPT_FAILED, HOLD_CLOSED, HOLD_PREDECESSOR, Admission,
    ListenerGate, resume)
from .connection import Connection, Server
from .daemon import Daemon
from .pending import (ASSIGNED, DEFERRED, QUEUED, STREAMING, Pending,
                      PendingTable, State)
from .descriptors import DescriptorWatch, WatchesDescriptors
from .lifecycle import Lifecycle, refuse_to_run_in_worker
from . import access_log as _access_log
from .log import (DISPATCHER_LOGGER, LOG_INFO, DetailedLogger, LogRouter,
                  printable, resolve_log_name)
from .host_status import HostReport
from .metrics import Metrics, Snapshot
from .options import check_keywords, server_keywords
from .output_capture import OutputCapture
from .privileges import PrivilegeError, Privileges
from .owned_services import OwnedServices
from .pidfile import PidFile
from .proctitle import set_title
from .remote_pool import RemotePool, is_remote
from .request import RejectRequest, encode_body
from .routing import MethodNotAllowed, ParamValue, Router
from .static import StaticBody, StaticFiles, StaticMount, StaticResult
from .static_cache import StaticCache
from .systemd import Notifier, listen_sockets
from .unixsocket import PREFIX as UNIX_PREFIX, UnixListener, unix_path
from . import upgrade
from .worker import collect_routes
from .ws_dispatch import WebSocketDispatch
from .worker_events import (
    PENDING_COMPLETED, PENDING_DISCONNECTED, PENDING_SHUTDOWN,
    PENDING_TIMEOUT, PENDING_WORKER_DIED,
    WorkerEvents)

if TYPE_CHECKING:
    import logging
    import ssl

    from .access_log import AccessLog
    from .jobs import Job
    from .owned_services import JobLock
    from .output_capture import WorkerOutput
    from .pool import WorkerPool
    from .request import Response
    from .service import Service
    from .worker import Worker
    from .worker_events import Victim
    from .worker_handle import WorkerHandle

# an @sync route's handler, bound: (client, path_params)
SyncHandler = Callable[[Connection, dict[str, ParamValue]], None]
_F = TypeVar('_F', bound=Callable[..., Any])
_D = TypeVar('_D', bound='Dispatcher')

SELECT_TIMEOUT = 1.0
SWEEP_INTERVAL = 1.0    # seconds between checks for vanished connections
ACCEPT_PAUSE = 0.1      # seconds without accepting after accept() failed
HOUSEKEEPING_INTERVAL = 0.1

_JSON = {'content-type': 'application/json'}
_CLOSE = {'content-type': 'application/json', 'connection': 'close'}
# every 503 says when to come back (RFC 9110 §10.2.3)
RETRY_AFTER = '1'
_RETRY = {'content-type': 'application/json', 'retry-after': RETRY_AFTER}
_CLOSE_RETRY = dict(_CLOSE, **{'retry-after': RETRY_AFTER})


class JobsStatus(TypedDict):
    """The job process in Dispatcher.status()."""

    pid: int | None
    alive: bool


class _OneDispatcherStatus(TypedDict):
    """The keys of Dispatcher.status() in every case."""

    state: str
    pending: int
    streams: int
    parked: int
    connections: int
    buffered_bytes: int
    # WebSocketDispatch.ws_status(): 'open', 'groups', 'paused',
    # 'buffered_bytes', and the totals 'opened', 'messages_in',
    # 'messages_out'
    websockets: dict[str, int]
    # WorkerPool.status() of each pool
    pools: list[Any]
    services: list[messages.ServiceStatus]
    jobs: JobsStatus | None


class DispatcherStatus(_OneDispatcherStatus, total=False):
    """What Dispatcher.status() answers, for monitoring. With several
    dispatchers per host the counts are the host's (see host_status), and
    `dispatchers` lists each dispatcher's own."""

    dispatchers: list[dict[str, Any]]


def sync(pattern: str, *methods: str) -> Callable[[_F], _F]:
    """Serve `pattern` from a Dispatcher method `(self, client, path_params)`,
    in the dispatcher process, for `methods` (every method when none are
    given). The handler answers with `client.respond(data, status=,
    headers=)`. Keep such handlers short: they run inside the loop that
    serves every client."""
    methods = tuple(method.upper() for method in methods)

    def decorate(func: _F) -> _F:
        # (setattr: an attribute of a function, unknown to its type)
        setattr(func, '_uhttp_sync', getattr(func, '_uhttp_sync', ()) + (
            (pattern, methods),))
        return func
    return decorate


def _listen_error(address: str, port: int, err: OSError) -> str:
    """`cannot listen on 127.0.0.1:8080: address already in use`."""
    reason = err.strerror or str(err)
    return f'cannot listen on {_display_address(address, port)}: ' \
        f'{reason[:1].lower()}{reason[1:]}'


def _display_address(address: str, port: int) -> str:
    """`127.0.0.1:8080`, `[::1]:8080` or `unix:/run/app.sock`."""
    if unix_path(address) is not None:
        return address
    host = f'[{address}]' if ':' in address else address
    return f'{host}:{port}'


def _own_options() -> list[str]:
    """The keyword options of Dispatcher itself (for 'did you mean')."""
    parameters = inspect.signature(Dispatcher.__init__).parameters.values()
    return [p.name for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name != 'self']


def _error_body(status: int, message: str | None) -> bytes:
    return ('{"error": "%s"}' % message).encode('utf-8')


def _raise_open_file_limit() -> int:

    """Use the hard limit of open files: each client costs a descriptor."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ValueError, OSError):
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Dispatcher(Lifecycle, WorkerEvents, OwnedServices,
                 WatchesDescriptors, WebSocketDispatch):
    """The front process: accepts clients, routes requests, supervises pools.

    Subclass it to add @sync routes and hooks (`do_check`, `on_response`,
    `on_idle`, `on_log`, `on_worker_died`, and the lifecycle hooks
    `on_start`, `on_stop`, `before_fork`, `on_worker_recycle`), then call
    `run()`. `LOG_NAME`
    is the template of `self.log.name`, filled with `{cls}` and `{pid}`.
    """

    LOG_NAME = 'dispatcher'

    def __init__(self, port: int = 8080, address: str = '0.0.0.0',
                 pools: Iterable[WorkerPool | RemotePool] | None = None,
                 static_routes: Mapping[str, StaticMount] | None = None,
                 shutdown_timeout: float = 10, max_pending: int = 1000,
                 ssl_context: ssl.SSLContext | None = None, *,
                 log_level: int = LOG_INFO,
                 max_connections: int = 10000,
                 max_content_length: int = 1024 * 1024,
                 keep_alive_timeout: float = 15,
                 keep_alive_max_requests: int = 1000,
                 request_timeout: float = 10, listen_backlog: int = 1024,
                 trusted_proxies: Iterable[str] | None = None,
                 log_file: str | None = None, pid_file: str | None = None,
                 metrics_route: str | None = None,
                 services: Iterable[Service] | None = None,
                 jobs: Iterable[Job] | None = None,
                 job_lock: JobLock | None = None,
                 access_log: bool | str | logging.Logger | None = True,
                 access_log_format: str = 'common',
                 dump_stacks: bool = True,
                 log_rotate_size: int | None = None,
                 log_rotate_age: str | float | None = None,
                 log_rotate_backups: int = log_files.DEFAULT_BACKUPS,
                 capture_output: bool = True,
                 user: str | int | None = None,
                 group: str | int | None = None,
                 umask: int | str | None = None,
                 allow_root: bool = False, daemon: bool = False,
                 daemon_chdir: str = '/',
                 ws_max_message_size: int = 1024 * 1024,
                 ws_send_buffer: int = 1024 * 1024,
                 ws_ping_interval: float | None = 20,
                 ws_pong_timeout: float = 20,
                 ws_idle_timeout: float | None = None,
                 dispatchers: int = 1,
                 **server_options: Any) -> None:
        passed, aliased = server_keywords(
            type(self).__name__, _own_options(), server_options)
        max_connections = aliased.get('max_connections', max_connections)
        listen_backlog = aliased.get('listen_backlog', listen_backlog)
        self.port = port
        self.address = address
        # a RemotePool offers what the dispatcher calls on a pool, with
        # meanings of its own (see remote_pool.py): typed as a WorkerPool
        self._pools = cast('list[WorkerPool]', list(pools or []))
        self._static = StaticCache(StaticFiles(static_routes or {}))
        self._has_static = bool(static_routes)
        self.shutdown_timeout = shutdown_timeout
        self.max_pending = max_pending
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.listen_backlog = listen_backlog
        self._server_options: dict[str, Any] = {
            'max_content_length': max_content_length,
            'keep_alive_timeout': keep_alive_timeout,
            'keep_alive_max_requests': keep_alive_max_requests,
            'request_timeout': request_timeout,
            'file_chunk_size': 64 * 1024,
            **passed,
        }
        self._trusts_proxies = bool(trusted_proxies)
        if trusted_proxies:
            self._server_options['trusted_proxies'] = list(trusted_proxies)
        self.log_file = log_file
        # SIGCONT logs every thread's stack here and in each worker
        self.dump_stacks = dump_stacks
        self._log_output = log_files.log_output(
            log_file, log_rotate_size, log_rotate_age, log_rotate_backups)
        self._pid_file = PidFile(pid_file) if pid_file else None
        self._output = OutputCapture(self._emit_log) if capture_output \
            else None
        self._privileges = Privileges(user, group, umask, allow_root)
        if daemon and (not log_file or log_file == log_files.STDOUT):
            raise ValueError('daemon=True needs log_file= (a path): a '
                             'daemon has no terminal to write its log to')
        self._daemon = Daemon(daemon_chdir) if daemon else None
        if dispatchers < 1:
            raise ValueError(f'dispatchers must be 1 or more, not '
                             f'{dispatchers}')
        # > 1: run() supervises that many dispatcher processes (supervisor)
        self.dispatchers = dispatchers
        # set in each of them: its number, and the socket to serve on
        self._dispatcher_index: int | None = None
        self._given_listener: socket.socket | None = None
        # ... and its side of the supervisor's run directory (host_status)
        self._host: HostReport | None = None
        # asked by the supervisor to hand over to its replacement (SIGUSR2)
        self._retiring = False
        self._supervisor_pid: int | None = None
        self.metrics_route = metrics_route
        self._metrics = Metrics(self) if metrics_route else None
        self._notifier: Notifier | None = None
        self._ready_notified = False
        self._successor = None
        self._former_successors = []
        self._predecessor = None
        self._next_watchdog = None
        # the socket file we bound, if any
        self._unix_listener: UnixListener | None = None
        self._log_router = LogRouter(self._on_log_safely,
                                     hooked=self._overrides('on_log'),
                                     line_sink=self._log_output.line_sink)
        self.log = DetailedLogger('dispatcher', log_level, self._emit_log)
        self.log.name = resolve_log_name(
            self.log, self.LOG_NAME, 'dispatcher', cls=type(self).__name__,
            pid=os.getpid())
        self._access_log: AccessLog | None = _access_log.build(
            access_log, access_log_format, self._log_router,
            self._trusts_proxies)
        self._connection_class: type[Connection] = Connection
        self._sync_router = self._build_sync_router()
        self._pending = PendingTable()
        self._admission = Admission(max_pending, park_limit=listen_backlog)
        # set by _start(); None until then (which only status() and the
        # checks of _close() see: the mechanisms run once it is set)
        self._gate = None  # type: ignore[assignment]
        self._next_request_id = 1
        self._flush_needed: set[WorkerHandle] = set()
        self._pipelined = set()
        self._selector = None  # type: ignore[assignment]
        self._server = None  # type: ignore[assignment]
        self._state = 'new'
        self.exit_status = 0    # non-zero: run() ends with SystemExit
        self._shutdown_started = None
        self._stop_deadline = None
        self._next_housekeeping = 0.0
        self._next_sweep = 0.0
        self._accept_paused_until: float | None = None
        self._next_idle = 0.0
        self._signal_reader = None
        self._signal_writer = None
        self._descriptors = DescriptorWatch(self._descriptor_failed)
        # hooks cost a call per request: made only if overridden
        overrides = self._overrides
        self._has_response_hook = overrides('on_response')
        self._has_check = overrides('do_check')
        self._has_accepted_hook = overrides('on_request_accepted')
        self._has_removed_hook = overrides('on_pending_removed')
        self._has_static_hook = overrides('on_static_served')
        self._has_forward_hook = overrides('on_forward')
        self._died_takes_victims = _accepts_arguments(self.on_worker_died, 5)
        # worker handle -> its failed requests
        self._worker_victims: dict[
            WorkerHandle, list[tuple[int, Victim]]] = {}
        # pool -> handles whose process runs (starting included), so that
        # a request can see in one look whether any worker may ever take it
        self._live_workers: dict[WorkerPool, set[WorkerHandle]] = {}
        self._has_sync_check = overrides('do_check_sync')
        self._init_owned(services, jobs, job_lock)
        self._ws_init(ws_max_message_size, ws_send_buffer, ws_ping_interval,
                      ws_pong_timeout, ws_idle_timeout)
        self._check_pools()

    # -- hooks for applications ---------------------------------------------

    def do_check(self, client: Connection) -> None:
        """Authenticate a request bound for a worker pool (not static, not
        sync). Respond and/or raise RejectRequest to refuse it."""

    def do_check_sync(self, client: Connection) -> None:
        """Authenticate a request for an @sync route, called once a route
        matched and before its handler runs (static files and pool requests
        never come here). Respond and/or raise RejectRequest to refuse it:
        the handler then does not run, and the request is not passed on."""

    def on_response(self, response: Response, pending: Pending) -> None:
        """Called for each worker response to a client, as it is sent.

        `pending.client` is the client connection with its request,
        `pending.pool` the pool that answered. Runs in the loop: keep it
        short (queue follow-up work on a pool instead)."""

    def on_request_accepted(self, request_id: int, client: Connection,
                            pool: WorkerPool) -> Any:
        """Called as a request is handed to `pool`, after do_check().

        For state of the dispatcher's own keyed by `request_id` (cleared in
        on_pending_removed()); it must not refuse (do_check does that). An
        exception is logged. Its return value becomes the worker's
        `Request.context` (None when it raised); it must pickle, else an
        error is logged and the worker sees None."""
        return None

    def on_pending_removed(self, request_id: int, pending: Pending,
                           reason: str) -> None:
        """Called exactly once for each request of a client handed to a
        pool, after its client was answered (or left): `reason` is one of
        the PENDING_* constants. `pending.client` is the connection (it
        may already serve a next request), `pending.pool` the pool. An
        exception is logged."""

    def on_static_served(self, client: Connection, file_path: str | None,
                         status: int) -> None:
        """Called after a static mount answered with the file (its real
        path): 200, or 206 (a byte range), 304 (not modified), 416 (a range
        beyond the file); or 404 from an authoritative mount (the path it
        looked for). For access logs; an exception is logged."""

    def on_forward(self, route: str, data: Any) -> None:
        """A worker forwarded `data` to `route` (Worker.forward()).

        Overriding it replaces the routing of forwards: call
        super().on_forward(route, data) to run it, as a POST, on the pool
        serving `route`, whose answer is dropped. An exception is logged."""
        pool = self._find_pool(route)
        if pool is None:
            self.log.warning('forward to %s: no pool serves this path',
                             printable(route))
            return
        self.submit_internal(pool, 'POST', route, data, {})

    def on_idle(self) -> None:
        """Called from the loop about every SELECT_TIMEOUT seconds."""

    def on_log(self, name: str, level: int, message: str) -> None:
        """Write one log record of the service to stderr or `log_file`.

        Overridden, it receives every record (workers' and access lines
        included, the traceback after the message). Not overridden, records
        go to the stdlib `logging` handlers when the application configured
        some, and only otherwise here."""
        self._log_output.write(name, level, message)

    def on_worker_died(self, pool: WorkerPool, worker_id: int, reason: str,
                       exitcode: int | None,
                       victims: Sequence[tuple[int, Victim]] = ()) -> None:
        """A worker process ended unexpectedly (crash, kill, stuck).

        `victims`: the (request_id, pending) pairs of the requests it was
        running, already answered 502 (`pending.client` still holds the
        request). An override may leave `victims` out (4 arguments)."""

    def on_reload(self) -> Any:
        """Return new configuration for the workers (SIGHUP, reload()), or
        None to keep theirs."""
        return None

    # -- which workers live ---------------------------------------------------

    def worker_started(self, pool: WorkerPool, handle: WorkerHandle) -> None:
        """A worker process was started (the pool calls this)."""
        self._live_workers.setdefault(pool, set()).add(handle)
        super().worker_started(pool, handle)

    def worker_output(self, handle: WorkerHandle) -> WorkerOutput | None:
        """The WorkerOutput capturing the stdout and stderr of the worker
        being started (the pool calls this), or None: it inherits ours."""
        if self._output is None:
            return None
        output: WorkerOutput = self._output.open(handle.name)
        return output

    def worker_reaped(self, handle: WorkerHandle) -> None:
        """A worker's exit status is known (the pool may restart it)."""
        # forgotten first: a restart inside the reaping counts it again
        live = self._live_workers.get(handle.pool)
        if live is not None:
            live.discard(handle)
        # (for as long as WorkerEvents is not annotated)
        super().worker_reaped(  # type: ignore[no-untyped-call, unused-ignore]
            handle)

    # -- public tools ---------------------------------------------------------

    @property
    def url(self) -> str:
        """Where clients reach the service: `http://127.0.0.1:8080`,
        `https://[::1]:8443` or `unix:/run/app.sock`."""
        where = _display_address(self.address, self.port)
        if unix_path(self.address) is not None:
            return where
        return f"{'https' if self.ssl_context else 'http'}://{where}"

    @property
    def pools(self) -> list[WorkerPool]:
        """The worker pools, in routing order."""
        return list(self._pools)

    @property
    def is_running(self) -> bool:
        """True while the dispatcher serves (not starting or shutting down)."""
        return self._state == 'running'

    @property
    def accepts_workers(self) -> bool:
        """True while new worker processes may be started."""
        return self._state in ('new', 'running', 'draining')

    @property
    def pending_count(self) -> int:
        """Requests waiting for an answer from a pool."""
        return len(self._pending)

    @property
    def stream_count(self) -> int:
        """Streaming responses in progress."""
        return self._pending.stream_count

    def status(self) -> DispatcherStatus:
        """Pools, pending requests and connections, for monitoring; with
        several dispatchers per host, those of the whole host."""
        own = self._own_status()
        if self._host is None:
            return own
        merged = host_status.merge_status(own, self._host.index,
                                          self._host.others())
        return cast(DispatcherStatus, merged)

    def _own_status(self) -> DispatcherStatus:
        connections = self._server._waiting_connections \
            if self._server else ()  # pylint: disable=protected-access
        return {
            'state': self._state,
            'pending': len(self._pending),
            'streams': self._pending.stream_count,
            'parked': self._admission.parked_count,
            'connections': len(connections),
            'buffered_bytes': sum(c.send_buffer_size for c in connections),
            'websockets': self.ws_status(),
            'pools': [pool.status() for pool in self._pools],
            'services': self._service_manager.status()
            if self._service_manager else [],
            'jobs': {'pid': self._job_process.pid,
                     'alive': self._job_process.is_alive()}
            if self._job_process else None,
        }

    def restart_workers(self, graceful: bool = True) -> None:
        """Replace every worker of every pool with a fresh process (new code
        from disk). Graceful: one at a time per pool, each new worker ready
        before the old one stops; no request fails."""
        if not self.is_running:
            return
        for pool in self._pools:
            pool.restart_workers(graceful)

    def reload(self) -> None:
        """Ask `on_reload()` for new configuration and send it to every
        worker's `on_config()` (workers started later get it too)."""
        try:
            config = self.on_reload()
        except Exception:  # pylint: disable=broad-except
            self.log.exception('on_reload() raised: configuration unchanged')
            return
        if config is None:
            return
        for pool in self._pools:
            pool.send_config(config)
        self.log.info('configuration reloaded')

    def stop(self, graceful: bool = True) -> None:
        """Begin shutdown, as SIGTERM (graceful) or SIGQUIT would."""
        if graceful:
            self._begin_drain()
        else:
            self._stop_now()

    def _find_pool(self, path: str) -> WorkerPool | None:
        """The pool that serves `path` (prefix match, then fallback)."""
        fallback = None
        for pool in self._pools:
            if pool.matcher.is_fallback:
                if fallback is None:
                    fallback = pool
            elif pool.matcher.matches(path):
                return pool
        return fallback

    find_pool = _find_pool

    def _overrides(self, name: str) -> bool:
        """True when the class of this dispatcher overrides hook `name`."""
        return getattr(type(self), name) is not getattr(Dispatcher, name)

    def _call_hook(self, name: str, *args: object) -> Any:
        """Call hook `name`; an exception is logged, never raised."""
        try:
            return getattr(self, name)(*args)
        except Exception:  # pylint: disable=broad-except
            self.log.exception('%s() raised', name)
            return None

    def _removed(self, pending: Pending, reason: str) -> None:
        """Tell on_pending_removed() (if overridden) that a client's request
        left the pending table."""
        if self._has_removed_hook and pending.client is not None:
            self._call_hook('on_pending_removed', pending.request_id,
                            pending, reason)

    def _descriptor_failed(self, fd: int, err: Exception) -> None:
        self.log.error('callback for fd %d raised %r', fd, err, exc_info=err)

    # -- set-up -----------------------------------------------------------------

    def __new__(cls: type[_D], *args: Any, **kwargs: Any) -> _D:
        # a misspelt option gets a suggestion, not Python's bare TypeError
        check_keywords(cls.__name__, cls.__init__, kwargs)
        return super().__new__(cls)

    def _check_pools(self) -> None:
        names: set[str] = set()
        # route entry -> the pool that serves it
        claimed: dict[str, WorkerPool] = {}
        fallbacks = 0
        for pool in self._pools:
            if pool.name in names:
                raise ValueError(f'two pools are named {pool.name!r}; give '
                                 'one a name= of its own')
            names.add(pool.name)
            fallbacks += pool.matcher.is_fallback
            for entry in pool.routes or ():
                first = claimed.setdefault(entry, pool)
                if first is not pool:
                    raise ValueError(
                        f'pools {first.name!r} and {pool.name!r} both claim'
                        f' route {entry!r}; {pool.name!r} would never serve'
                        ' it')
        if fallbacks > 1:
            self.log.warning('more than one fallback pool: only the first '
                             'one receives requests')
        self._warn_unreachable_routes()

    def _warn_unreachable_routes(self) -> None:
        """Warn of each @api route that no pool running its worker class
        reaches (a warning: the application may mean it)."""
        by_class: dict[type[Worker], list[WorkerPool]] = {}
        for pool in self._pools:
            if not is_remote(pool):     # (its hosts load their own class)
                by_class.setdefault(pool.worker_class, []).append(pool)
        for worker_class, pools in by_class.items():
            for pattern, _, _, _ in collect_routes(worker_class):
                if any(pool.matcher.can_reach(pattern) for pool in pools):
                    continue
                self.log.warning(
                    'route %r of %s is never called: its pools serve only %s',
                    pattern, worker_class.__name__, '; '.join(
                        f'{pool.name!r}: '
                        + (', '.join(map(repr, pool.routes or ()))
                           or 'no route')
                        for pool in pools))

    def _build_sync_router(self) -> Router[SyncHandler] | None:
        router: Router[SyncHandler] = Router()
        for klass in reversed(type(self).__mro__):
            for name, attr in vars(klass).items():
                for pattern, methods in getattr(attr, '_uhttp_sync', ()):
                    router.add(pattern, methods, getattr(self, name))
        return router if len(router) else None

    def _start(self) -> None:
        try:
            self._privileges.resolve()   # an unknown name: stop before all
        except PrivilegeError as err:
            if self.log_file:   # stderr gets it from SystemExit
                self.log.error('%s', err)
            raise SystemExit(str(err)) from None
        self._predecessor = upgrade.predecessor_pid()
        if self._pid_file is not None and not self._predecessor:
            self._pid_file.create()
        file_limit = _raise_open_file_limit()
        self.max_connections = max(
            16, min(self.max_connections, file_limit - 64
                    - 4 * sum(p.num_workers for p in self._pools)))
        self._selector = selectors.DefaultSelector()
        if self._output is not None:
            self._output.attach(self._selector)
        inherited = self._given_listener or upgrade.inherited_listener() \
            or next(iter(listen_sockets()), None)
        origin = 'inherited' if inherited is not None else None
        if self._given_listener is not None:
            origin = 'supervisor'
        # with a socket handed over, bind a throwaway one (the port is taken)
        try:
            path = unix_path(self.address)
            if inherited is None and path is not None:
                self._unix_listener = UnixListener(path)
                inherited = self._unix_listener.bind(self.listen_backlog)
            self._server = Server(
                address='127.0.0.1' if inherited else self.address,
                port=0 if inherited else self.port,
                ssl_context=self.ssl_context, selector=self._selector,
                max_waiting_clients=self.max_connections,
                listen=self.listen_backlog, **self._server_options)
        except OSError as err:
            # a one-line reason and a non-zero exit, not a traceback
            message = _listen_error(self.address, self.port, err)
            if self.log_file:   # stderr gets it from SystemExit
                self.log.error('%s', message)
            if self._pid_file is not None:
                self._pid_file.remove()
            raise SystemExit(message) from None
        if self._access_log is not None:
            self._server.access_log = self._access_log
            self._server.connection_class = self._connection_class = \
                _access_log.AccessLoggedConnection
        self._gate = ListenerGate(self._selector, self._server.socket,
                                  self._server)
        if inherited is not None:
            self._adopt_listener(inherited, origin)
        if self._predecessor:
            # the old dispatcher serves until we are ready: take no client
            # before then (the shared listen backlog holds them meanwhile)
            self._gate.hold(HOLD_PREDECESSOR)
        if self._server.socket.family != socket.AF_UNIX:
            self.port = self._server.socket.getsockname()[1]
        self._become_service()
        self._notifier = Notifier()
        if self._notifier.watchdog_interval:
            self._next_watchdog = time.monotonic()
        self._install_signals()
        self._state = 'running'
        now = time.monotonic()
        self._next_idle = now + SELECT_TIMEOUT
        self._descriptors.attach(self._selector)
        if not self._dispatcher_index:   # once per host: dispatcher 0
            self._start_owned()
        for pool in self._pools:
            pool.start(self)
        count = len(self._pools)
        self.log.info('listening on %s (pid %d, %d pool%s)', self.url,
                      os.getpid(), count, '' if count == 1 else 's')
        set_title(f'dispatcher {_display_address(self.address, self.port)}')

    def _become_service(self) -> None:
        """Once bound, before any other process starts: detach from the
        terminal (daemon=True; the pid file then names the daemon), give
        the log and pid files to the user to run as, and become that user.
        A failure stops the dispatcher with its one-line reason."""
        try:
            # a new dispatcher started by SIGUSR2 is a daemon's child already
            if self._daemon is not None and not self._predecessor:
                self._daemon.detach()
                if self._pid_file is not None:
                    self._pid_file.create(
                        predecessor=self._daemon.launcher_pid)
            log_file = log_files.log_file_of(self._log_output)
            self._privileges.give(
                log_file.path if log_file is not None else None)
            self._privileges.give(self._pid_file.path
                                  if self._pid_file is not None else None)
            self._privileges.give(unix_path(self.address))
            self._privileges.drop()
        except (PrivilegeError, OSError) as err:
            message = str(err)
            if self.log_file:
                self.log.error('%s', message)
            if self._daemon is not None:
                self._daemon.failed(message)
            if self._pid_file is not None:
                self._pid_file.remove()
            self._server.close()
            raise SystemExit(message) from None
        warning = self._privileges.root_warning()
        if warning:
            self.log.warning('%s', warning)
        elif self._privileges.wanted:
            self.log.info('running as %s', self._privileges.describe())
            library = self._privileges.unreadable_library()
            if library:
                self.log.warning('%s cannot read the Python library %s: a '
                                 'module imported from now on will fail',
                                 self._privileges.describe(), library)
        if self._daemon is not None:
            self._daemon.started()

    def _adopt_listener(self, sock: socket.socket,
                        origin: str | None = 'inherited') -> None:
        """Serve on a socket systemd or the previous dispatcher passed us
        (`origin` 'inherited'), or on our Unix socket (`origin` None),
        instead of the one uhttp-server bound.

        uhttp-server binds its own socket; it is swapped for this one (the
        server only ever accepts on `_socket`).
        """
        server = self._server
        old = server.socket
        sock.setblocking(False)
        server._socket = sock  # pylint: disable=protected-access
        self._gate.replace_socket(sock)
        old.close()
        if sock.family == socket.AF_UNIX:
            self._adopt_unix_address(sock.getsockname())
        else:
            self.address = sock.getsockname()[0]
        if origin is None:
            return
        if origin == 'supervisor':
            self.log.info('dispatcher %s serving on the supervisor\'s '
                          'listening socket', self._dispatcher_index)
            return
        self.log.info('serving on an inherited listening socket (%s)',
                      'from the previous dispatcher'
                      if upgrade.predecessor_pid() else 'from systemd')

    def _adopt_unix_address(self, path: str | bytes) -> None:
        """`address` of a Unix listener is `unix:<path>`; the file of one
        handed over by the previous dispatcher becomes ours to remove."""
        if isinstance(path, bytes):     # abstract namespace
            path = path.decode('utf-8', 'replace')
        ours = unix_path(self.address)
        if self._unix_listener is None and upgrade.predecessor_pid() \
                and ours is not None and os.path.abspath(ours) == path:
            self._unix_listener = UnixListener(path)
            self._unix_listener.adopt()
        self.address = UNIX_PREFIX + path

    def _remove_unix_socket(self) -> None:
        """At exit: remove the socket file we bound, unless a successor
        (SIGUSR2) serves on it now."""
        if self._unix_listener is None:
            return
        if self._successor is not None and self._successor.ready:
            return
        self._unix_listener.remove()

    # -- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Serve until shut down (SIGTERM, SIGINT, SIGQUIT or stop()).

        With `dispatchers` > 1 this process becomes the supervisor of that
        many dispatcher processes (see `supervisor`)."""
        refuse_to_run_in_worker()
        if self.dispatchers > 1 and self._dispatcher_index is None:
            from .supervisor import Supervisor  # pylint: disable=import-outside-toplevel
            Supervisor(self).run()
            return
        self._start()
        try:
            while self._state != 'stopped':
                self._tick()
        finally:
            if self._output is not None:
                self._output.close()
            self._close()
            self._remove_unix_socket()
            if self._host is not None:
                self._close_host_report(self._host)
            self._log_output.flush()   # access lines still buffered
        if self.exit_status:
            raise SystemExit(self.exit_status)

    def serve_supervised(self, index: int, listener: socket.socket | None,
                         run_dir: str | None = None) -> None:
        """In a process the supervisor forked: serve as dispatcher `index`
        on the supervisor's `listener`, writing snapshots into `run_dir`.
        Only dispatcher 0 starts the owned services and jobs."""
        self._dispatcher_index = index
        self._given_listener = listener
        self._supervisor_pid = os.getppid()
        if run_dir is not None:
            self._host = HostReport(run_dir, index)
            self._privileges.give(run_dir)
            if self._metrics is not None:
                self._metrics.peers = self._peer_metrics
        self.run()

    def _supervised_step(self, now: float) -> None:
        """Housekeeping of a supervised dispatcher: tell the supervisor
        once when ready (SIGUSR2: it may retire the one this replaces), and
        keep this dispatcher's snapshot fresh."""
        if self._ready_notified and self._supervisor_pid is not None:
            # (a supervisor gone leaves another parent: it is not told)
            if os.getppid() == self._supervisor_pid:
                os.kill(self._supervisor_pid, signal.SIGUSR2)
            self._supervisor_pid = None   # told once
        host = self._host
        if host is not None and host.due(now, self._state):
            self._write_snapshot(host, now)

    def _write_snapshot(self, host: HostReport, now: float) -> None:
        snapshot: dict[str, Any] = {'status': self._own_status()}
        if self._metrics is not None:
            snapshot['metrics'] = self._metrics.snapshot()
        try:
            host.write(now, self._state, snapshot)
        except OSError as err:
            self.log.error('cannot write the status snapshot %s: %s; '
                           'status() and metrics of the host go without '
                           'this dispatcher', host.path, err)
            self._host = None

    def _close_host_report(self, host: HostReport) -> None:
        # the final counts stay for the supervisor to fold (host_status)
        metrics = self._metrics.snapshot() \
            if self._metrics is not None else None
        try:
            host.close(metrics)
        except OSError as err:
            self.log.error('cannot write the final snapshot %s: %s; the '
                           'host\'s counters lose this dispatcher\'s last '
                           'second', host.path, err)

    def _peer_metrics(self) -> list[Snapshot]:
        # the other dispatchers' metric snapshots and the counters of those
        # that exited (metrics.Metrics.peers). This one's snapshot is
        # written first: a later scrape of another dispatcher then shows at
        # least the counts this scrape shows (counters never go down)
        if self._host is not None:
            self._write_snapshot(self._host, time.monotonic())
        if self._host is None:   # (the write failed)
            return []
        return self._host.peer_metrics()

    def handle_usr2(self) -> None:
        """SIGUSR2: start a new dispatcher on the same socket (see
        upgrade); under a supervisor, its replacement is ready: hand over
        (serve the connections open, close each after its answer) and exit."""
        if self._dispatcher_index is None:
            super().handle_usr2()
            return
        self.log.info('dispatcher %d: replaced, handing over and exiting',
                      self._dispatcher_index)
        self._retiring = True
        self._begin_drain()

    def _handing_over(self) -> bool:
        """True while another dispatcher takes this one's place (SIGUSR2):
        the connections open here are still served while it drains."""
        return self._successor is not None or self._retiring

    def _tick(self) -> None:
        events: Sequence[tuple[selectors.SelectorKey, int]]
        try:
            events = self._selector.select(self._select_timeout())
        except InterruptedError:
            events = ()
        for key, mask in events:
            owner = key.data
            if owner.__class__ is self._connection_class:
                self._on_connection_event(owner, key.fileobj, mask)
            elif owner is self._server:
                self._accept(key.fileobj, mask)
            elif owner.__class__ is _server.WebSocket:
                self._on_ws_event(owner, key.fileobj, mask)
            else:
                owner(key.fileobj, mask)
        if self._pipelined:
            self._serve_pipelined()
        if self._flush_needed:
            # (for as long as WorkerEvents is not annotated)
            self._flush_workers()  # type: ignore[no-untyped-call, unused-ignore]

        now = time.monotonic()
        if now >= self._pending.next_expiry:
            self._expire(now)
        if now >= self._next_housekeeping:
            self._housekeeping(now)

    def _accept(self, fileobj: object, mask: int) -> None:
        if self._gate.is_held(HOLD_CLOSED):
            return  # closed earlier in this loop turn (shutdown)
        connections = self._server._waiting_connections  # pylint: disable=protected-access
        count = len(connections)
        newest = connections[-1] if connections else None
        self._server.handle_event(fileobj, mask)
        if len(connections) == count and (
                not connections or connections[-1] is newest):
            # accept() failed (e.g. out of descriptors): uhttp-server drops
            # the error and the socket stays readable; do not spin on it
            self._gate.hold(HOLD_ACCEPT_FAILED)
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE

    def _resume_accepting(self, now: float) -> None:
        if self._accept_paused_until is None or \
                now < self._accept_paused_until:
            return
        self._accept_paused_until = None
        self._gate.release(HOLD_ACCEPT_FAILED)

    def _select_timeout(self) -> float:
        if self._flush_needed or self._pipelined:
            return 0
        wake = min(self._next_idle, self._next_housekeeping_due(),
                   self._pending.next_expiry)
        return max(0.0, wake - time.monotonic())

    def _next_housekeeping_due(self) -> float:
        if self._state != 'running':
            return self._next_housekeeping
        return self._next_housekeeping + 0.4  # idle: 2 wake-ups a second

    def _housekeeping(self, now: float) -> None:

        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        self._log_output.flush()  # access lines wait no longer than this
        self._server.maintenance()  # idle and slow clients (its own pace)
        for pool in self._pools:
            pool.supervise(now)
        self._resume_accepting(now)
        self._supervise_owned(now)
        self._ws_housekeeping(now)
        self._readiness_step(now)
        self._upgrade_step(now)
        if self._dispatcher_index is not None:
            self._supervised_step(now)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep_closed_clients()
        if now >= self._next_idle:
            self._next_idle = now + SELECT_TIMEOUT
            try:
                self.on_idle()
            except Exception:  # pylint: disable=broad-except
                self.log.exception('on_idle() raised')
        if self._state == 'draining':
            self._drain_step(now)
        elif self._state == 'stopping':
            self._stop_step(now)

    # -- clients ------------------------------------------------------------------

    def _on_connection_event(self, connection: Connection, fileobj: object,
                             mask: int) -> None:
        pending = connection.context
        if pending is None:
            if self._admission.closed and mask & selectors.EVENT_READ \
                    and not connection.has_data_to_send \
                    and not self._answers_itself(connection):
                self._admission.park(connection, self._gate)
                return
            client = connection.handle_event(fileobj, mask)
            if client is not None:
                self._on_request(client)
            else:
                self._note_pipelined(connection)
        elif pending.state == STREAMING:
            connection.handle_event(fileobj, mask)
            if connection.socket is None:
                self._client_left(pending)
        else:
            # A loaded request waits for its answer: uhttp-server must not
            # parse this socket again (it would hand the same request back).
            if mask & selectors.EVENT_WRITE:
                connection.try_send()
            if mask & selectors.EVENT_READ:
                self._probe_waiting_client(connection, pending)

    def _probe_waiting_client(self, connection: Connection,
                              pending: Pending) -> None:
        sock = connection.socket
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except ValueError:
            data = None  # TLS sockets cannot peek: stop watching instead
        except OSError:
            data = b''
        if data == b'':
            self._client_left(pending)
            connection.close()
            return
        # Bytes of a next request (pipelining) or TLS records: stop reading
        # until this request is answered, or the loop would spin on them.
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        connection._interest = None  # pylint: disable=protected-access
        pending.read_paused = True

    def _on_request(self, client: Connection) -> None:
        try:
            self._route_request(client)
        except Exception:  # pylint: disable=broad-except
            # one request must never end the loop that serves everyone
            self.log.exception('request %s %s failed in the dispatcher',
                               client.method, printable(client.path))
            if client.context is not None:
                self._give_up(client.context, None)
            if not _answered(client):
                self._answer(client, 500, _JSON,
                             _error_body(500, 'Internal Server Error'))
        self._note_pipelined(client)

    def _route_request(self, client: Connection) -> None:
        if self._metrics is not None and client.path == self.metrics_route:
            body, content_type = self._metrics.render()
            self._answer(client, 200, {'content-type': content_type}, body)
            return
        if self._has_static:
            found = self._static.lookup(client.path)
            if found is not None:
                self._serve_static(client, *found)
                return
        if self._sync_router is not None and self._run_sync(client):
            return
        pool = self._find_pool(client.path)
        if pool is None:
            self._answer(client, 404, _JSON, _error_body(404, 'Not Found'))
            return
        if self._ws_try_upgrade(client, pool):
            return
        self._submit(client, pool)

    # uhttp-server parses one request per read: requests a client sent in
    # the same segment (pipelining) wait in the connection's buffer, and no
    # socket event will announce them. Serve them from the loop instead.
    def _note_pipelined(self, connection: Connection) -> None:
        if connection._buffer and connection.context is None \
                and connection._method is None \
                and connection.socket is not None:  # pylint: disable=protected-access
            self._pipelined.add(connection)

    def _serve_pipelined(self) -> None:
        connections, self._pipelined = self._pipelined, set()
        for connection in connections:
            if connection.context is not None or connection.socket is None \
                    or connection._method is not None:  # pylint: disable=protected-access
                continue
            if self._admission.closed and not self._answers_itself(
                    connection):
                self._admission.park(connection, self._gate)
                continue
            try:
                loaded = connection.process_request()
            except ValueError:  # a buffer beyond the header limit
                connection.close()
                continue
            if loaded:
                self._on_request(connection)

    # -- admission ----------------------------------------------------------------

    def _answers_itself(self, connection: Connection) -> bool:
        """Whether the request waiting on an idle connection is one the
        dispatcher answers itself (static, @sync, metrics), judged from its
        request line, peeked at without reading it. Used only while the
        pools are full, to keep health checks and static files prompt."""
        if connection.pool_client:
            # its last request went to a pool: it is very likely a client
            # of the pools (a health checker uses connections of its own)
            return False
        buffered = connection._buffer  # pylint: disable=protected-access
        if buffered:
            head = bytes(buffered[:2048])
        elif self.ssl_context is not None:
            # TLS records cannot be peeked at: park it, unless its TLS layer
            # holds decrypted bytes already (no socket event would say so)
            return bool(connection.socket.pending())
        else:
            try:
                head = connection.socket.recv(2048, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True  # an error: reading it reports it
            if not head:
                return True  # the client left: reading notices it
        parts = head.split(b'\n', 1)[0].rstrip(b'\r').split(b' ')
        if len(parts) != 3:
            return False  # not a whole request line (yet)
        method = parts[0].decode('latin-1')
        try:
            path = _server.decode_percent_encoding(
                parts[1].split(b'?', 1)[0]).decode('utf-8')
        except (UnicodeError, ValueError):
            return True  # the parser answers it 400
        if self._metrics is not None and path == self.metrics_route:
            return True
        if self._has_static and self._static.serves(path):
            return True
        if self._sync_router is None:
            return False
        try:
            return self._sync_router.lookup(method, path) is not None
        except MethodNotAllowed:
            return self._find_pool(path) is None  # else the pool serves it

    def _admission_changed(self) -> None:
        """The number of pending requests changed: close or reopen."""
        admission = self._admission
        if not admission.closed and not admission.parked_count:
            if len(self._pending) < admission.max_pending:
                return  # the common case, kept cheap
        for parked in admission.update(len(self._pending), self._gate):
            # (the dispatcher parks only its Connections)
            connection = cast(Connection, parked)
            if resume(connection) and connection._buffer:  # pylint: disable=protected-access
                self._pipelined.add(connection)

    def _serve_static(self, client: Connection, result: StaticResult,
                      body: StaticBody | None) -> None:
        # `body` (a 200's StaticBody) holds cached bytes or a file opened
        # without following symlinks: it is what gets sent, never the path
        # opened again; HEAD carries the length GET would send
        if client.method not in ('GET', 'HEAD'):
            if body is not None:
                body.close()
            self._answer(client, 405, dict(_JSON, allow='GET, HEAD'),
                         _error_body(405, 'Method Not Allowed'))
        elif result.status == 200:
            # (a 200 has both)
            assert body is not None and result.content_type is not None
            headers: dict[str, framing.HeaderValue] = {
                'content-type': result.content_type}
            if result.headers:
                headers.update(result.headers)
            if self._state != 'running':
                headers['connection'] = 'close'
            if self._access_log is not None:
                client.access_by = 'static'
            status = body.respond(client, headers,
                                  head_only=client.method == 'HEAD')
            if self._has_static_hook:
                self._call_hook('on_static_served', client,
                                result.file_path, status)
        elif result.status == 301:
            # an empty body: no Content-Type, content-length: 0
            self._answer(client, 301, {'location': result.location}, b'',
                         owned=True)
        else:
            self._answer(client, 404, _JSON, _error_body(404, 'Not Found'))
            if self._has_static_hook:
                self._call_hook('on_static_served', client,
                                result.file_path, 404)

    def _run_sync(self, client: Connection) -> bool:
        try:
            found = self._sync_lookup(client.method, client.path)
        except MethodNotAllowed as err:
            # as in uhttp-workers 1.x, a method the @sync route does not
            # take goes on to the pool serving the path; 405 if none does
            if self._find_pool(client.path) is not None:
                return False
            headers = dict(_JSON, allow=', '.join(err.allowed))
            self._answer(client, 405, headers,
                         _error_body(405, 'Method Not Allowed'))
            return True
        if found is None:
            return False
        target, params = found
        if self._access_log is not None:
            client.access_by = 'sync'
        if self._has_sync_check and not self._check(client,
                                                     self.do_check_sync):
            return True
        try:
            target(client, params)
        except _server.HttpErrorWithResponse as err:
            # e.g. a JSON body that does not parse, seen on `client.data`
            if not _answered(client):
                self._answer(client, err.status, _JSON,
                             _error_body(err.status, str(err).partition(
                                 ': ')[2] or 'Bad Request'))
            return True
        except Exception:  # pylint: disable=broad-except
            self.log.exception('sync handler %s %s failed', client.method,
                               printable(client.path))
            if not _answered(client):
                self._answer(client, 500, _JSON,
                             _error_body(500, 'Internal Server Error'))
            return True
        if not _answered(client):
            self.log.error('sync handler for %s %s returned without '
                           'responding', client.method,
                           printable(client.path))
            self._answer(client, 500, _JSON,
                         _error_body(500, 'Internal Server Error'))
        return True

    def _sync_lookup(self, method: str, path: str
                     ) -> tuple[SyncHandler, dict[str, ParamValue]] | None:
        """The @sync route of a request; a HEAD runs the GET route of a
        path whose routes do not take HEAD (RFC 9110 §9.3.2: the connection
        sends the GET answer's head, Content-Length included)."""
        router = self._sync_router
        assert router is not None   # (called only when there is one)
        try:
            return router.lookup(method, path)
        except MethodNotAllowed as err:
            if method != 'HEAD':
                raise
            refused = err
        try:
            return router.lookup('GET', path)
        except MethodNotAllowed:
            raise refused from None

    def _submit(self, client: Connection, pool: WorkerPool) -> None:
        # while handing over to a new dispatcher, keep serving the
        # connections already open (each answer then closes its connection)
        handover = self._state == 'draining' and self._handing_over()
        if self._state != 'running' and not handover:
            self._answer(client, 503, _CLOSE_RETRY,
                         _error_body(503, 'Shutting down'))
            return
        if self._has_check and not self._check(client):
            return
        if pool.degraded:
            self._answer(client, 503, _RETRY,
                         _error_body(503, 'Service Unavailable'))
            return
        if not self._live_workers.get(pool) \
                and not self._has_remote_workers(pool):
            # no process runs or starts (ended for good, or a start failed
            # and waits for its retry), or no remote host has a live
            # worker: a queued request would only wait for its 504
            self._answer(client, 503, _RETRY,
                         _error_body(503, 'No Workers Available'))
            return
        if len(self._pending) >= self.max_pending:
            self._answer(client, 503, _RETRY, _error_body(503, 'Too Busy'))
            return
        request_id = self._next_request_id
        self._next_request_id = request_id + 1
        # pylint: disable=protected-access
        # (the connection's fields, read directly: this runs per request)
        data: Any = client.take_raw_json()   # decoded by the worker
        if data is None:
            data = client._data
            if data.__class__ is bytearray or data.__class__ is memoryview:
                data = bytes(data) or None  # a raw body
        pending, context = self._open_pending(request_id, client, pool)
        method = client._method
        assert method is not None   # (the request is loaded)
        pending.message = messages.request(
            request_id, method, client._path, client._query,

            client._headers, data, self._client_address(client), False,
            client._should_keep_alive(), context)
        if len(self._pending) >= self.max_pending:
            self._admission_changed()
        pool.submit(pending)

    def _has_workers(self, pool: WorkerPool) -> bool:
        """Whether any worker may ever take a request of `pool`: a local
        process that runs or starts, or for a remote pool a remote worker
        whose heartbeat is live."""
        return bool(self._live_workers.get(pool)) \
            or self._has_remote_workers(pool)

    @staticmethod
    def _has_remote_workers(pool: WorkerPool) -> bool:
        # (asked only when no local process runs: a local pool's request
        # pays nothing for it)
        return is_remote(pool) and pool.workers_alive > 0

    def _open_pending(self, request_id: int, client: Connection,
                      pool: WorkerPool) -> tuple[Pending, Any]:
        """Enter a client's request for `pool` in the pending table; returns
        it and what on_request_accepted() gave (the caller then makes its
        message, which carries that context)."""
        pending = self._pending.open(
            request_id, client, pool, None,  # type: ignore[arg-type]
            time.monotonic())
        client.context = pending
        client.pool_client = True
        if self._access_log is not None:
            client.access_by, client.access_id = pool.name, request_id
        context = self._request_context(request_id, client, pool) \
            if self._has_accepted_hook else None
        return pending, context

    def _request_context(self, request_id: int, client: Connection,
                         pool: WorkerPool) -> Any:
        """What on_request_accepted() returned, for the worker's
        Request.context: None when the hook raised or its value cannot
        travel to a worker process (both logged)."""
        context = self._call_hook('on_request_accepted', request_id, client,
                                  pool)
        if context is None:
            return None
        try:
            pickle.dumps(context, pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # pylint: disable=broad-except
            # pickle raises more than PicklingError (TypeError, ...)
            self.log.error(
                'on_request_accepted() returned %s for request %s, which '
                'cannot be sent to a worker (%r): its Request.context is '
                'None', type(context).__name__, request_id, err)
            return None
        return context

    def _client_address(self, client: Connection) -> str:
        """The client's address as workers see it (request.remote_address):
        `ip:port` of the socket peer (`[ipv6]:port`, '' for a peer on a
        Unix-domain socket), computed once per connection; with
        trusted_proxies and a trusted peer that forwards, the IP of the
        client behind the proxies (read per request)."""
        if self._trusts_proxies:
            forwarded: str = client.remote_address
            if forwarded != _server.unmap_ipv4(client.addr[0]):
                return forwarded
        address = client.client_address
        if address is None:
            address = client.client_address = client.socket_address
        return address

    def _check(self, client: Connection,
               hook: Callable[[Connection], None] | None = None) -> bool:
        """Run do_check (or `hook`): True if the request may go on."""
        hook = hook or self.do_check
        try:
            hook(client)
        except RejectRequest as err:
            if not _answered(client):
                self._answer_data(client, err.status, err.data)
            return False
        except Exception:  # pylint: disable=broad-except
            self.log.exception('%s() raised', hook.__name__)
            if not _answered(client):
                self._answer(client, 500, _JSON,
                             _error_body(500, 'Internal Server Error'))
            return False
        return not _answered(client)

    def _new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id

    def submit_internal(self, pool: WorkerPool, method: str, path: str,
                        data: Any, headers: dict[str, str],
                        query: messages.Query = None,
                        to_all: bool = False) -> None:
        """Run a request on `pool` whose answer is dropped (request_id=-1
        requests, forwards from workers); `to_all` runs it on every worker."""
        if pool.degraded or self._state not in ('running', 'draining'):
            self.log.warning('pool %s cannot take internal request %s %s now',
                             pool.name, method, path)
            return

        def make_pending() -> Pending:
            request_id = self._new_request_id()
            message = messages.request(
                request_id, method, path, query, headers, data, None, to_all)
            return Pending(request_id, None, pool, message, to_all=to_all)
        if to_all:
            if not pool.assign_to_all(make_pending):
                self.log.warning('broadcast %s %s: pool %s has no ready '
                                 'worker', method, path, pool.name)
        else:
            pool.submit(make_pending())

    def _answer(self, client: Connection, status: int,
                headers: dict[str, Any], body: bytes,
                owned: bool = False) -> None:
        """Send a complete response; never raises. A HEAD request gets the
        headers only, with the Content-Length of the body (the connection
        drops the body). `owned`: the headers dict is ours to give away
        (uhttp-server adds to it)."""
        if self._state != 'running' and 'connection' not in headers:
            headers = dict(headers, connection='close')
        elif not owned:
            headers = dict(headers)
        try:
            client.respond(data=body, status=status, headers=headers)
            self._note_pipelined(client)
        except _server.HttpError as err:
            self.log.error('cannot send response %s: %s', status, err)
            if status != 500:
                self._answer(client, 500, _JSON,
                             _error_body(500, 'Internal Server Error'))
            else:
                client.close()

    def _send_answer(self, client: Connection, wire: bytes,
                     keep_alive: bool) -> None:
        """Write a complete answer a worker built (status line included):
        the dispatcher's whole share of a pool answer."""
        # pylint: disable=protected-access
        if keep_alive and self._state != 'running':
            wire, keep_alive = framing.with_close(wire), False
        client._response_started = True
        client._is_streaming = False
        client._response_keep_alive = keep_alive
        if not client._send_buffer and client._socket is not None \
                and self.ssl_context is None:
            # the common case: nothing queued before it, write at once
            try:
                sent = client._socket.send(wire)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                client.close()
                return
            if sent == len(wire):
                client._finalize_sent_response()
                if self._admission.closed and client._socket is not None \
                        and not client._buffer:
                    # no room for its next request: park it now rather
                    # than watch it, read it and park it then
                    self._admission.park(client, self._gate)
                    return
                client._update_interest()
                self._note_pipelined(client)
                return
            wire = wire[sent:]
        try:
            client._send(wire)  # finishes (keep-alive reset) once all is out
        except OSError:
            client.close()
            return
        self._note_pipelined(client)

    def _answer_data(self, client: Connection, status: int,
                     data: Any) -> None:
        headers: dict[str, Any] = {}
        try:
            body = encode_body(data, headers)
        except TypeError as err:
            self.log.error('cannot encode response data: %s', err)
            status, headers, body = 500, dict(_JSON), _error_body(
                500, 'Internal Server Error')
        self._answer(client, status, headers, body)

    # -- pending requests ---------------------------------------------------

    def _complete(self, pending: Pending) -> State:
        """End a request in the table (the client was dealt with) and watch
        its connection again. Returns the state it was in."""
        state = self._pending.finish(pending)
        client = pending.client
        if client is not None and client.context is pending:
            client.context = None
            self._resume_reading(pending)
        self._admission_changed()
        return state

    @staticmethod
    def _resume_reading(pending: Pending) -> None:
        """Watch the client socket again if a pipelined request made us stop
        (see _probe_waiting_client) now that its answer is going out."""
        client = pending.client
        if pending.read_paused and client.socket is not None:
            pending.read_paused = False
            client._register()  # pylint: disable=protected-access

    def _give_up(self, pending: Pending, status: int | None,
                 message: str | None = None,
                 reason: str | None = None) -> None:
        """The dispatcher ends a request without its worker's answer
        (timeout, client gone, worker died, shutdown): its worker is told,
        and the client gets `status` (None: nothing, it is gone); then
        on_pending_removed() hears `reason` (by default, from `status`)."""
        self._end_without_answer(pending, status, message)
        if self._has_removed_hook:
            self._removed(pending, reason or _removal_reason(status))

    def _end_without_answer(self, pending: Pending, status: int | None,
                            message: str | None) -> None:
        worker = pending.worker
        state = self._complete(pending)
        if worker is not None and not worker.exited:
            if state == ASSIGNED:
                # it may still wait in the worker's channel: skip it there
                worker.pool.send_to(worker, messages.cancel(
                    pending.request_id))
            elif state in (DEFERRED, STREAMING):
                worker.pool.drop(worker, pending)
        client = pending.client
        if status is None or client is None or client.socket is None:
            return
        if state == STREAMING:
            client.response_stream_end()
            return
        if self._metrics is not None:
            # (the pool of a client's request is a WorkerPool)
            pool = cast('WorkerPool', pending.pool)
            self._metrics.answered(pool.name, '', status,
                                   time.monotonic() - pending.started)
        headers = _JSON
        if status == 503:
            headers = _CLOSE_RETRY if self._state != 'running' else _RETRY
        self._answer(client, status, headers, _error_body(status, message))

    def _sweep_closed_clients(self) -> None:
        """Forget requests whose connection is gone without an event (the
        HTTP server evicts the oldest connection when max_connections is
        reached, and closes it silently)."""
        for pending in self._pending.all():
            client = pending.client
            if client is not None and client.socket is None:
                self._client_left(pending)

    def _client_left(self, pending: Pending) -> None:
        """The client of a pending request closed its connection."""
        self.log.debug('request %s: client left (%s)', pending.request_id,
                       pending.state)
        self._give_up(pending, None)

    def _expire(self, now: float) -> None:
        """Requests past their deadline: 503 for one that never left the
        backlog (a retry is safe), 504 for one a worker had."""
        for pending in self._pending.expired(now):
            # (the pool of a client's request is a WorkerPool)
            pool = cast('WorkerPool', pending.pool)
            if pending.state == QUEUED:
                self.log.warning(
                    'request %s %s %s waited %ss for a worker of pool %s: '
                    '503', pending.request_id, pending.client.method,
                    printable(pending.client.path), pool.timeout, pool.name)
                self._give_up(pending, 503, 'Service Unavailable',
                              PENDING_TIMEOUT)
                continue
            self.log.warning(
                'request %s %s %s timed out after %ss (pool %s, %s)',
                pending.request_id, pending.client.method,
                printable(pending.client.path), pool.timeout, pool.name,
                pending.state)
            self._give_up(pending, 504, 'Gateway Timeout')

    # -- logging -----------------------------------------------------------------

    def _emit_log(self, name: str, level: int, message: str,
                  details: dict[str, Any] | None = None) -> None:
        # the dispatcher's own records: stdlib logger
        # uhttp.workers.dispatcher when logging is configured, else on_log()
        try:
            exc_text: str | None = details.get('exc_text') \
                if details else None
            self._log_router.route(
                DISPATCHER_LOGGER, name, level, message, exc_text, details)

        except Exception as err:  # pylint: disable=broad-except
            self._log_output.write('dispatcher', 40,
                                   f'log handler raised {err!r}; record: '
                                   f'[{name}] {message}')

    def _on_log_safely(self, name: str, level: int, message: str) -> None:
        try:
            self.on_log(name, level, message)
        except Exception as err:  # pylint: disable=broad-except
            self._log_output.write('dispatcher', 40,
                                   f'on_log() raised {err!r}; record: '
                                   f'[{name}] {message}')

def _removal_reason(status: int | None) -> str:
    """The on_pending_removed() reason of a request the dispatcher ended
    with `status` (None: its client left)."""
    if status is None:
        return PENDING_DISCONNECTED
    if status == 502:
        return PENDING_WORKER_DIED
    if status == 503:
        return PENDING_SHUTDOWN
    if status == 504:
        return PENDING_TIMEOUT
    return PENDING_COMPLETED    # a 500 the dispatcher sent for its worker


def _accepts_arguments(method: Callable[..., object], count: int) -> bool:
    """Whether the bound `method` can be called with `count` positional
    arguments (checked once, at start-up, not per call)."""
    try:
        inspect.signature(method).bind(*range(count))
    except TypeError:
        return False
    except ValueError:   # no signature to read (a builtin): call it plainly
        return False
    return True


def _answered(client: Connection) -> bool:
    """True once a response was started, or the connection is gone."""
    return client.socket is None or not client.is_loaded


