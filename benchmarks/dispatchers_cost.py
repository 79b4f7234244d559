"""Several dispatchers per host: pool-route throughput, the CPU of the
dispatchers per request and that of the whole process tree, with
`dispatchers` = 1, 2, 4 (--dispatchers).

Starts a tiny app (one pool route, `GET /api/item/{id}` returning
{"id": id}) as a real process tree, warms it up, runs
`wrk -t1 -c64 -d3s` against it and reads the CPU time (utime + stime) of
the processes from /proc before and after: the dispatchers (the app process
itself for N=1, the supervisor's children otherwise) and the whole tree
(supervisor, dispatchers, workers). The settings rotate run by run so that
a slow moment of a shared machine does not favour one of them. The total of
workers is the same for each setting (--workers, split evenly between the
dispatchers, at least one each).

The dispatchers' CPU per request is what caps a host: N dispatchers serve
at most N * 1e6 / (µs per request) pool requests a second, given cores for
them and for their workers; the table prints that ceiling per dispatcher.

Run:  python benchmarks/dispatchers_cost.py [--runs 3] [--dispatchers 1,2,4]
      [--workers 4] [--duration 3]
The app alone:  python benchmarks/dispatchers_cost.py --serve PORT N WORKERS
"""

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TICKS = os.sysconf('SC_CLK_TCK')

# pylint: disable=wrong-import-position
import uhttp.workers as _workers  # noqa: E402


class ItemWorker(_workers.Worker):
    """The pool route: a small JSON answer."""
    @_workers.api('/api/item/{id:int}', 'GET')
    def item(self, request):
        return {'id': request.path_params['id']}


def serve(port, dispatchers, workers):
    """The benchmarked app (run in its own process)."""
    _workers.Dispatcher(
        port=port, address='127.0.0.1', dispatchers=dispatchers,
        access_log=False, allow_root=True, log_level=_workers.LOG_WARNING,
        pools=[_workers.WorkerPool(ItemWorker, num_workers=workers,
                                   routes=['/api/**'])]).run()


def tree(pid):
    """`pid` and every descendant of it (from /proc)."""
    pids = [pid]
    for current in pids:
        try:
            with open(f'/proc/{current}/task/{current}/children',
                      encoding='ascii') as handle:
                pids.extend(int(child) for child in handle.read().split())
        except FileNotFoundError:
            pass
    return pids


def cpu_seconds(pids):
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat', encoding='ascii') as handle:
                fields = handle.read().rsplit(')', 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def wait_ready(port, timeout=20):
    """Poll the pool route until it answers."""
    deadline = time.monotonic() + timeout
    url = f'http://127.0.0.1:{port}/api/item/1'
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError('the app did not answer')


def dispatcher_pids(app_pid, dispatchers):
    """The dispatcher processes of the app: itself, or its children."""
    if dispatchers == 1:
        return [app_pid]
    with open(f'/proc/{app_pid}/task/{app_pid}/children',
              encoding='ascii') as handle:
        children = [int(child) for child in handle.read().split()]
    if len(children) != dispatchers:
        raise RuntimeError(f'{len(children)} dispatchers, not {dispatchers}')
    return children


def wrk(port, duration, threads=1, connections=64):
    """(2xx responses, seconds) of one wrk run."""
    out = subprocess.run(
        ['wrk', f'-t{threads}', f'-c{connections}', f'-d{duration}s',
         f'http://127.0.0.1:{port}/api/item/1'],
        capture_output=True, text=True, check=True).stdout
    total = int(re.search(r'(\d+) requests in', out).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return total - (int(errors.group(1)) if errors else 0), duration


def one_run(port, dispatchers, workers, duration):
    """(2xx/s, dispatchers' CPU µs per request, tree CPU µs per request)
    of one setting."""
    app = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, __file__, '--serve', str(port), str(dispatchers),
         str(max(1, workers // dispatchers))])
    try:
        wait_ready(port)
        # the supervisor logs nothing at LOG_WARNING: wait for every
        # dispatcher to be forked, then warm up
        deadline = time.monotonic() + 20
        while True:
            try:
                fronts = dispatcher_pids(app.pid, dispatchers)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        wrk(port, 1)   # warm-up
        pids = tree(app.pid)
        before, before_fronts = cpu_seconds(pids), cpu_seconds(fronts)
        good, seconds = wrk(port, duration)
        used = cpu_seconds(pids) - before
        used_fronts = cpu_seconds(fronts) - before_fronts
        per = max(good, 1)
        return good / seconds, used_fronts / per * 1e6, used / per * 1e6
    finally:
        app.terminate()
        app.wait(20)


def median(values):
    """The middle value (the upper one of an even count)."""
    values = sorted(values)
    return values[len(values) // 2]


def main():
    """Rotate the settings, print each run and the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--serve', nargs=3, type=int,
                        metavar=('PORT', 'N', 'WORKERS'))
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--dispatchers', default='1,2,4',
                        help='the settings, comma-separated')
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--duration', type=int, default=3)
    parser.add_argument('--port', type=int, default=18095)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    settings = [int(n) for n in args.dispatchers.split(',')]
    results = {n: [] for n in settings}
    for run in range(args.runs):
        shift = run % len(settings)
        for n in settings[shift:] + settings[:shift]:
            rate, front, whole = one_run(args.port, n, args.workers,
                                         args.duration)
            results[n].append((rate, front, whole))
            print(f'run {run + 1} dispatchers={n}: {rate:8.0f} 2xx/s, '
                  f'{front:6.1f} µs dispatcher CPU/request, {whole:6.1f} µs '
                  f'tree CPU/request', flush=True)
    print(f'\nmedians of {args.runs} runs, {args.workers} workers in all, '
          f'wrk -t1 -c64 -d{args.duration}s, {os.cpu_count()} cores:')
    print('| dispatchers | 2xx/s | dispatcher CPU µs/request | '
          'tree CPU µs/request | ceiling per dispatcher (req/s) |')
    print('|---|---|---|---|---|')
    for n in settings:
        rate = median(r for r, _, _ in results[n])
        front = median(f for _, f, _ in results[n])
        whole = median(w for _, _, w in results[n])
        print(f'| {n} | {rate:.0f} | {front:.1f} | {whole:.1f} | '
              f'{1e6 / max(front, 0.1):.0f} |')


if __name__ == '__main__':
    main()
