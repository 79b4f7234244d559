"""What the dispatcher owns besides workers: helper services and the job
process.

A mixin of Dispatcher. Helper services (`Service`) run under a
ServiceManager whose supervision thread does the slow work (starting
processes, health probes); it never touches the dispatcher's state. It
reports through a thread-safe queue and one byte on a wake-up pipe; the loop
then logs the records and sends the new service states to every worker, so
`self.services[name].client()` in a handler knows at once when a service is
down or has given up. Run-once and periodic jobs run in one spawned job
process, which takes a host-wide lock before running anything.

Must never block the loop on a service or let the supervision thread call
application hooks.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.process
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import messages
from .log import LOG_CRITICAL, LOG_ERROR, LOG_INFO, LOG_WARNING, format_message

if TYPE_CHECKING:
    # (imported on use at run time: see _start_services)
    from .log import Logger
    from .pool import WorkerPool
    from .service import Service, ServiceManager
    from .jobs import Job
    from .worker_handle import WorkerHandle

JOB_RESTART_DELAY = 1.0

# (name, level, message) of a log record
_Record = tuple[str, int, str]
# where the job process takes its lock: ('file', path), ('redis', url), …
JobLock = tuple[str, Any]


class _QueuedLog:
    """A logger for another thread: records wait for the dispatcher loop."""

    def __init__(self, name: str, wake: Callable[[], None]) -> None:
        self._name = name
        self._wake = wake
        self.records: collections.deque[_Record] = collections.deque()

    def _log(self, level: int, message: str, args: tuple[object, ...]) -> None:
        self.records.append((self._name, level,
                             format_message(message, args, {})))
        self._wake()

    def info(self, message: str, *args: object) -> None:
        """Queue an info record."""
        self._log(LOG_INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        """Queue a warning record."""
        self._log(LOG_WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        """Queue an error record."""
        self._log(LOG_ERROR, message, args)

    def critical(self, message: str, *args: object) -> None:
        """Queue a critical record."""
        self._log(LOG_CRITICAL, message, args)


def default_job_lock(jobs: Iterable[Job]) -> JobLock:
    """('file', path) shared by every dispatcher on the host with the same
    job names."""
    import hashlib  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
    names = ','.join(sorted(job.name for job in jobs))
    digest = hashlib.sha256(names.encode()).hexdigest()[:16]
    return ('file', os.path.join(tempfile.gettempdir(),
                                 f'uhttp-workers-jobs-{digest}.lock'))


class OwnedServices:
    """Services and the job process of a Dispatcher (mixed into it)."""

    # the Dispatcher's, used here (annotations only: nothing is defined)
    log: Logger
    _state: str
    _pools: list[WorkerPool]
    # set before _start_owned() runs
    _selector: selectors.BaseSelector
    _emit_log: Callable[[str, int, str], None]

    def _init_owned(self, services: Iterable[Service] | None,
                    jobs: Iterable[Job] | None,
                    job_lock: JobLock | None) -> None:
        self._services = list(services or [])
        names = [service.name for service in self._services]
        if len(set(names)) != len(names):
            raise ValueError(f'service names must be unique: {names}')
        self._service_manager: ServiceManager | None = None
        # name -> the status entry of ServiceManager.status()
        self._service_states: dict[str, messages.ServiceStatus] = {}
        self._wake_reader: int | None = None
        self._wake_writer: int | None = None
        self._service_log: _QueuedLog | None = None
        self._jobs = list(jobs or [])
        self._job_lock = job_lock or (
            default_job_lock(self._jobs) if self._jobs else None)
        self._job_process: multiprocessing.process.BaseProcess | None = None
        self._job_restart_at: float | None = None
        self._owned_stop_deadline: float | None = None

    @property
    def services(self) -> dict[str, Service]:
        """The helper services this dispatcher runs, by name."""
        return {service.name: service for service in self._services}

    def _start_owned(self) -> None:
        if self._services:
            self._start_services()
        if self._jobs:
            self._start_job_process()

    def _start_services(self) -> None:
        reader, writer = self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        self._selector.register(reader, selectors.EVENT_READ,
                                self._on_services_wake)
        self._service_log = _QueuedLog('services', self._wake_services)
        # imported on use: the HTTP client costs megabytes in every process
        from .service import ServiceManager  # pylint: disable=import-outside-toplevel
        manager = ServiceManager(self._services, log=self._service_log)
        manager.on_change(lambda _name, _state: self._wake_services())
        self._service_manager = manager
        manager.start()

    def _wake_services(self) -> None:
        # called from the supervision thread: one byte, never blocking
        try:
            # (None once closed: os.write raises TypeError then)
            os.write(self._wake_writer, b'\0')  # type: ignore[arg-type]
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    def _on_services_wake(self, _fileobj: object, _mask: int) -> None:
        # registered by _start_services, after it made all three
        reader, log = self._wake_reader, self._service_log
        manager = self._service_manager
        assert reader is not None and log is not None and manager is not None
        try:
            while os.read(reader, 4096):
                pass
        except BlockingIOError:
            pass
        records = log.records
        while records:
            self._emit_log(*records.popleft())
        states = {entry['name']: entry for entry in manager.status()}
        if states != self._service_states:
            self._service_states = states
            for pool in self._pools:
                for handle in pool.workers:
                    pool.send_to(handle, messages.services(states))

    def worker_started(self, pool: WorkerPool, handle: WorkerHandle) -> None:
        """A worker process was started: give it the service states."""
        if self._service_states:
            pool.send_to(handle, messages.services(self._service_states))

    def _services_settled(self) -> bool:
        manager = self._service_manager
        if manager is None:
            return True
        return all(entry['state'] in ('ready', 'failed')
                   for entry in self._service_states.values()) and \
            len(self._service_states) == len(self._services)

    # -- the job process ------------------------------------------------------

    def _start_job_process(self) -> None:
        from .jobs import run_job_runner  # pylint: disable=import-outside-toplevel
        context = multiprocessing.get_context('spawn')
        process = context.Process(
            target=run_job_runner, name='jobs',
            args=(self._jobs, self._job_lock),
            kwargs={'log_level': self.log.level})
        process.start()
        self._job_process = process
        self._job_restart_at = None
        self.log.info('job process started (pid %s, %d jobs, lock %s)',
                      process.pid, len(self._jobs), self._job_lock)

    def _supervise_owned(self, now: float) -> None:
        process = self._job_process
        if process is None or self._state != 'running':
            return
        if self._job_restart_at is not None:
            if now >= self._job_restart_at:
                self._start_job_process()
        elif not process.is_alive():
            self.log.error('job process (pid %s) exited with code %s; '
                           'restarting it in %.0fs', process.pid,
                           process.exitcode, JOB_RESTART_DELAY)
            self._job_restart_at = now + JOB_RESTART_DELAY

    # -- shutdown ---------------------------------------------------------------

    def _stop_owned(self, deadline: float) -> None:
        """Workers are gone: stop the job process and the services."""
        process = self._job_process
        # (a process that is alive has a pid)
        pid = process.pid if process is not None and process.is_alive() \
            else None
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        if self._service_manager is not None:
            self._service_manager.stop(wait=False)
        longest = max((service.shutdown_timeout
                       for service in self._services), default=0)
        self._owned_stop_deadline = max(deadline, time.monotonic()) + longest

    def _owned_stopped(self, now: float) -> bool:
        """True when the job process and every service have ended (killing
        the job process when it overruns the deadline)."""
        # set by _stop_owned, which runs first
        deadline = self._owned_stop_deadline
        assert deadline is not None
        process = self._job_process
        if process is not None and process.is_alive():
            if now < deadline:
                return False
            process.kill()
        manager = self._service_manager
        if manager is not None and not manager.stopped:
            return now >= deadline + 10
        return True

    def _close_owned(self) -> None:
        if self._job_process is not None:
            self._job_process.join(1)
            if self._job_process.exitcode is None:
                self._job_process.kill()
                self._job_process.join(1)
        if self._service_manager is not None:
            self._service_manager.stop(timeout=2)
        for fd in (self._wake_reader, self._wake_writer):
            if fd is not None:
                os.close(fd)
        self._wake_reader = self._wake_writer = None
