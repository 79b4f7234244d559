"""Several dispatchers per host: pool-route throughput and the CPU of the
whole process tree per request, with `dispatchers=1` and `dispatchers=N`.

Starts a tiny app (one pool route, `GET /api/item/{id}` returning
{"id": id}) as a real process tree, warms it up, runs
`wrk -t1 -c64 -d3s` against it and reads the CPU time of every process of
the tree (supervisor, dispatchers, workers) from /proc before and after.
The settings alternate run by run so that a slow moment of a shared machine
does not favour one of them. The total of workers is the same for each
setting (--workers, split evenly between the dispatchers).

Run:  python benchmarks/dispatchers_cost.py [--runs 3] [--dispatchers 2]
      [--workers 2] [--duration 3]
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


def wrk(port, duration):
    """(2xx responses, seconds) of one wrk run."""
    out = subprocess.run(
        ['wrk', '-t1', '-c64', f'-d{duration}s',
         f'http://127.0.0.1:{port}/api/item/1'],
        capture_output=True, text=True, check=True).stdout
    total = int(re.search(r'(\d+) requests in', out).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return total - (int(errors.group(1)) if errors else 0), duration


def one_run(port, dispatchers, workers, duration):
    """(2xx/s, tree CPU µs per request) of one setting."""
    app = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, __file__, '--serve', str(port), str(dispatchers),
         str(workers // dispatchers)])
    try:
        wait_ready(port)
        wrk(port, 1)   # warm-up
        pids = tree(app.pid)
        before = cpu_seconds(pids)
        good, seconds = wrk(port, duration)
        used = cpu_seconds(pids) - before
        return good / seconds, used / max(good, 1) * 1e6
    finally:
        app.terminate()
        app.wait(20)


def main():
    """Alternate the settings, print each run and the medians."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--serve', nargs=3, type=int,
                        metavar=('PORT', 'N', 'WORKERS'))
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--dispatchers', type=int, default=2)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--duration', type=int, default=3)
    parser.add_argument('--port', type=int, default=18095)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    settings = (1, args.dispatchers)
    results = {n: [] for n in settings}
    for run in range(args.runs):
        for n in settings if run % 2 == 0 else reversed(settings):
            rate, cpu = one_run(args.port, n, args.workers, args.duration)
            results[n].append((rate, cpu))
            print(f'run {run + 1} dispatchers={n}: {rate:8.0f} 2xx/s, '
                  f'{cpu:6.1f} µs CPU/request (whole tree)', flush=True)
    for n in settings:
        rates = sorted(r for r, _ in results[n])
        cpus = sorted(c for _, c in results[n])
        print(f'median dispatchers={n}: {rates[len(rates) // 2]:8.0f} 2xx/s, '
              f'{cpus[len(cpus) // 2]:6.1f} µs CPU/request')


if __name__ == '__main__':
    main()
