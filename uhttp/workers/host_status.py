"""The run directory of several dispatchers per host: snapshots and the
host view merged from them.

With `dispatchers=N` (N > 1) the supervisor creates one private directory
(`tempfile.mkdtemp`, removed when it exits) and each dispatcher writes its
own snapshot there, `dispatcher-<pid>.json`: its status() and, when
metrics are on, its counters and gauges. A snapshot is written at most once
a second from the housekeeping tick, at once when the dispatcher's state
changes (so a draining one shows as draining) and when its metrics are
scraped (so that no later scrape of another dispatcher shows less), always
whole: written to a temporary name, then renamed over the old one.

Any dispatcher asked for status() or scraped for metrics reads the
snapshots of the others (each at most a second old), drops those whose
process is gone (a dead dispatcher's file is ignored until the supervisor
removes it), and merges them with its own live values into one view of the
host.

Counters must not go down when a dispatcher exits, so a dispatcher writes
a last snapshot at exit (`HostReport.close`), and the supervisor, before it
reaps the process, folds that snapshot's counters into `retired.json`
(`RetiredCounts`), which lists the snapshots it folded, then removes the
snapshot. A reader reads the snapshots first and the retired file last,
and skips the snapshots that file lists: each dispatcher's counts are then
taken once, from its snapshot or from the retired file, never neither.

This module owns the file format, the writing and reading of snapshots and
of the retired counters, and the merging of status views. It must never
block the dispatcher for more than a small local file write, and never
trust a file it reads: an unreadable or half-known one is skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, cast

from .metrics import Snapshot, counters_of, merge_snapshots

# a snapshot is rewritten at most this often (seconds), unless the state
# of its dispatcher changed
SNAPSHOT_INTERVAL = 1.0
PREFIX = 'dispatcher-'
SUFFIX = '.json'
# the counters of the dispatchers that exited (written by the supervisor)
RETIRED = 'retired.json'
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
        # names this process's snapshots apart from those of an earlier
        # process with the same pid (the retired file lists tokens)
        self.token = f'{os.getpid()}-{time.time_ns()}'
        self._last: dict[str, Any] = {}

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
        self._last = dict(snapshot)
        self._write(self._last)

    def _write(self, snapshot: Mapping[str, Any]) -> None:
        record = dict(snapshot, pid=os.getpid(), index=self.index,
                      token=self.token)
        _write_whole(self.path, record)

    def close(self, metrics: Snapshot | None) -> None:
        """At exit: leave this dispatcher's final `metrics` (None when
        metrics are off) for the supervisor to fold into the retired
        counters; without metrics, remove the snapshot. Raises OSError
        (the caller logs it)."""
        if metrics is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        self._write(dict(self._last, metrics=metrics))

    def others(self) -> list[dict[str, Any]]:
        """The snapshots of the other live dispatchers, by index."""
        return read_snapshots(self.run_dir, exclude=os.getpid())

    def peer_metrics(self) -> list[Snapshot]:
        """The metrics of the other live dispatchers, and the counters of
        those that exited: what a scrape adds to this one's own."""
        records, retired = read_host(self.run_dir, exclude=os.getpid())
        found = [cast(Snapshot, record['metrics']) for record in records
                 if isinstance(record.get('metrics'), dict)]
        if retired is not None and isinstance(retired.get('metrics'), dict):
            found.append(cast(Snapshot, retired['metrics']))
        return found


class RetiredCounts:
    """The supervisor's side of the run directory: folds the counters of
    each dispatcher that exited into the retired file, and removes its
    snapshot."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.metrics: Snapshot | None = None
        # token -> pid of the snapshots folded whose file may remain
        self._folded: dict[str, int] = {}

    @property
    def path(self) -> str:
        """The retired counters' file."""
        return os.path.join(self.run_dir, RETIRED)

    def fold(self, pid: int) -> None:
        """Dispatcher `pid` exited (not reaped yet, so that readers still
        count its snapshot): add its counters to the retired file, then
        remove its snapshot. Raises OSError, or ValueError for a snapshot
        that cannot be folded (it is removed all the same)."""
        path = snapshot_path(self.run_dir, pid)
        record = _read(path)
        try:
            if record is not None and record.get('pid') == pid \
                    and isinstance(record.get('metrics'), dict):
                self._add(record)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass   # never written, or removed at exit (metrics off)

    def _add(self, record: dict[str, Any]) -> None:
        token = record.get('token')
        if not isinstance(token, str):
            raise ValueError('a snapshot without its token')
        try:
            dead = counters_of(cast(Snapshot, record['metrics']))
            total = dead if self.metrics is None else merge_snapshots(
                [self.metrics, dead])
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ValueError(f'malformed metrics: {err!r}') from None
        # the tokens of snapshots already removed need no longer be listed
        self._folded = {
            known: known_pid for known, known_pid in self._folded.items()
            if os.path.exists(snapshot_path(self.run_dir, known_pid))}
        self._folded[token] = int(record['pid'])
        self.metrics = total
        _write_whole(self.path, {'metrics': total,
                                 'folded': sorted(self._folded)})


def read_snapshots(run_dir: str, exclude: int | None = None
                   ) -> list[dict[str, Any]]:
    """Every readable snapshot in `run_dir` whose process is alive and
    whose counters were not folded into the retired file (but that of
    `exclude`), ordered by dispatcher index, then pid."""
    return read_host(run_dir, exclude)[0]


def read_host(run_dir: str, exclude: int | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The snapshots of read_snapshots() and the retired file (None when
    there is none yet), read in the order that counts each dispatcher
    once: the snapshots first, then the retired file."""
    found = _live_snapshots(run_dir, exclude)
    retired = _read(os.path.join(run_dir, RETIRED))
    folded = retired.get('folded') if retired is not None else None
    if not isinstance(folded, list):
        return found, retired
    skipped = {token for token in folded if isinstance(token, str)}
    return [r for r in found if r.get('token') not in skipped], retired


def _live_snapshots(run_dir: str, exclude: int | None
                    ) -> list[dict[str, Any]]:
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


def _write_whole(path: str, record: Mapping[str, Any]) -> None:
    # readers see the old file or the new one, never half of one
    temporary = path + '.tmp'
    with open(temporary, 'w', encoding='utf-8') as out:
        json.dump(record, out, separators=(',', ':'))
    os.replace(temporary, path)


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
