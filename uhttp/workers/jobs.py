"""Run-once work for a service with many processes: schedulers, periodic
clean-ups, migrations, which must run in one process at a time.

This module owns the jobs (`Job`, the `periodic` and `run_once` decorators)
and the loop that runs them while holding a lock of uhttp.workers.locks
(`JobRunner`, and `run_job_runner`, the entry point of a dedicated job
process).

Guarantee: while a lock is held as designed, at most one `JobRunner` runs
jobs. A RedisLock can be lost by a live holder: the runner stops starting
jobs as soon as the lock cannot prove it is still held, but a job already
running is not interrupted, so keep jobs shorter than the ttl or check
`context.held` in long ones.

Must never: let a job's exception end the runner, start a job without
holding the lock.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Protocol

from .locks import FileLock, Lock, LockSpec, RedisLock, make_lock

# the locks are re-exported: a job module often needs one of them too
__all__ = ['Job', 'JobContext', 'JobRunner', 'periodic', 'run_once',
           'run_job_runner', 'FileLock', 'RedisLock', 'make_lock']

ONCE_RETRY_DELAY = 30.0     # seconds before a failed run-once job runs again

_LOG = logging.getLogger(__name__)

# a job's function: called with no argument, or with a JobContext when it
# takes one positional parameter (decided by inspecting it at run time)
JobFunction = Callable[..., object]


class JobLog(Protocol):
    """What a JobRunner logs with: %-style arguments (a logging.Logger or a
    uhttp.workers Logger)."""

    def info(self, message: str, /, *args: object) -> None: ...

    def warning(self, message: str, /, *args: object) -> None: ...

    def error(self, message: str, /, *args: object) -> None: ...


class JobContext:
    """What a job function taking one argument receives."""

    def __init__(self, job: Job, lock: Lock, log: JobLog) -> None:
        self.job = job
        self.name = job.name
        self.log = log
        self._lock = lock

    @property
    def held(self) -> bool:
        """True while this runner still holds the lock: a long job can check
        it between steps and stop early when it turns False."""
        return self._lock.held


class Job:
    """A function run by the lock holder: once (`interval` None) or every
    `interval` seconds.

    `func` must be a module-level function, so that the job pickles by
    reference into a spawned runner process. It is called with no
    arguments, or with a JobContext when it takes one positional parameter.

    A periodic job runs at acquisition of the lock (`run_at_start`) or one
    interval after, then every interval (a late run shifts the next ones;
    missed runs are not caught up). A run-once job runs once per lock
    acquisition: again after a failover. With `once_ever=True` it runs once
    for good: the lock keeps a "done" marker (a file next to a FileLock, a
    key next to a RedisLock) written after it succeeded. A job that raises
    is logged and runs again at its next interval (run-once jobs: after
    `retry_delay`, default ONCE_RETRY_DELAY).
    """

    def __init__(self, func: JobFunction, interval: float | None = None,
                 name: str | None = None, run_at_start: bool = True,
                 once_ever: bool = False,
                 retry_delay: float | None = None) -> None:
        if not callable(func):
            raise TypeError(f'a job needs a function, not {func!r}')
        if interval is not None and interval <= 0:
            raise ValueError('interval must be > 0 (or None: run once)')
        if once_ever and interval is not None:
            raise ValueError('once_ever applies to run-once jobs only')
        self.func = func
        self.interval = interval
        self.name = name or func.__name__
        self.run_at_start = run_at_start
        self.once_ever = once_ever
        self.retry_delay = ONCE_RETRY_DELAY if retry_delay is None \
            else retry_delay
        # pickle finds a decorated job under the function's name (None for
        # a callable without a module: then it is rebuilt from its parts)
        self.__module__ = getattr(  # type: ignore[assignment]
            func, '__module__', None)
        self._wants_context = _takes_argument(func)

    def __reduce__(self) -> str | tuple[
            Callable[..., Job],
            tuple[JobFunction, float | None, str, bool, bool, float]]:
        module = sys.modules.get(self.__module__)
        qualname = getattr(self.func, '__qualname__', '')
        if module is not None and getattr(module, qualname, None) is self:
            return qualname     # the decorator replaced the function by us
        return (_rebuild_job, (self.func, self.interval, self.name,
                               self.run_at_start, self.once_ever,
                               self.retry_delay))

    def __repr__(self) -> str:
        every = f'every {self.interval:g}s' if self.interval else 'once'
        return f'<Job {self.name} {every}>'

    def __call__(self, context: JobContext | None = None) -> object:
        """Run the function (with `context` if it takes one)."""
        if self._wants_context:
            return self.func(context)
        return self.func()


def _rebuild_job(func: JobFunction, interval: float | None, name: str,
                 run_at_start: bool, once_ever: bool,
                 retry_delay: float) -> Job:
    return Job(func, interval, name, run_at_start, once_ever, retry_delay)


def _takes_argument(func: JobFunction) -> bool:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty for p in parameters)


def periodic(interval: float, name: str | None = None,
             run_at_start: bool = True) -> Callable[[JobFunction], Job]:
    """Decorator: make a module-level function a Job run every `interval`
    seconds by the lock holder."""
    def decorate(func: JobFunction) -> Job:
        return Job(func, interval, name, run_at_start)
    return decorate


def run_once(name: str | None = None, once_ever: bool = False,
             retry_delay: float | None = None
             ) -> Callable[[JobFunction], Job]:
    """Decorator: make a module-level function a Job run once per lock
    acquisition (or once ever, with `once_ever=True`)."""
    def decorate(func: JobFunction) -> Job:
        return Job(func, None, name, once_ever=once_ever,
                   retry_delay=retry_delay)
    return decorate


# -- the runner ---------------------------------------------------------------

class JobRunner:
    """Runs jobs in the process that holds `lock`; the others wait.

    `run()` loops until `stop()`: while not holding the lock it tries to
    take it every `poll_interval` seconds; once holding it, it runs each
    job when due and, for a lock with a `renew_interval` (Redis), renews it
    from a helper thread. When the lock is lost, jobs stop and the runner
    goes back to trying. `log` needs info/warning/error with %-style
    arguments (default: logging).
    """

    def __init__(self, jobs: Sequence[Job], lock: Lock,
                 poll_interval: float = 1.0,
                 log: JobLog | None = None) -> None:
        for job in jobs:
            if not isinstance(job, Job):
                raise TypeError(f'JobRunner runs Job objects (see periodic() '
                                f'and run_once()), not {job!r}')
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f'job names must be unique: {names}')
        self.jobs = list(jobs)
        self.lock = lock
        self.poll_interval = poll_interval
        self.log: JobLog = log if log is not None else _LOG
        self._stopped = False
        self._leading = False
        # job name -> when it runs next (monotonic), None: never again
        self._due: dict[str, float | None] = {}
        self._renewer: threading.Thread | None = None
        self._renewer_stop: threading.Event | None = None
        # a pipe, not an Event: stop() may run in a signal handler, where
        # taking a threading lock could deadlock
        self._wake_reader, self._wake_writer = os.pipe()
        os.set_blocking(self._wake_writer, False)

    def __del__(self) -> None:
        for fd in (getattr(self, '_wake_reader', None),
                   getattr(self, '_wake_writer', None)):
            if fd is not None:
                os.close(fd)

    @property
    def is_leader(self) -> bool:
        """True while this runner holds the lock."""
        return self._leading and self.lock.held

    def stop(self) -> None:
        """End run() (after the job running now, if any). Thread-safe and
        safe in a signal handler."""
        self._stopped = True
        self._wake()

    def run(self) -> None:
        """Loop until stop(); releases the lock on the way out."""
        try:
            while not self._stopped:
                if self._leading:
                    self._lead()
                elif not self._try_acquire():
                    self._wait(self.poll_interval)
        finally:
            self._let_go()

    # -- acquiring and losing -----------------------------------------------

    def _try_acquire(self) -> bool:
        try:
            acquired = self.lock.acquire()
        except Exception as err:  # pylint: disable=broad-except
            self.log.warning('cannot take lock %r: %s', self.lock, err)
            return False
        if not acquired:
            return False
        self.log.info('pid %d holds lock %r: running jobs %s', os.getpid(),
                      self.lock, ', '.join(job.name for job in self.jobs))
        self._schedule(time.monotonic())
        self._leading = True
        if self.lock.renew_interval:
            self._renewer_stop = threading.Event()
            self._renewer = threading.Thread(
                target=self._renew_loop, args=(self._renewer_stop,),
                name='uhttp.workers.lock-renewer', daemon=True)
            self._renewer.start()
        return True

    def _schedule(self, now: float) -> None:
        self._due = {}
        for job in self.jobs:
            if job.interval is None or job.run_at_start:
                self._due[job.name] = now
            else:
                self._due[job.name] = now + job.interval

    def _renew_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.lock.renew_interval):
            try:
                if self.lock.renew():
                    continue
                self.log.warning('lock %r was taken over', self.lock)
            except Exception as err:  # pylint: disable=broad-except
                self.log.warning('cannot renew lock %r: %s', self.lock, err)
                if self.lock.held:
                    continue    # still within the ttl: try again
            self._wake()
            return

    def _lost(self) -> None:
        self.log.warning('pid %d lost lock %r: jobs stop until it is taken '
                         'again', os.getpid(), self.lock)
        self._step_down()

    def _step_down(self) -> None:
        self._leading = False
        if self._renewer_stop is not None:
            self._renewer_stop.set()
        if self._renewer is not None:
            # (a renewer runs only for a lock with a renew_interval)
            self._renewer.join((self.lock.renew_interval or 0) + 5)
        self._renewer = self._renewer_stop = None

    def _let_go(self) -> None:
        leading = self._leading
        self._step_down()
        try:
            self.lock.release()
        except Exception as err:  # pylint: disable=broad-except
            self.log.warning('cannot release lock %r: %s', self.lock, err)
            return
        if leading:
            self.log.info('pid %d stopped and released lock %r', os.getpid(),
                          self.lock)

    # -- leading -------------------------------------------------------------

    def _lead(self) -> None:
        for job in self.jobs:
            if self._stopped or not self.lock.held:
                break
            due = self._due.get(job.name)
            if due is not None and time.monotonic() >= due:
                self._run(job)
        if not self.lock.held:
            self._lost()
            return
        if not self._stopped:
            self._wait(self._next_wake())

    def _next_wake(self) -> float:
        now = time.monotonic()
        pending = [due for due in self._due.values() if due is not None]
        timeout = min(pending) - now if pending else float('inf')
        if self.lock.renew_interval:
            timeout = min(timeout, self.lock.renew_interval)
        return max(0.0, timeout)

    def _run(self, job: Job) -> None:
        if job.once_ever:
            done = self._done_marker(job)
            if done is not False:   # done, or cannot tell: do not run it
                return
        started = time.monotonic()
        try:
            job(JobContext(job, self.lock, self.log))
        except Exception:  # pylint: disable=broad-except
            retry = job.interval if job.interval is not None \
                else job.retry_delay
            self.log.error('job %s failed (next try in %gs):\n%s', job.name,
                           retry, traceback.format_exc().rstrip())
            self._due[job.name] = time.monotonic() + retry
            return
        if job.interval is None:
            self._due[job.name] = None
            if job.once_ever:
                self._mark_done(job)
            self.log.info('job %s done in %.3fs', job.name,
                          time.monotonic() - started)
            return
        scheduled = self._due[job.name]
        assert scheduled is not None    # (_lead runs only a job that is due)
        due = scheduled + job.interval
        now = time.monotonic()
        if due <= now:      # ran late or long: no burst of catch-up runs
            due = now + job.interval
        self._due[job.name] = due

    def _done_marker(self, job: Job) -> bool | None:
        """True (done: never again), False (to run) or None (unknown)."""
        try:
            done = self.lock.is_done(job.name)
        except Exception as err:  # pylint: disable=broad-except
            self.log.warning('cannot tell whether job %s is done (%s); '
                             'trying again in %gs', job.name, err,
                             job.retry_delay)
            self._due[job.name] = time.monotonic() + job.retry_delay
            return None
        if done:
            self._due[job.name] = None
            self.log.info('job %s: done before, not run again', job.name)
        return bool(done)

    def _mark_done(self, job: Job) -> None:
        try:
            self.lock.mark_done(job.name)
        except Exception as err:  # pylint: disable=broad-except
            self.log.error('job %s succeeded but its done marker could not '
                           'be written: %s', job.name, err)

    # -- waiting --------------------------------------------------------------

    def _wait(self, timeout: float) -> None:
        if self._stopped:
            return
        try:
            readable, _, _ = select.select(
                [self._wake_reader], [], [], min(timeout, 3600.0))
        except InterruptedError:
            return
        if readable:
            os.set_blocking(self._wake_reader, False)
            try:
                while os.read(self._wake_reader, 512):
                    pass
            except BlockingIOError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_writer, b'\0')
        except (BlockingIOError, OSError):
            pass    # full (a wake-up is pending anyway) or closed


def _parent_gone() -> bool:
    """True when the process that started this one died before the
    parent-death signal was set (this process was handed to another)."""
    parent = multiprocessing.parent_process()
    return parent is not None and os.getppid() != parent.pid


def run_job_runner(jobs: Sequence[Job], lock_spec: LockSpec | Lock,
                   poll_interval: float = 1.0, log: JobLog | None = None,
                   log_level: int | None = None,
                   die_with_parent: bool = True) -> int:
    """Entry point of a dedicated job process (a multiprocessing target).

    Takes picklable arguments: Job objects (module-level, see Job), a lock
    spec ('file', path) or ('redis', url, key[, ttl]) (or a picklable lock)
    and an optional log object; the default logs to stderr in the format of
    uhttp.workers at `log_level` (default INFO). SIGTERM ends the loop
    after the running job and releases the lock; SIGINT is ignored (the
    owner decides). On Linux the process gets SIGTERM when its parent
    dies (`die_with_parent`).
    """
    # pylint: disable=import-outside-toplevel
    # imported here: only the job process needs them
    from .log import LOG_INFO, Logger
    from .proctitle import set_title
    from .process_group import set_parent_death_signal
    if die_with_parent:
        set_parent_death_signal(signal.SIGTERM)
        if _parent_gone():
            return 0    # the kernel will never send that signal now
    if log is None:
        log = Logger('jobs', LOG_INFO if log_level is None else log_level)
    runner = JobRunner(jobs, make_lock(lock_spec), poll_interval, log)
    signal.signal(signal.SIGTERM, lambda signum, frame: runner.stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_title('jobs')
    runner.run()
    return 0
