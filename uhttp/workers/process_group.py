"""The process group of a service: spawning its command in a session of its
own (outputs appended to files, the parent-death signal set between fork and
exec), signalling the whole group, and telling when every member is gone.

This module owns the operating-system side of one child process and its
descendants. It must never decide when to start, restart or stop a service
(that is the manager's policy), talk HTTP to it, or block longer than one
system call, except `spawn()` which returns once the child has exec'd.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import signal
import socket as _socket
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Service

PR_SET_PDEATHSIG = 1

# libc's prctl(option, arg2): 0 on success
Prctl = Callable[[int, int], int]
# where a service's output goes: a file opened for it, subprocess.STDOUT
# (stderr merged into stdout) or None (ours, inherited)
Output = io.BufferedWriter | int | None


@functools.lru_cache(maxsize=None)
def _prctl() -> Prctl | None:
    if not sys.platform.startswith('linux'):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def set_parent_death_signal(signum: int) -> bool:
    """Linux: have the kernel send `signum` to this process when the thread
    that created it exits. Returns False where that is not available."""
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(PR_SET_PDEATHSIG, int(signum)) == 0


def _child_setup(parent_pid: int, prctl: Prctl) -> None:
    # Runs in the child between fork and exec: no imports, no locks. The
    # function was looked up in the parent for that reason.
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:
        os._exit(1)     # the parent died before prctl took effect


def _open_outputs(service: Service) -> tuple[Output, Output]:
    stdout: Output
    stderr: Output
    stdout = stderr = None
    try:
        if service.stdout:
            # pylint: disable-next=consider-using-with
            stdout = open(service.stdout, 'ab')
        if service.stderr == 'stdout':
            stderr = subprocess.STDOUT
        elif service.stderr:
            # pylint: disable-next=consider-using-with
            stderr = open(service.stderr, 'ab')
    except OSError:
        _close_outputs(stdout, stderr)
        raise
    return stdout, stderr


def _close_outputs(*files: object) -> None:
    for handle in files:
        if hasattr(handle, 'close'):
            handle.close()


def spawn(service: Service) -> subprocess.Popen[bytes]:
    """Start the service's process in its own session; return the Popen."""
    prctl = _prctl()
    setup: Callable[[], None] | None = None
    if prctl is not None:
        setup = functools.partial(_child_setup, os.getpid(), prctl)
    if service.socket:
        _remove_stale_socket(service.socket)
    stdout, stderr = _open_outputs(service)
    try:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            service.command_line(), env=dict(os.environ, **service.env),
            cwd=service.cwd, stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr, start_new_session=True, preexec_fn=setup)
    finally:
        _close_outputs(stdout, stderr)


def _remove_stale_socket(path: str) -> None:
    # A killed server leaves its socket file behind, and a new one could not
    # bind it. Only the owner spawns, so a path nobody answers on is stale.
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to every process of the group (gone or foreign: a no-op)."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def group_exists(pgid: int) -> bool:
    """True while a process of the group is alive (zombies do not count:
    they hold nothing, and reaping orphans is init's business)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir('/proc/self'):
        return True
    return any(_live_member(entry, pgid) for entry in os.listdir('/proc')
               if entry.isdigit())


def _live_member(pid: str, pgid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat', 'rb') as handle:
            fields = handle.read().rsplit(b')', 1)[1].split()
    except (OSError, IndexError):
        return False
    # after the command name: state, ppid, pgrp
    return len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b'Z'


def describe_exit(code: int) -> str:
    """'exit code 3' or 'signal SIGKILL' for a Popen returncode."""
    if code < 0:
        try:
            return f'signal {signal.Signals(-code).name}'
        except ValueError:
            return f'signal {-code}'
    return f'exit code {code}'


def pidfd_of(pid: int) -> int | None:
    """A descriptor readable once `pid` exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
