"""The run directory of several dispatchers per host: snapshots and the
host view merged from them.

With `dispatchers=N` (N > 1) the supervisor creates one private directory
(`tempfile.mkdtemp`, removed when it exits) and each dispatcher writes its
own snapshot there, `dispatcher-<pid>.json`: its status() and, when
metrics are on, its counters and gauges. A snapshot is written at most once
a second from the housekeeping tick, and at once when the dispatcher's
state changes (so a draining one shows as draining), always whole: written
to a temporary name, then renamed over the old one.

Any dispatcher asked for status() or scraped for metrics reads the
snapshots of the others (each at most a second old), drops those whose
process is gone (a dead dispatcher's file is ignored until the supervisor
removes it), and merges them with its own live values into one view of the
host.

This module owns the file format, the writing and reading of snapshots and
the merging of status views. It must never block the dispatcher for more
than a small local file write, and never trust a file it reads: an
unreadable or half-known one is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

# a snapshot is rewritten at most this often (seconds), unless the state
# of its dispatcher changed
SNAPSHOT_INTERVAL = 1.0
PREFIX = 'dispatcher-'
SUFFIX = '.json'
# the numbers of a pool's status() that add up over dispatchers
POOL_SUMS = ('alive_count', 'parked_count', 'queue_size', 'pending')
# the numbers of a dispatcher's status() that add up
STATUS_SUMS = ('pending', 'streams', 'parked', 'connections',
               'buffered_bytes')


def snapshot_path(run_dir: str, pid: int) -> str:
    """Where the dispatcher of process `pid` writes its snapshot."""
    return os.path.join(run_dir, f'{PREFIX}{pid}{SUFFIX}')


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HostReport:
    """One dispatcher's side of the run directory: writes its snapshot,
    reads the live ones of the others."""

    def __init__(self, run_dir: str, index: int) -> None:
        self.run_dir = run_dir
        self.index = index
        self._next_write = 0.0
        self._last_state: str | None = None

    @property
    def path(self) -> str:
        """This process's snapshot file."""
        return snapshot_path(self.run_dir, os.getpid())

    def due(self, now: float, state: str) -> bool:
        """True when the snapshot should be written now: a second has
        passed, or the state changed since the last one."""
        return now >= self._next_write or state != self._last_state

    def write(self, now: float, state: str, snapshot: Mapping[str, Any]) -> None:
        """Write this dispatcher's snapshot whole (temporary file, then
        rename). Raises OSError (the caller logs it)."""
        self._next_write = now + SNAPSHOT_INTERVAL
        self._last_state = state
        record = dict(snapshot, pid=os.getpid(), index=self.index)
        temporary = self.path + '.tmp'
        with open(temporary, 'w', encoding='utf-8') as out:
            json.dump(record, out, separators=(',', ':'))
        os.replace(temporary, self.path)

    def remove(self) -> None:
        """At exit: remove this dispatcher's snapshot."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def others(self) -> list[dict[str, Any]]:
        """The snapshots of the other live dispatchers, by index."""
        return read_snapshots(self.run_dir, exclude=os.getpid())


def read_snapshots(run_dir: str, exclude: int | None = None
                   ) -> list[dict[str, Any]]:
    """Every readable snapshot in `run_dir` whose process is alive (but
    that of `exclude`), ordered by dispatcher index, then pid."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
            continue
        pid_text = name[len(PREFIX):-len(SUFFIX)]
        if not pid_text.isdigit() or int(pid_text) == exclude \
                or not pid_alive(int(pid_text)):
            continue
        record = _read(os.path.join(run_dir, name))
        if record is not None and record.get('pid') == int(pid_text):
            found.append(record)
    found.sort(key=lambda r: (r.get('index', 0), r['pid']))
    return found


def _read(path: str) -> dict[str, Any] | None:
    # a file removed or replaced meanwhile, or not ours: skipped
    try:
        with open(path, encoding='utf-8') as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def merge_status(own: Mapping[str, Any], index: int,
                 others: list[dict[str, Any]]) -> dict[str, Any]:
    """The host view: `own` (this dispatcher's live status(), number
    `index`) and the `status` of each other snapshot, merged.

    Counts are summed; pools are merged by name (counts summed, `degraded`
    if any dispatcher's copy is, workers listed together, each with its
    `dispatcher` index); services and the job process come from the
    dispatcher that runs them. `dispatchers` lists each dispatcher's own
    figures; `state` and the keys not merged are this dispatcher's."""
    entries = [(index, os.getpid(), own)] + [
        (int(r.get('index', -1)), int(r['pid']), r['status'])
        for r in others if isinstance(r.get('status'), dict)]
    host = dict(own)
    for key in STATUS_SUMS:
        host[key] = sum(int(status.get(key, 0)) for _, _, status in entries)
    host['websockets'] = _sum_dicts(
        [status.get('websockets') or {} for _, _, status in entries])
    host['pools'] = _merge_pools(entries)
    host['services'] = next(
        (status['services'] for _, _, status in entries
         if status.get('services')), [])
    host['jobs'] = next((status['jobs'] for _, _, status in entries
                         if status.get('jobs')), None)
    host['dispatchers'] = [
        {'index': number, 'pid': pid, 'state': status.get('state'),
         **{key: status.get(key, 0) for key in STATUS_SUMS},
         'workers': sum(int(pool.get('alive_count', 0))
                        for pool in status.get('pools', ()))}
        for number, pid, status in entries]
    return host


def _sum_dicts(dicts: list[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for counts in dicts:
        for key, value in counts.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _merge_pools(entries: list[tuple[int, int, Mapping[str, Any]]]
                 ) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for number, _pid, status in entries:
        for pool in status.get('pools', ()):
            into = merged.get(pool['name'])
            if into is None:
                into = merged[pool['name']] = {
                    'name': pool['name'], 'degraded': False,
                    **{key: 0 for key in POOL_SUMS}, 'workers': []}
            into['degraded'] = into['degraded'] or bool(pool.get('degraded'))
            if pool.get('remote'):
                _merge_remote(into, pool)
                continue
            for key in POOL_SUMS:
                into[key] += int(pool.get(key, 0))
            into['workers'].extend(dict(worker, dispatcher=number)
                                   for worker in pool.get('workers', ()))
    return list(merged.values())


def _merge_remote(into: dict[str, Any], pool: Mapping[str, Any]) -> None:
    """A RemotePool's copy: its remote workers are shared by every
    dispatcher (each sees them all), so they count once and each remote
    host is listed once; requests still add up."""
    into['remote'] = True
    into.setdefault('redis', pool.get('redis'))
    into['alive_count'] = max(into['alive_count'],
                              int(pool.get('alive_count', 0)))
    for key in ('queue_size', 'pending'):
        into[key] += int(pool.get(key, 0))
    hosts = into.setdefault('hosts', [])
    known = {host.get('consumer') for host in hosts}
    hosts.extend(host for host in pool.get('hosts', ())
                 if host.get('consumer') not in known)
