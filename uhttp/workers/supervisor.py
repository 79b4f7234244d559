"""Several dispatchers per host: the supervisor process of `dispatchers=N`.

One dispatcher is one Python process, so its CPU per request caps a host at
one core. With `Dispatcher(dispatchers=N)` (N > 1) `run()` becomes this
supervisor: it binds the listening socket once (a bind error is still one
line and exit status 1), then forks N dispatcher processes that serve on
that inherited socket, each with its own pools of workers. The kernel hands
each new connection to whichever dispatcher accepts it first.

What runs once per host: dispatcher 0 alone starts the owned services and
the job process (a restarted dispatcher 0 starts them again); the workers of
the other dispatchers reach the services by their health checks.

Signals: SIGTERM/SIGINT (graceful) and SIGQUIT (immediate) go to every
dispatcher, and the supervisor exits 0 once all have exited; SIGTTIN,
SIGTTOU and SIGUSR1 are forwarded to each, to a replacement starting in a
roll and to those still exiting (a new dispatcher ignores them until it
has its handlers, rather than die or stop of them). SIGHUP replaces the
dispatchers one at a time (a rolling restart, `_Roll`): for each slot a
new dispatcher starts on the same socket with fresh workers; once it is
ready (it sends the supervisor SIGUSR2) the old one gets SIGUSR2, which
tells it to hand over: it stops accepting, serves the requests of the
connections it has open (closing each after its answer) and exits; then
the next slot. A replacement that exits or is not ready in time
(`ready_timeout`, from its pools' settings) is stopped, the old
dispatcher keeps serving and the roll ends there; one that does not exit
after its shutdown_timeout and RETIRE_GRACE gets SIGKILL, as does any
dispatcher left out of a slot (a roll cut short by a stop). Dispatcher 0, when it runs
owned services or jobs, is stopped before its replacement starts (two would
fight over the services' ports); the other dispatchers serve meanwhile. A
SIGHUP during a roll is ignored with a warning. SIGUSR2 sent to the
supervisor by anyone but a replacement is ignored with a warning;
daemon=True is refused at start. A dispatcher that dies otherwise is
restarted after a back-off that grows while it keeps dying young. A
supervisor that is killed outright takes its dispatchers with it (they get
SIGTERM from the kernel and stop gracefully).

The supervisor also creates the run directory where each dispatcher writes
its status and metrics snapshot (see host_status); before it reaps a
dispatcher that exited, it folds that one's counters into the retired
counters there (so that the host's counters never go down) and removes
its snapshot; it removes the directory when it exits.

The supervisor owns only the listening socket, the pid file, the run
directory and the list of its children. It must never serve a request,
start a worker, or poll: it sleeps in sigtimedwait() until a signal, a
child's exit or its next deadline wakes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .host_status import RetiredCounts
from .process_group import set_parent_death_signal
from .proctitle import set_title
from .systemd import listen_sockets
from .unixsocket import UnixListener, unix_path

if TYPE_CHECKING:
    from .dispatcher import Dispatcher
    from .pool import WorkerPool
    from .service import Service

# the signals the supervisor waits for (blocked, then taken by sigwait)
WAITED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
          signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
          signal.SIGCHLD)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# forwarded to every dispatcher process (their default action would stop
# or end a dispatcher that has no handler yet)
FORWARDED = (signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)
# restart back-off: FIRST_DELAY * 2**(deaths in a row), at most MAX_DELAY;
# a dispatcher that lived HEALTHY_AFTER seconds starts the count anew
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 10.0
# seconds a replacement has to become ready during a rolling restart, at
# least: more when its pools may take longer (see ready_timeout)
READY_TIMEOUT = 60.0
# seconds a replaced (or given up) dispatcher has to exit, past its
# shutdown_timeout, before SIGKILL
RETIRE_GRACE = 10.0
# a signal mask, as pthread_sigmask() returns it
_Mask = set[int | signal.Signals]


def restart_delay(young_deaths: int) -> float:
    """Seconds to wait before restarting a dispatcher that died young
    `young_deaths` times in a row (1 for the first)."""
    return float(min(MAX_DELAY,
                     FIRST_DELAY * 2 ** max(0, young_deaths - 1)))


def ready_timeout(pools: Iterable[WorkerPool],
                  services: Iterable[Service] = ()) -> float:
    """Seconds a new dispatcher with `pools` (and, for dispatcher 0, the
    owned `services`) may take to be ready: every worker set up (up to its
    pool's setup_timeout, the starts paced by start_worker_delay) and every
    service started (startup_timeout); READY_TIMEOUT at least."""
    workers = max((pool.setup_timeout + pool.num_workers * (
        pool.start_worker_delay + pool.start_worker_delay_rand)
        for pool in pools), default=0.0)
    started = max((service.startup_timeout for service in services),
                  default=0.0)
    return max(READY_TIMEOUT, float(workers + started))


class _Slot:
    """Dispatcher number `index`: its process and its restart record."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.started = 0.0
        self.young_deaths = 0
        self.restart_at: float | None = None


class _Roll:
    """A rolling restart of the dispatchers (SIGHUP), one slot at a time.

    `phase` of the current slot:
    'starting'   its replacement (`new_pid`) runs, not ready yet;
    'retiring'   the replacement took the slot, the old one (`old_pid`)
                 hands over and exits;
    'vacating'   (dispatcher 0 with services or jobs) the old one exits
                 before its replacement starts;
    'restarting' (after 'vacating') the replacement holds the slot and is
                 not ready yet.
    """

    def __init__(self, todo: list[int]) -> None:
        self.todo = todo
        self.slot: _Slot | None = None
        self.phase = ''
        self.new_pid: int | None = None
        self.old_pid: int | None = None
        self.deadline: float | None = None
        # seconds the replacement of the current slot has to be ready
        self.ready_timeout = READY_TIMEOUT

    def pids(self) -> list[int]:
        """The processes of the roll that are not in a slot."""
        return [pid for pid in (self.new_pid, self.old_pid)
                if pid is not None
                and (self.slot is None or pid != self.slot.pid)]


class Supervisor:
    """Binds once, forks `dispatcher.dispatchers` dispatchers, keeps them."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.log = dispatcher.log
        self._slots = [_Slot(i) for i in range(dispatcher.dispatchers)]
        self._listener: socket.socket | None = None
        self._unix_listener: UnixListener | None = None
        self._stopping = False
        self._roll: _Roll | None = None
        # dispatchers out of any slot that must still exit (a replacement
        # given up, a roll cut short by a stop signal): pid -> when it gets
        # SIGKILL (None: it got it)
        self._strays: dict[int, float | None] = {}
        self._run_dir: str | None = None
        self._retired: RetiredCounts | None = None
        self._old_mask: _Mask = set()
        if dispatcher._daemon is not None:  # pylint: disable=protected-access
            raise SystemExit('daemon=True is not supported with several '
                             'dispatchers yet: run the supervisor under a '
                             'service manager instead')
        # the pid file names the supervisor: the dispatchers write none
        self._pid_file = dispatcher._pid_file  # pylint: disable=protected-access
        dispatcher._pid_file = None  # pylint: disable=protected-access

    def run(self) -> None:
        """Serve with N dispatchers until every one has exited after a
        stop signal."""
        self._bind()
        try:
            self._run_dir = tempfile.mkdtemp(prefix='uhttp-workers-')
            self._retired = RetiredCounts(self._run_dir)
            if self._pid_file is not None:
                self._pid_file.create()
            set_title(f'supervisor of {len(self._slots)} dispatchers')
            self._supervise()
        finally:
            self._close()
        self.log.info('supervisor (pid %d): every dispatcher has exited',
                      os.getpid())

    def _supervise(self) -> None:
        # blocked, the signals wait for sigtimedwait(): no handler, no race
        old_mask = self._old_mask = signal.pthread_sigmask(
            signal.SIG_BLOCK, WAITED)
        try:
            for slot in self._slots:
                self._fork(slot)
            self.log.info('supervisor (pid %d) started %d dispatchers',
                          os.getpid(), len(self._slots))
            while not self._stopping or self._running():
                self._wait_once()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    # -- binding ------------------------------------------------------------------

    def _bind(self) -> None:
        # imported here: dispatcher imports this module on use only
        from .dispatcher import _listen_error  # pylint: disable=import-outside-toplevel
        dispatcher = self._dispatcher
        inherited = next(iter(listen_sockets()), None)
        try:
            if inherited is not None:
                self._listener = inherited
                return
            path = unix_path(dispatcher.address)
            if path is not None:
                self._unix_listener = UnixListener(path)
                self._listener = self._unix_listener.bind(
                    dispatcher.listen_backlog)
                return
            self._listener = _tcp_listener(dispatcher.address,
                                           dispatcher.port,
                                           dispatcher.listen_backlog)
        except OSError as err:
            message = _listen_error(dispatcher.address, dispatcher.port, err)
            if dispatcher.log_file:   # stderr gets it from SystemExit
                self.log.error('%s', message)
            raise SystemExit(message) from None

    # -- children -----------------------------------------------------------------

    def _fork(self, slot: _Slot) -> None:
        slot.pid = self._fork_dispatcher(slot.index)
        slot.started = time.monotonic()
        slot.restart_at = None

    def _fork_dispatcher(self, index: int) -> int:
        """Start dispatcher number `index`; its pid."""
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            # a supervisor killed outright leaves no dispatcher behind: each
            # gets SIGTERM and stops gracefully
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != parent:
                os._exit(0)  # pylint: disable=protected-access
            for signum in FORWARDED:   # until the dispatcher handles them
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            _serve_as_dispatcher(self._dispatcher, index, self._listener,
                                 self._run_dir)
        self.log.info('dispatcher %d started (pid %d)', index, pid)
        return pid

    def _running(self) -> bool:
        return bool(self._children())

    def _children(self) -> list[int]:
        """Every dispatcher process: in a slot, of the roll, stray."""
        pids = [slot.pid for slot in self._slots if slot.pid is not None]
        if self._roll is not None:
            pids.extend(self._roll.pids())
        return pids + sorted(set(self._strays) - set(pids))

    def _wait_once(self) -> None:
        timeout = self._next_wake_in()
        info: signal.struct_siginfo | None
        if timeout is None:
            info = signal.sigwaitinfo(WAITED)
        else:
            info = signal.sigtimedwait(WAITED, timeout)
        if info is not None:
            self._on_signal(signal.Signals(info.si_signo), info.si_pid)
        self._reap()
        self._roll_deadline()
        self._kill_overdue_strays()
        self._restart_due()

    def _next_wake_in(self) -> float | None:
        due = [slot.restart_at for slot in self._slots
               if slot.restart_at is not None]
        due.extend(at for at in self._strays.values() if at is not None)
        if self._roll is not None and self._roll.deadline is not None:
            due.append(self._roll.deadline)
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _on_signal(self, signum: signal.Signals, sender: int) -> None:
        if signum == signal.SIGCHLD:
            return   # reaped by the caller
        if signum == signal.SIGUSR2:
            self._on_ready_note(sender)
            return
        if signum == signal.SIGHUP:
            self._begin_roll()
            return
        if signum in STOPPING:
            self._stopping = True
            for slot in self._slots:
                slot.restart_at = None
            if self._roll is not None:
                for pid in self._roll.pids():
                    self._stray(pid)
                self._roll = None
                self.log.warning('supervisor: rolling restart cut short')
            self.log.info('supervisor: %s, stopping every dispatcher',
                          signum.name)
        for pid in self._children():
            _kill(pid, signum)

    # -- rolling restart (SIGHUP) -------------------------------------------------

    def _begin_roll(self) -> None:
        if self._stopping:
            return
        if self._roll is not None:
            self.log.warning('SIGHUP ignored: a rolling restart of the '
                             'dispatchers is under way')
            return
        self.log.info('supervisor: SIGHUP, replacing the %d dispatchers '
                      'one at a time', len(self._slots))
        self._roll = _Roll([slot.index for slot in self._slots])
        self._roll_next()

    def _roll_next(self) -> None:
        """Begin the next slot of the roll, or end it."""
        roll = self._roll
        assert roll is not None
        roll.new_pid = roll.old_pid = roll.deadline = None
        while roll.todo:
            slot = roll.slot = self._slots[roll.todo.pop(0)]
            if slot.pid is None:
                continue   # dead, restarted fresh by its back-off anyway
            now = time.monotonic()
            if slot.index == 0 and self._owns_services():
                roll.phase, roll.old_pid = 'vacating', slot.pid
                roll.deadline = now + self._retire_timeout()
                slot.pid = None   # its exit must not count as a death
                self.log.info('dispatcher 0 (pid %d) hands over its '
                              'services: stopping it before its replacement '
                              'starts', roll.old_pid)
                _kill(roll.old_pid, signal.SIGUSR2)
                return
            roll.ready_timeout = self._ready_timeout(slot.index)
            roll.phase, roll.deadline = 'starting', now + roll.ready_timeout
            roll.new_pid = self._fork_dispatcher(slot.index)
            return
        self._roll = None
        self.log.info('rolling restart of the dispatchers done')

    def _owns_services(self) -> bool:
        # dispatcher 0 runs them (see Dispatcher._start)
        dispatcher = self._dispatcher
        return bool(dispatcher._services  # pylint: disable=protected-access
                    or dispatcher._jobs)  # pylint: disable=protected-access

    def _ready_timeout(self, index: int) -> float:
        # (dispatcher 0 alone starts the owned services)
        dispatcher = self._dispatcher
        services = dispatcher._services  # pylint: disable=protected-access
        return ready_timeout(dispatcher.pools,
                             services if index == 0 else [])

    def _retire_timeout(self) -> float:
        return float(self._dispatcher.shutdown_timeout) + RETIRE_GRACE

    def _on_ready_note(self, sender: int) -> None:
        """SIGUSR2: from a replacement, it is ready; from anyone else, an
        operator's (replacing the supervisor is not supported)."""
        roll = self._roll
        if roll is not None and sender == roll.new_pid \
                and roll.phase in ('starting', 'restarting'):
            self._replacement_ready(roll)
        elif sender not in [slot.pid for slot in self._slots] \
                and sender not in self._strays:
            self.log.warning('SIGUSR2 ignored: send SIGHUP to replace the '
                             'dispatchers one at a time')
        # else: the note of a dispatcher nobody waits for (restarted after
        # a crash, or a replacement given up)

    def _replacement_ready(self, roll: _Roll) -> None:
        slot = roll.slot
        assert slot is not None and roll.new_pid is not None
        self.log.info('dispatcher %d: replacement (pid %d) is ready',
                      slot.index, roll.new_pid)
        if roll.phase == 'restarting':
            self._roll_next()
            return
        old, slot.pid = slot.pid, roll.new_pid
        slot.started, slot.young_deaths = time.monotonic(), 0
        slot.restart_at = None
        if old is None:   # the old one died meanwhile
            self._roll_next()
            return
        roll.phase, roll.old_pid = 'retiring', old
        roll.deadline = time.monotonic() + self._retire_timeout()
        _kill(old, signal.SIGUSR2)

    def _roll_exit(self, roll: _Roll, pid: int, how: str) -> None:
        """A process of the roll outside any slot exited."""
        slot = roll.slot
        assert slot is not None
        if pid == roll.old_pid:
            self.log.info('dispatcher %d (pid %d) replaced: %s', slot.index,
                          pid, how)
            if roll.phase == 'vacating':
                self._fork(slot)
                roll.phase, roll.new_pid = 'restarting', slot.pid
                roll.old_pid = None
                roll.ready_timeout = self._ready_timeout(slot.index)
                roll.deadline = time.monotonic() + roll.ready_timeout
            else:
                self._roll_next()
            return
        # the replacement ('starting') ended before it was ready
        self._give_up_roll(f'its replacement (pid {pid}) {how} before it '
                           'was ready')

    def _give_up_roll(self, why: str) -> None:
        roll = self._roll
        assert roll is not None and roll.slot is not None
        slot = roll.slot
        self._roll = None
        kept = f'keeping pid {slot.pid}' if slot.pid is not None \
            else 'it is restarted'
        self.log.error('dispatcher %d: %s; %s; rolling restart stopped',
                       slot.index, why, kept)
        if slot.pid is None and slot.restart_at is None:
            self._schedule_restart(slot)

    def _roll_deadline(self) -> None:
        roll = self._roll
        if roll is None or roll.deadline is None or \
                time.monotonic() < roll.deadline:
            return
        slot = roll.slot
        assert slot is not None
        if roll.phase == 'starting':
            assert roll.new_pid is not None
            self._stray(roll.new_pid, signal.SIGTERM)
            self._give_up_roll(f'its replacement (pid {roll.new_pid}) was '
                               f'not ready within {roll.ready_timeout:.0f}s')
        elif roll.phase == 'restarting':
            self._give_up_roll(f'pid {slot.pid} was not ready within '
                               f'{roll.ready_timeout:.0f}s')
        else:   # 'retiring', 'vacating'
            assert roll.old_pid is not None
            self.log.error('dispatcher %d (pid %d) did not exit in %.0fs '
                           'after handing over: killing it', slot.index,
                           roll.old_pid, self._retire_timeout())
            _kill(roll.old_pid, signal.SIGKILL)
            roll.deadline = None   # its exit ends the wait

    def _stray(self, pid: int, signum: int | None = None) -> None:
        """Dispatcher `pid` must exit (sent `signum` now, if given): it
        gets SIGKILL if it has not after its shutdown_timeout and
        RETIRE_GRACE."""
        self._strays.setdefault(pid, time.monotonic() + self._retire_timeout())
        if signum is not None:
            _kill(pid, signum)

    def _kill_overdue_strays(self) -> None:
        now = time.monotonic()
        for pid, kill_at in self._strays.items():
            if kill_at is not None and now >= kill_at:
                self.log.error('dispatcher (pid %d) did not exit in %.0fs: '
                               'killing it', pid, self._retire_timeout())
                _kill(pid, signal.SIGKILL)
                self._strays[pid] = None   # its exit ends the wait

    def _reap(self) -> None:
        while True:
            found = _exited_child()
            if found is None:
                return
            pid, status = found
            # folded while the process is a zombie: readers count its
            # snapshot until the retired file has its counters
            self._fold_snapshot(pid)
            if status is None:
                _, status = os.waitpid(pid, 0)   # (it has exited: no wait)
            self._child_exited(pid, status)

    def _child_exited(self, pid: int, status: int) -> None:
        for slot in self._slots:
            if slot.pid == pid:
                self._exited(slot, status)
                return
        code = os.waitstatus_to_exitcode(status)
        how = f'killed by signal {-code}' if code < 0 else \
            f'exited with status {code}'
        if pid in self._strays:
            del self._strays[pid]
            self.log.info('dispatcher (pid %d) %s', pid, how)
        elif self._roll is not None and pid in self._roll.pids():
            self._roll_exit(self._roll, pid, how)

    def _fold_snapshot(self, pid: int) -> None:
        if self._retired is None:
            return
        try:
            self._retired.fold(pid)
        except (OSError, ValueError) as err:
            self.log.error('dispatcher (pid %d): its counters are lost to '
                           'the host\'s metrics: %s', pid, err)

    def _exited(self, slot: _Slot, status: int) -> None:
        slot.pid = None
        code = os.waitstatus_to_exitcode(status)
        how = f'killed by signal {-code}' if code < 0 else \
            f'exited with status {code}'
        if self._stopping:
            self.log.info('dispatcher %d %s', slot.index, how)
            return
        roll = self._roll
        if roll is not None and roll.slot is slot:
            if roll.phase == 'starting':
                self.log.error('dispatcher %d %s; its replacement (pid %s) '
                               'takes over when ready', slot.index, how,
                               roll.new_pid)
                return
            if roll.phase == 'restarting':
                self._roll = None
                self.log.error('dispatcher %d: its replacement %s before it '
                               'was ready; rolling restart stopped',
                               slot.index, how)
        self._schedule_restart(slot, how)

    def _schedule_restart(self, slot: _Slot, how: str = 'is gone') -> None:
        lived = time.monotonic() - slot.started
        slot.young_deaths = 1 if lived >= HEALTHY_AFTER \
            else slot.young_deaths + 1
        delay = restart_delay(slot.young_deaths)
        slot.restart_at = time.monotonic() + delay
        self.log.error('dispatcher %d %s; restarting it in %.1fs',
                       slot.index, how, delay)

    def _restart_due(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._fork(slot)

    def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._unix_listener is not None:
            self._unix_listener.remove()
        if self._pid_file is not None:
            self._pid_file.remove()
        if self._run_dir is not None:
            try:
                shutil.rmtree(self._run_dir)
            except OSError as err:
                self.log.warning('cannot remove the run directory %s: %s',
                                 self._run_dir, err)


def _tcp_listener(address: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket bound as uhttp-server binds its own."""
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _exited_child() -> tuple[int, int | None] | None:
    """(pid, None) of a child that exited, left unreaped (a zombie), or
    (pid, wait status) where it cannot be left so; None when none has."""
    if not hasattr(os, 'waitid'):
        # (no waitid, e.g. macOS: reaped at once, its snapshot is skipped
        # by readers for the moment until it is folded)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        return None if pid == 0 else (pid, status)
    try:
        info = os.waitid(os.P_ALL, 0,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return None if info is None or info.si_pid == 0 else (info.si_pid, None)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass   # it exited; the reaper hears of it


def _serve_as_dispatcher(dispatcher: Dispatcher, index: int,
                         listener: socket.socket | None,
                         run_dir: str | None) -> None:
    """In a forked child: serve as dispatcher `index`, then leave the
    process (never return into the supervisor's code)."""
    code = 1
    try:
        dispatcher.serve_supervised(index, listener, run_dir)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (
            0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # pylint: disable=broad-except
        # the child must end here whatever happened: say why first
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access
