"""Services: helper processes (an internal API, a cache, a model server) that
many workers share, started once per host and kept healthy.

This module owns the policy: the `Service` description (command line,
restart policy, managed and standalone use) and the `ServiceManager`, whose
one supervision thread starts every service, health-checks it, restarts it
or gives up, and stops it. The mechanisms live beside it, one per module:

- `service_client`: the HTTP client, its response and errors, `Endpoint`;
- `process_group`: spawning a service in its own session, signalling the
  group, the parent-death signal;
- `ownership`: the host lock deciding which process runs a standalone
  service.

The names callers import (`Service`, `ServiceManager`, `ServiceError`,
`ServiceUnavailable`, `ServiceClient`, `default_lock_port`, ...) stay
importable from here.

Two ways of use share that code:

- managed: an owner process (the dispatcher) runs a `ServiceManager`; worker
  processes receive the pickled `Service` and call `Service.client()`, which
  waits for the service but never starts anything;
- standalone: any process on the host calls `Service.connect()`; the first
  one to bind the service's lock socket becomes its owner and starts it,
  the others wait until it answers. When the owner dies the kernel frees the
  lock (and kills its server), and the next `connect()` anywhere takes over.

Must never: leave a service process or its children running after a stop,
block the caller of `ServiceManager.start()`, call an `on_change` callback
while holding a lock, or put a process handle, thread or socket into the
pickled state of a `Service`.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

# the names of the mechanism modules that callers import from here are
# re-exported (see __all__)
from .ownership import (
    LOCK_NAME_PREFIX, LOCK_PORT_OFFSET, bind_lock_socket, default_lock_port,
    own, try_lock)
from .process_group import (
    PR_SET_PDEATHSIG, describe_exit, group_exists, pidfd_of,
    set_parent_death_signal, signal_group, spawn)
from .service_client import (
    HEALTH_TIMEOUT_MAX, STARTUP_POLL, Endpoint, Headers, HTTPStatusError,
    ServiceClient, ServiceError, ServiceResponse, ServiceUnavailable,
    SocketPath, pauses, sleep_before)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .messages import ServiceStatus
    from .ownership import Ownership

__all__ = [
    'Service', 'ServiceManager', 'ServiceError', 'ServiceUnavailable',
    'ServiceClient', 'ServiceResponse', 'HTTPStatusError', 'Headers',
    'Endpoint', 'default_lock_port', 'bind_lock_socket',
    'set_parent_death_signal', 'describe_exit', 'STATES', 'STARTUP_POLL',
    'HEALTH_TIMEOUT_MAX', 'LOCK_PORT_OFFSET', 'LOCK_NAME_PREFIX',
    'PR_SET_PDEATHSIG',
]

STATES = ('starting', 'ready', 'unhealthy', 'restarting', 'failed', 'stopped')
# the same states, for annotations
ServiceState = Literal['starting', 'ready', 'unhealthy', 'restarting',
                       'failed', 'stopped']

UNHEALTHY_LIMIT = 3     # failed checks in a row before a running one restarts
EXIT_POLL = 0.5         # exit polling period where pidfd_open is missing
STOP_POLL = 0.02        # seconds between two looks at a group being stopped

_LOG = logging.getLogger(__name__)

# what a Service's `state_getter` reports: a state, a ServiceManager.status()
# entry, or None when nothing is known
StateGetter = Callable[[], 'str | ServiceStatus | None']
# an on_change callback: (service name, new state)
ChangeCallback = Callable[[str, ServiceState], object]


class ServiceLog(Protocol):
    """What a ServiceManager logs with: %-style arguments (a logging.Logger
    or a uhttp.workers Logger), called from the supervision thread."""

    def info(self, message: str, /, *args: object) -> None: ...

    def warning(self, message: str, /, *args: object) -> None: ...

    def error(self, message: str, /, *args: object) -> None: ...

    def critical(self, message: str, /, *args: object) -> None: ...


class _RunnerFields(TypedDict, total=False):
    """The fields of a _Runner that status() readers see (changed under
    the manager's lock)."""
    process: subprocess.Popen[bytes] | None
    state: ServiceState
    started: float
    last_error: str | None
    restarts: int


class Service(Endpoint):
    """A helper process, described once and shared by many processes.

    `command` is a list of strings in which `{port}`, `{host}` and
    `{socket}` are replaced (see command_line()). Give exactly one of `port` (TCP on `host`) or `socket` (a Unix
    socket path). `stdout`/`stderr` are file paths (appended to);
    `stderr='stdout'` merges both; None inherits ours. `env` is added to
    os.environ. Health: GET `health_check_url` must answer 2xx or 3xx within
    min(2 s, health_check_interval).

    `connect()` (standalone) may start the service; `client()` (managed)
    never does. A Service pickles without any process-local state (process
    handles, threads, sockets, `state_getter`).
    """

    _LOCAL = ('_owner', '_healthy_until', 'state_getter')

    def __init__(self, name: str, command: Sequence[str],
                 port: int | None = None, socket: SocketPath | None = None,
                 host: str = '127.0.0.1', health_check_url: str = '/',
                 health_check_interval: float = 5.0,
                 startup_timeout: float = 30.0,
                 restart_on_failure: bool = True, max_restarts: int = 3,
                 restart_delay: float = 1.0,
                 env: Mapping[str, object] | None = None,
                 cwd: str | os.PathLike[str] | None = None,
                 stdout: str | os.PathLike[str] | None = None,
                 stderr: str | os.PathLike[str] | None = None,
                 shutdown_timeout: float = 10.0,
                 lock_port: int | None = None) -> None:
        if not name or not isinstance(name, str):
            raise ValueError('a service needs a name (a non-empty str)')
        if isinstance(command, str) or not command or not all(
                isinstance(arg, str) for arg in command):
            raise ValueError(f'service {name!r}: command must be a non-empty '
                             'list of str')
        if port is not None and lock_port is None:
            lock_port = default_lock_port(port)
        for option, value in (('health_check_interval', health_check_interval),
                              ('startup_timeout', startup_timeout)):
            if value <= 0:
                raise ValueError(f'service {name!r}: {option} must be > 0')
        super().__init__(name, port, socket, host, health_check_url,
                         health_check_interval, startup_timeout)
        self.command = list(command)
        self.restart_on_failure = restart_on_failure
        self.max_restarts = max_restarts
        self.restart_delay = restart_delay
        self.env = {key: str(value) for key, value in (env or {}).items()}
        self.cwd = cwd
        self.stdout = stdout
        self.stderr = stderr
        self.shutdown_timeout = shutdown_timeout
        self.lock_port = lock_port
        # Optional hook set by whoever manages the service: returns its state
        # ('ready', 'failed', ...) or a ServiceManager.status() entry.
        self.state_getter: StateGetter | None = None
        self._owner: Ownership | None = None
        self._healthy_until = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._LOCAL:
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.state_getter = None
        self._owner = None
        self._healthy_until = 0.0

    def command_line(self) -> list[str]:
        """The command with `{port}`, `{host}` and `{socket}` replaced (each
        by '' when the service has none)."""
        values = {'{port}': '' if self.port is None else str(self.port),
                  '{host}': self.host or '', '{socket}': self.socket or ''}
        result: list[str] = []
        for arg in self.command:
            for placeholder, value in values.items():
                arg = arg.replace(placeholder, value)
            result.append(arg)
        return result

    # -- health ---------------------------------------------------------------

    def _recent_probe(self) -> str | None:
        """Like probe(), but a pass is trusted for a health check interval,
        so that asking for a client per request does not double traffic."""
        if time.monotonic() < self._healthy_until:
            return None
        error = self.probe()
        if error is None:
            self._healthy_until = time.monotonic() + self.health_check_interval
        return error

    # -- managed use ----------------------------------------------------------

    def client(self, timeout: float | None = None,
               request_timeout: float = 30.0) -> ServiceClient:
        """A client of the service, which someone else runs (managed use).

        Never starts the service and never takes its lock. Waits up to
        `timeout` seconds (default startup_timeout) for it to answer its
        health check, then raises ServiceUnavailable. When `state_getter` is
        set and reports 'failed' or 'stopped', raises at once; when it
        reports 'ready', trusts it without a health check.
        """
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for pause in pauses():
            report = self._reported()
            state = report.get('state') if report else None
            if state in ('failed', 'stopped'):
                raise self._unavailable(report, timeout)
            if state == 'ready':
                return self._ready_client(request_timeout)
            error = self._recent_probe()
            if error is None:
                return self._ready_client(request_timeout)
            if not sleep_before(deadline, pause):
                raise self._unavailable(report, timeout, error)
        raise AssertionError('unreachable')

    def _reported(self) -> ServiceStatus | None:
        owner = self._ownership()
        if owner is not None:
            return owner.manager.status_of(self.name)
        if self.state_getter is None:
            return None
        report = self.state_getter()
        if report is None or isinstance(report, dict):
            return report
        return {'state': report}

    def _unavailable(self, report: ServiceStatus | None, waited: float,
                     probe_error: str | None = None) -> ServiceUnavailable:
        report = report or {}
        state = report.get('state')
        error = probe_error or report.get('last_error')
        detail = f'; last error: {error}' if error else ''
        if state == 'failed':
            restarts = report.get('restarts', self.max_restarts)
            message = (f'service {self.name!r} has failed after {restarts} '
                       f'restarts{detail}')
        elif state == 'stopped':
            message = f'service {self.name!r} has been stopped'
        else:
            return self.not_ready(waited, error, state)
        return ServiceUnavailable(message, state)

    def _ready_client(self, request_timeout: float) -> ServiceClient:
        client = ServiceClient(self, request_timeout)
        client._ready = True    # pylint: disable=protected-access
        return client

    # -- standalone use -------------------------------------------------------

    def connect(self, timeout: float | None = None,
                request_timeout: float = 30.0,
                wait: bool = True) -> ServiceClient:
        """A client of the service, starting it if nobody on this host runs it.

        Standalone use: tries to bind the service's lock socket. The process
        that binds it owns the service: it starts the process, supervises it
        from a daemon thread and stops it at exit. Others wait up to
        `timeout` seconds (default startup_timeout) for the health check to
        pass, retrying the lock meanwhile (its owner may die), then raise
        ServiceUnavailable. With `wait=False` it only takes the lock if it
        is free (starting the service then) and returns a client at once;
        `client.wait_ready()` waits later.
        """
        if not wait:
            self._ownership() or self._take_ownership()
            return ServiceClient(self, request_timeout)
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for pause in pauses():
            owner = self._ownership() or self._take_ownership()
            if owner is not None:
                return self._owner_client(owner, deadline, timeout,
                                          request_timeout)
            error = self._recent_probe()
            if error is None:
                return self._ready_client(request_timeout)
            if not sleep_before(deadline, pause):
                raise self._unavailable(None, timeout, error)
        raise AssertionError('unreachable')

    @property
    def owned(self) -> bool:
        """True when this process started the service through connect()."""
        return self._ownership() is not None

    def close(self, timeout: float | None = None) -> None:
        """If this process owns the service (connect()), stop it and give up
        the lock; otherwise do nothing. Also runs at interpreter exit."""
        owner = self._ownership()
        self._owner = None
        if owner is not None:
            owner.close(timeout)

    def _ownership(self) -> Ownership | None:
        owner = self._owner
        if owner is not None and owner.pid != os.getpid():
            self._owner = owner = None   # inherited through fork: not ours
        return owner

    def _take_ownership(self) -> Ownership | None:
        lock = try_lock(self)
        if lock is None:
            return None
        manager = ServiceManager([self])
        self._owner = owner = own(lock, manager)
        manager.log.info('service %s: this process (%d) owns it, starting it',
                         self.name, os.getpid())
        manager.start()
        return owner

    def _owner_client(self, owner: Ownership, deadline: float,
                      timeout: float,
                      request_timeout: float) -> ServiceClient:
        report = owner.manager.wait_for(self.name, deadline)
        if report['state'] == 'ready':
            return self._ready_client(request_timeout)
        raise self._unavailable(report, timeout)


class _Runner:
    """One service inside a ServiceManager: its process and its state.

    Only the supervision thread calls its methods; status() readers take
    the manager's lock.
    """
    # pylint: disable=protected-access  (the manager's helpers for runners)

    def __init__(self, service: Service, manager: ServiceManager) -> None:
        self.service = service
        self.manager = manager
        self.state: ServiceState = 'stopped'
        self.process: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.started: float | None = None
        self.deadline = 0.0     # end of the startup window
        self.next_at = 0.0      # when step() has work to do
        self.failed_checks = 0
        self.stop_deadline: float | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running process, or None."""
        return self.process.pid if self.process is not None else None

    def status(self) -> ServiceStatus:
        """The status() entry (call with the manager's lock held)."""
        return {
            'name': self.service.name,
            'state': self.state,
            'pid': self.pid,
            'restarts': self.restarts,
            'max_restarts': self.service.max_restarts,
            'address': self.service.address,
            'last_error': self.last_error,
        }

    def spawn(self, now: float) -> None:
        """Start the process and enter 'starting'."""
        service = self.service
        try:
            process = spawn(service)
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            self.fail(now, f'cannot start {service.command_line()!r}: {err}')
            return
        self.manager._update(self, process=process, state='starting',
                             started=time.time())
        self.pidfd = pidfd_of(process.pid)
        self.manager._watch(self)
        self.failed_checks = 0
        self.deadline = now + service.startup_timeout
        self.next_at = now + min(STARTUP_POLL, service.health_check_interval)
        self.manager.log.info('service %s started (pid %d): %s', service.name,
                              process.pid, ' '.join(service.command_line()))

    def step(self, now: float) -> float:
        """Do what is due; return when to be called again."""
        if self.state == 'restarting':
            if now >= self.next_at:
                self.spawn(now)
            return self.next_at
        if self.state not in ('starting', 'ready', 'unhealthy'):
            return float('inf')
        assert self.process is not None     # (it runs in these states)
        code = self.process.poll()
        if code is not None:
            self.fail(now, f'exited with {describe_exit(code)}')
        elif now >= self.next_at:
            error = self.service.probe()
            if self.state == 'starting':
                self._starting(now, error)
            else:
                self._running(now, error)
        return self.next_at

    def _starting(self, now: float, error: str | None) -> None:
        service = self.service
        if error is None:
            self.manager._update(self, state='ready')
            self.manager.log.info('service %s ready at %s (pid %d)',
                                  service.name, service.address, self.pid)
            self.next_at = now + service.health_check_interval
        elif now >= self.deadline:
            self.fail(now, f'not healthy within startup_timeout='
                      f'{service.startup_timeout:g}s ({error})')
        else:
            self.next_at = now + min(STARTUP_POLL,
                                     service.health_check_interval)

    def _running(self, now: float, error: str | None) -> None:
        service = self.service
        self.next_at = now + service.health_check_interval
        if error is None:
            if self.state != 'ready':
                self.manager.log.info('service %s is healthy again',
                                      service.name)
            self.failed_checks = 0
            self.manager._update(self, state='ready')
            return
        self.failed_checks += 1
        if self.failed_checks >= UNHEALTHY_LIMIT:
            self.fail(now, f'health check failed {self.failed_checks} times '
                      f'in a row ({error})')
            return
        self.manager._update(self, state='unhealthy', last_error=error)
        self.manager.log.warning('service %s: health check failed (%s)',
                                 service.name, error)

    def fail(self, now: float, reason: str) -> None:
        """The process died or is no use: stop it, then restart or give up."""
        service = self.service
        self.terminate(service.shutdown_timeout)
        if service.restart_on_failure and self.restarts < service.max_restarts:
            self.manager._update(self, state='restarting', last_error=reason,
                                 restarts=self.restarts + 1)
            self.next_at = now + service.restart_delay
            self.manager.log.warning(
                'service %s %s; restart %d of %d in %gs', service.name, reason,
                self.restarts, service.max_restarts, service.restart_delay)
        else:
            self.manager._update(self, state='failed', last_error=reason)
            self.next_at = float('inf')
            self.manager.log.critical(
                'service %s %s; giving up after %d restarts', service.name,
                reason, self.restarts)

    def send_term(self, timeout: float) -> None:
        """Begin a graceful stop of the whole group: SIGTERM it now, and
        remember when to escalate."""
        if self.process is None:
            return
        self.stop_deadline = time.monotonic() + timeout
        signal_group(self.process.pid, signal.SIGTERM)

    def stop_finished(self, now: float) -> bool:
        """Advance a stop begun by send_term(); True once the group is gone."""
        if self.process is None:
            return True
        gone = self.process.poll() is not None and not group_exists(
            self.process.pid)
        if gone:
            self._forget_process()
            return True
        assert self.stop_deadline is not None   # (set by send_term)
        if now >= self.stop_deadline:
            self._kill()
            return True
        return False

    def terminate(self, timeout: float) -> None:
        """SIGTERM the group, wait up to `timeout`, then SIGKILL it."""
        self.send_term(timeout)
        while not self.stop_finished(time.monotonic()):
            time.sleep(STOP_POLL)

    def _kill(self) -> None:
        assert self.process is not None     # (a stop of a running process)
        name = self.service.name
        self.manager.log.warning('service %s (pid %d) did not stop in time: '
                                 'killing its process group', name, self.pid)
        signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.manager.log.error('service %s (pid %d) survived SIGKILL',
                                   name, self.pid)
        self._forget_process()

    def _forget_process(self) -> None:
        self.manager._unwatch(self)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.manager._update(self, process=None)
        self.stop_deadline = None


# -- the manager --------------------------------------------------------------

class ServiceManager:
    """Runs services for their owner: one supervision thread for all.

    `start()` returns at once; the thread starts every service, health
    checks each one every `health_check_interval`, restarts it by its
    policy (at most `max_restarts` times in the manager's life, waiting
    `restart_delay` first) and marks it 'failed' past that. A service is
    'starting' until its health check passes or `startup_timeout` expires
    (a failure). States: starting, ready, unhealthy, restarting, failed,
    stopped. `log` needs info/warning/error/critical with %-style
    arguments; it is called from the supervision thread.
    """

    # the wake-up pipe (None before start() and once the thread ended)
    _wake_reader: int | None
    _wake_writer: int | None

    def __init__(self, services: Sequence[Service],
                 log: ServiceLog | None = None) -> None:
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ValueError(f'service names must be unique: {names}')
        self.log: ServiceLog = log if log is not None else _LOG
        self._runners = [_Runner(service, self) for service in services]
        self._callbacks: list[ChangeCallback] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.ready_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_lock = threading.Lock()
        self._wake_reader = self._wake_writer = None
        self._selector: selectors.BaseSelector | None = None
        self._exit_polling = False
        self._stop_timeout: float | None = None

    @property
    def services(self) -> list[Service]:
        """The Service objects, in the order given."""
        return [runner.service for runner in self._runners]

    def on_change(self, callback: ChangeCallback) -> None:
        """Call `callback(name, state)` on every state change.

        It runs in the supervision thread, so it must be thread-safe and
        quick (e.g. write one byte to a wake-up pipe); what it raises is
        logged and ignored.
        """
        self._callbacks.append(callback)

    def start(self) -> None:
        """Start every service and the supervision thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError('ServiceManager.start() called twice')
        self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(self._wake_reader, False)
        os.set_blocking(self._wake_writer, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        with self._lock:
            for runner in self._runners:
                runner.state = 'starting'
        # The thread spawns the processes: with PR_SET_PDEATHSIG a service
        # dies with the thread that created it, and this one lives as long
        # as the manager.
        self._thread = threading.Thread(
            target=self._supervise, name='uhttp.workers.services', daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None, wait: bool = True) -> None:
        """Stop every service: SIGTERM to each process group, SIGKILL after
        `timeout` (default: each service's shutdown_timeout).

        Blocks until done, unless `wait` is False: then it returns at once,
        the 'stopped' states arrive through on_change, and `stopped` tells
        when all is over. Safe to call more than once, and from any thread.
        """
        if not self._stopping:
            self._stop_timeout = timeout
        self._stopping = True
        thread = self._thread
        if thread is None:
            return
        self._wake()
        if not wait or thread is threading.current_thread():
            return      # (from a callback: the thread stops on return)
        longest = max((s.shutdown_timeout for s in self.services), default=0)
        thread.join((longest if timeout is None else timeout) + 10)
        if thread.is_alive():
            self.log.error('services did not stop in time')

    @property
    def stopped(self) -> bool:
        """True once stop() has completed: every service process is gone."""
        return self._stopping and (
            self._thread is None or not self._thread.is_alive())

    def status(self) -> list[ServiceStatus]:
        """One dict per service: name, state, pid, restarts, max_restarts,
        address, last_error."""
        with self._lock:
            return [runner.status() for runner in self._runners]

    def status_of(self, name: str) -> ServiceStatus:
        """The status() entry of one service."""
        with self._lock:
            return self._runner(name).status()

    def states(self) -> dict[str, ServiceState]:
        """{name: state} of every service."""
        with self._lock:
            return {runner.service.name: runner.state
                    for runner in self._runners}

    def all_ready(self) -> bool:
        """True when every service is 'ready'."""
        return self.ready_event.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until every service is ready, one has failed or stopped, or
        `timeout` passes; return all_ready()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._settled(self._runners):
                remaining = None if deadline is None else \
                    deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.all_ready()

    def wait_for(self, name: str, deadline: float) -> ServiceStatus:
        """Wait (until the monotonic `deadline`) for a service to be ready,
        failed or stopped; return its status() entry."""
        with self._changed:
            runner = self._runner(name)
            while not self._settled([runner]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return runner.status()

    def _settled(self, runners: Iterable[_Runner]) -> bool:
        states = {runner.state for runner in runners}
        if states == {'ready'} or 'failed' in states:
            return True
        return 'stopped' in states and (self._stopping or self._thread is None)

    def _runner(self, name: str) -> _Runner:
        for runner in self._runners:
            if runner.service.name == name:
                return runner
        raise KeyError(f'no service named {name!r}')

    # -- used by the runners (supervision thread) -----------------------------

    def _update(self, runner: _Runner,
                **fields: Unpack[_RunnerFields]) -> None:
        """Change a runner's fields under the lock; report a state change."""
        with self._changed:
            old = runner.state
            for key, value in fields.items():
                setattr(runner, key, value)
            changed = runner.state != old
            if changed:
                self._changed.notify_all()
                ready = all(r.state == 'ready' for r in self._runners)
        if not changed:
            return
        if ready:
            self.ready_event.set()
        else:
            self.ready_event.clear()
        for callback in list(self._callbacks):
            try:
                callback(runner.service.name, runner.state)
            except Exception:  # pylint: disable=broad-except
                self.log.error('on_change callback %r failed:\n%s', callback,
                               traceback.format_exc().rstrip())

    def _watch(self, runner: _Runner) -> None:
        """Wake the supervision thread when the runner's process exits."""
        if runner.pidfd is None:
            self._exit_polling = True
        else:
            assert self._selector is not None   # (made by start())
            self._selector.register(runner.pidfd, selectors.EVENT_READ)

    def _unwatch(self, runner: _Runner) -> None:
        """Stop watching the runner's process."""
        if runner.pidfd is not None:
            assert self._selector is not None   # (made by start())
            try:
                self._selector.unregister(runner.pidfd)
            except (KeyError, ValueError):
                pass

    # -- the supervision thread -----------------------------------------------

    def _supervise(self) -> None:
        try:
            for runner in self._runners:
                if not self._stopping:
                    runner.spawn(time.monotonic())
            while not self._stopping:
                now = time.monotonic()
                due = min(runner.step(now) for runner in self._runners)
                if not self._stopping:
                    self._wait(due - time.monotonic())
        except Exception:  # pylint: disable=broad-except
            self.log.critical('service supervision failed:\n%s',
                              traceback.format_exc().rstrip())
        finally:
            self._stop_all()
            # (start() made them before it started this thread)
            assert self._selector is not None
            self._selector.close()
            with self._wake_lock:
                assert self._wake_reader is not None
                assert self._wake_writer is not None
                os.close(self._wake_reader)
                os.close(self._wake_writer)
                self._wake_reader = self._wake_writer = None

    def _wait(self, timeout: float) -> None:
        # (start() made them before it started this thread)
        assert self._selector is not None and self._wake_reader is not None
        if self._exit_polling:
            timeout = min(timeout, EXIT_POLL)
        for key, _ in self._selector.select(max(0.0, min(timeout, 3600.0))):
            if key.fd == self._wake_reader:
                try:
                    while os.read(self._wake_reader, 512):
                        pass
                except BlockingIOError:
                    pass

    def _wake(self) -> None:
        # under the lock: once the thread has closed the pipe, its number
        # may name another file
        with self._wake_lock:
            if self._wake_writer is not None:
                try:
                    os.write(self._wake_writer, b'\0')
                except BlockingIOError:
                    pass    # full: the thread has wake-ups pending anyway

    def _stop_all(self) -> None:
        limit = self._stop_timeout
        running: list[_Runner] = []
        for runner in self._runners:
            if runner.process is not None:
                runner.send_term(runner.service.shutdown_timeout
                                 if limit is None else limit)
                running.append(runner)
        while running:
            now = time.monotonic()
            running = [r for r in running if not r.stop_finished(now)]
            if running:
                time.sleep(STOP_POLL)
        for runner in self._runners:
            self._update(runner, state='stopped')
            self.log.info('service %s stopped', runner.service.name)
