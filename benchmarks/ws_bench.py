#!/usr/bin/env python3
"""WebSocket benchmark: uhttp.workers (this checkout) against uvicorn.

    python benchmarks/ws_bench.py            echo 5 s x 3 rounds, 100 fan-outs
    python benchmarks/ws_bench.py --quick    echo 2 s x 1 round, 20 fan-outs

Two measurements, on both servers in the same run (2 workers each, default
options, 127.0.0.1 only):

- echo: N connections (64) each send a 64-byte text message and wait for
  it to come back, in a loop, for D seconds; round trips per second and the
  p50/p99 of one round trip.
- fan-out: 1000 connections listen; one trigger message asks the server to
  broadcast to all of them; the time from sending the trigger until the last
  listener has the message, repeated R times; p50/p99/max over the repeats.
  uhttp.workers fans out in the dispatcher (`ws_broadcast` to a group);
  uvicorn's workers share nothing, so the trigger goes to one connection in
  each worker process and each broadcasts to its own listeners.

The servers: apps/ws_workers_app.py run by this checkout's interpreter (as
run.py finds or makes it), and apps/ws_asgi_app.py under uvicorn from
benchmarks/.venvs/uvicorn (the venv run.py makes; uvicorn[standard] brings
`websockets`, which uvicorn uses for WebSocket). The load generator is this
script: one asyncio process with the `websockets` client (from the running
interpreter, or from benchmarks/.venvs/ws-driver which it then makes), every
loop bounded in count and time. The report goes to stdout and to
benchmarks/results/ws_latest.md and ws_latest.json.
"""

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time

import run

DRIVER_CHECK = ("import websockets, websockets.asyncio.client; "
                "print(websockets.__version__)")
UVICORN_CHECK = ("import uvicorn, websockets; print(uvicorn.__version__, "
                 "'(websockets', websockets.__version__ + ')')")
MESSAGE = 'x' * 64
CONNECT_BATCH = 100          # connections opened concurrently at a time
RECV_TIMEOUT = 10.0          # one answer or one broadcast, at most
CONNECT_TIMEOUT = 15.0
FIRE_ATTEMPTS = 40           # /ws/fire connections tried to reach each worker

TITLES = {'self': 'uhttp.workers (this checkout)',
          'uvicorn': 'uvicorn (raw ASGI, websockets)'}


def ensure_driver(argv):
    """Re-run this script with `argv` under an interpreter that has
    `websockets`, when the running one has not."""
    try:
        import websockets.asyncio.client  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        return
    except ImportError:
        pass
    python = run.ensure_venv('ws-driver', ['websockets>=13'], DRIVER_CHECK)
    run.log(f'websockets is not importable here: re-running under {python}')
    os.execv(python, [python, os.path.abspath(__file__), *argv])


def percentile(values, fraction):
    """The nearest-rank percentile: the smallest value with at least
    `fraction` of the values at or below it (p99 of 100 values is the
    99th, of 50 the largest)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- the load ------------------------------------------------------------------

async def _connect(url):
    from websockets.asyncio.client import connect  # pylint: disable=import-outside-toplevel
    # no compression and no pings: both servers get the same plain frames
    return await connect(url, compression=None, ping_interval=None,
                         open_timeout=CONNECT_TIMEOUT, max_queue=None)


async def _connect_many(url, count):
    """`count` open connections, opened CONNECT_BATCH at a time."""
    sockets = []
    while len(sockets) < count:
        batch = min(CONNECT_BATCH, count - len(sockets))
        sockets += await asyncio.gather(*(_connect(url)
                                          for _ in range(batch)))
    return sockets


async def _close_all(sockets):
    """Close the connections; one that fails to close stops nothing."""
    await asyncio.gather(*(sock.close() for sock in sockets),
                         return_exceptions=True)


async def echo_load(port, connections, seconds):
    """Round trips over `connections` sockets for `seconds`."""
    sockets = await _connect_many(f'ws://{run.HOST}:{port}/ws/echo',
                                  connections)
    latencies = []
    errors = []
    deadline = time.monotonic() + seconds

    async def client(sock):
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await sock.send(MESSAGE)
            answer = await asyncio.wait_for(sock.recv(), RECV_TIMEOUT)
            if answer != MESSAGE:
                errors.append(f'echo answered {answer[:40]!r}')
                return
            latencies.append(time.perf_counter() - started)

    cpu0, started = time.process_time(), time.monotonic()
    results = await asyncio.gather(*(client(sock) for sock in sockets),
                                   return_exceptions=True)
    elapsed = time.monotonic() - started
    driver_cpu = time.process_time() - cpu0
    errors += [repr(result) for result in results
               if isinstance(result, BaseException)]
    await _close_all(sockets)
    return {'round_trips': len(latencies),
            'per_s': len(latencies) / elapsed,
            'p50_ms': percentile(latencies, 0.5) * 1000 if latencies else None,
            'p99_ms': percentile(latencies, 0.99) * 1000 if latencies
            else None,
            'driver_cpu_share': driver_cpu / elapsed,
            'errors': errors[:5], 'error_count': len(errors)}


class FanOut:
    """Listeners on /ws/fan and the trigger connection(s) on /ws/fire."""

    def __init__(self, port, listeners, per_worker_trigger):
        self.base = f'ws://{run.HOST}:{port}'
        self.count = listeners
        self.per_worker_trigger = per_worker_trigger
        self.listeners = []
        self.triggers = []
        self.arrivals = []
        self.expected = None
        self.all_arrived = None
        self.readers = []

    async def open(self):
        """Connect the listeners, then the trigger(s); start reading.
        Returns the worker PIDs the listeners were greeted by."""
        self.listeners = await _connect_many(f'{self.base}/ws/fan',
                                             self.count)
        workers = set()
        for sock in self.listeners:   # each is greeted by its worker
            greeting = await asyncio.wait_for(sock.recv(), RECV_TIMEOUT)
            workers.add(json.loads(greeting)['worker'])
        await self._open_triggers(workers)
        self.readers = [asyncio.ensure_future(self._read(sock))
                        for sock in self.listeners]
        return workers

    async def _open_triggers(self, workers):
        wanted = set(workers) if self.per_worker_trigger else {None}
        reached = set()
        for _ in range(FIRE_ATTEMPTS):
            sock = await _connect(f'{self.base}/ws/fire')
            worker = json.loads(await asyncio.wait_for(sock.recv(),
                                                       RECV_TIMEOUT))['worker']
            key = worker if self.per_worker_trigger else None
            if key in wanted and key not in reached:
                reached.add(key)
                self.triggers.append(sock)
            else:
                await sock.close()
            if reached == wanted:
                return
        raise RuntimeError(f'no /ws/fire connection reached workers '
                           f'{sorted(wanted - reached)}')

    async def _read(self, sock):
        async for message in sock:
            if message == self.expected:
                self.arrivals.append(time.perf_counter())
                if len(self.arrivals) == self.count:
                    self.all_arrived.set()

    async def once(self, seq):
        """Seconds from the trigger until the last listener has it."""
        self.expected = f'fan {seq}'
        self.arrivals = []
        self.all_arrived = asyncio.Event()
        started = time.perf_counter()
        await asyncio.gather(*(sock.send(self.expected)
                               for sock in self.triggers))
        try:
            await asyncio.wait_for(self.all_arrived.wait(), RECV_TIMEOUT)
        except asyncio.TimeoutError:
            return None, len(self.arrivals)
        return self.arrivals[-1] - started, self.count

    async def close(self):
        """Close every connection and wait for the readers to end."""
        await _close_all(self.triggers + self.listeners)
        await asyncio.gather(*self.readers, return_exceptions=True)


async def fanout_load(port, listeners, repeats, per_worker_trigger):
    """`repeats` broadcasts to `listeners` sockets."""
    fan = FanOut(port, listeners, per_worker_trigger)
    try:
        workers = await fan.open()
        await fan.once(-1)   # warm-up, not counted
        times, incomplete = [], []
        for seq in range(repeats):
            seconds, reached = await fan.once(seq)
            if seconds is None:
                incomplete.append(reached)
            else:
                times.append(seconds * 1000)
            await asyncio.sleep(0.02)
    finally:
        await fan.close()
    return {'workers_seen': len(workers), 'triggers': len(fan.triggers),
            'times_ms': times, 'incomplete': incomplete}


def fanout_summary(parts):
    """One fan-out result from the parts measured in each round."""
    errors = [part['error'] for part in parts if 'error' in part]
    times = [ms for part in parts for ms in part.get('times_ms', ())]
    return {'repeats': len(times), 'errors': errors,
            'triggers': max((part.get('triggers', 0) for part in parts),
                            default=0),
            'incomplete': [n for part in parts
                           for n in part.get('incomplete', ())],
            'p50_ms': percentile(times, 0.5),
            'p99_ms': percentile(times, 0.99),
            'max_ms': max(times) if times else None}


# -- servers -------------------------------------------------------------------

def make_servers(python_self, python_uvicorn):
    """run.Server objects for this checkout's app and uvicorn's."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    for name in ('JOURNAL_STREAM', 'PYTHONPATH', 'BENCH_READY_DIR',
                 'BENCH_PROFILE_DIR'):
        env.pop(name, None)
    port = run.free_port()
    servers = [run.Server('self', 'self', port, [
        python_self, os.path.join(run.APPS, 'ws_workers_app.py'),
        '--port', str(port), '--workers', str(run.WORKERS)], env,
        title=TITLES['self'])]
    if python_uvicorn:
        port = run.free_port()
        uvicorn = os.path.join(os.path.dirname(python_uvicorn), 'uvicorn')
        servers.append(run.Server('uvicorn', 'uvicorn', port, [
            uvicorn, 'ws_asgi_app:app', '--app-dir', run.APPS,
            '--host', run.HOST, '--port', str(port),
            '--workers', str(run.WORKERS), '--lifespan', 'on',
            '--timeout-graceful-shutdown', str(int(run.SHUTDOWN_TIMEOUT)),
            '--log-level', 'warning', '--no-access-log'], env,
            title=TITLES['uvicorn']))
    return servers


def rotated(servers, round_index):
    """The servers in the order of this round."""
    shift = round_index % len(servers)
    return servers[shift:] + servers[:shift]


def measure(servers, args):
    """{key: {'echo': [per round], 'fanout': summary}}. Each round runs
    the echo, then a share of the broadcasts, on every server in turn; the
    order is rotated every round."""
    results = {server.key: {'echo': [], 'fanout': []} for server in servers}
    for round_index in range(args.rounds):
        for server in rotated(servers, round_index):
            run.log(f'round {round_index + 1}: echo on {server.key}')
            results[server.key]['echo'].append(echo_round(server, args))
        repeats = math.ceil(args.repeats / args.rounds)
        for server in rotated(servers, round_index):
            run.log(f'round {round_index + 1}: fan-out on {server.key}, '
                    f'{args.listeners} listeners, {repeats} broadcasts')
            results[server.key]['fanout'].append(fanout_round(
                server, args.listeners, repeats))
    for result in results.values():
        result['fanout'] = fanout_summary(result['fanout'])
    return results


def echo_round(server, args):
    """One echo run, with the server tree's CPU per round trip."""
    cpu0 = server.cpu_ticks()[0]
    result = asyncio.run(echo_load(server.port, args.connections,
                                   args.seconds))
    result['server_cpu_us_per_rt'] = (
        (server.cpu_ticks()[0] - cpu0) / run.CLK_TCK * 1e6
        / max(1, result['round_trips']))
    return result


def fanout_round(server, listeners, repeats):
    """One fan-out run, or {'error': ...} when it could not be made."""
    try:
        return asyncio.run(fanout_load(
            server.port, listeners, repeats,
            per_worker_trigger=server.kind == 'uvicorn'))
    except (OSError, RuntimeError, asyncio.TimeoutError) as err:
        return {'error': repr(err)}


# -- report --------------------------------------------------------------------

def _median(rows, key):
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value, digits=0):
    return '—' if value is None else f'{value:,.{digits}f}'


def _ratio(mine, theirs):
    return '—' if not mine or not theirs else f'{mine / theirs:.2f}×'


def render(report):
    """The Markdown report."""
    res, args = report['results'], report['args']
    lines = [f'Command: `{report["command"]}`  ',
             f'Machine: {report["nproc"]} cores, Python {report["python"]}; '
             f'checkout {report["commit"]}; {report["versions"]}', '',
             f'### Echo: {args["connections"]} connections, 64-byte text '
             f'messages, {args["seconds"]} s × {args["rounds"]} rounds '
             '(medians)', '',
             '| server | round trips/s | p50 ms | p99 ms | server CPU µs '
             '/ round trip | driver CPU share | errors |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for key, title in report['titles'].items():
        rows = res[key]['echo']
        lines.append(
            f'| {title} | {_fmt(_median(rows, "per_s"))} | '
            f'{_fmt(_median(rows, "p50_ms"), 2)} | '
            f'{_fmt(_median(rows, "p99_ms"), 2)} | '
            f'{_fmt(_median(rows, "server_cpu_us_per_rt"))} | '
            f'{_fmt(_median(rows, "driver_cpu_share"), 2)} | '
            f'{sum(row["error_count"] for row in rows)} |')
    lines += ['', f'### Fan-out: one broadcast to {args["listeners"]} '
              f'connections, over {args["rounds"]} rounds (time until the '
              'last listener has it)', '',
              '| server | broadcasts | p50 ms | p99 ms | max ms | triggers | '
              'incomplete | failed runs |',
              '|---|---:|---:|---:|---:|---:|---:|---|']
    for key, title in report['titles'].items():
        fan = res[key]['fanout']
        lines.append(f'| {title} | {fan["repeats"]} | '
                     f'{_fmt(fan["p50_ms"], 1)} | {_fmt(fan["p99_ms"], 1)} | '
                     f'{_fmt(fan["max_ms"], 1)} | {fan["triggers"]} | '
                     f'{len(fan["incomplete"])} | '
                     f'{"; ".join(fan["errors"]) or 0} |')
    if 'uvicorn' in res:
        mine, theirs = res['self'], res['uvicorn']
        fan_mine, fan_theirs = mine['fanout'], theirs['fanout']
        lines += ['', '### Ratios (this checkout ÷ uvicorn)', '',
                  '| echo round trips/s (>1 better) | echo p99 (<1 better) '
                  '| fan-out p50 (<1 better) | fan-out p99 (<1 better) |',
                  '|---:|---:|---:|---:|',
                  f'| {_ratio(_median(mine["echo"], "per_s"), _median(theirs["echo"], "per_s"))} '
                  f'| {_ratio(_median(mine["echo"], "p99_ms"), _median(theirs["echo"], "p99_ms"))} '
                  f'| {_ratio(fan_mine.get("p50_ms"), fan_theirs.get("p50_ms"))} '
                  f'| {_ratio(fan_mine.get("p99_ms"), fan_theirs.get("p99_ms"))} |']
    return '\n'.join(lines)


def write(report):
    text = render(report)
    print(text)
    os.makedirs(run.RESULTS, exist_ok=True)
    with open(os.path.join(run.RESULTS, 'ws_latest.md'), 'w',
              encoding='utf-8') as handle:
        handle.write(text + '\n')
    with open(os.path.join(run.RESULTS, 'ws_latest.json'), 'w',
              encoding='utf-8') as handle:
        json.dump(report, handle, indent=1, default=str)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='1 round of 2 s, 20 broadcasts')
    parser.add_argument('--rounds', type=int)
    parser.add_argument('--seconds', type=int, help='per echo run')
    parser.add_argument('--connections', type=int, default=64,
                        help='echo connections (default 64)')
    parser.add_argument('--listeners', type=int, default=1000,
                        help='fan-out connections (default 1000)')
    parser.add_argument('--repeats', type=int,
                        help='broadcasts measured (default 100, 20 quick)')
    parser.add_argument('--no-uvicorn', action='store_true',
                        help='measure this checkout alone')
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2 if args.quick else 5)
    args.repeats = args.repeats or (20 if args.quick else 100)
    # every loop is bounded: at most 10 minutes of echo in all
    if args.rounds * args.seconds > 600 or args.listeners > 5000 \
            or args.repeats > 1000:
        parser.error('bounded: rounds × seconds ≤ 600, listeners ≤ 5000, '
                     'repeats ≤ 1000')
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    ensure_driver(argv)
    import websockets  # pylint: disable=import-outside-toplevel
    python_self = run.self_python()
    python_uvicorn = None
    if not args.no_uvicorn:
        venv, packages, _check = run.PEERS['uvicorn']
        python_uvicorn = run.ensure_venv(venv, packages, UVICORN_CHECK)
    versions = [f'driver websockets {websockets.__version__}',
                'uhttp.workers ' + str(run._python_output(  # pylint: disable=protected-access
                    python_self, run.SELF_VERSION))]
    if python_uvicorn:
        versions.append('uvicorn ' + str(run._python_output(  # pylint: disable=protected-access
            python_uvicorn, UVICORN_CHECK)))
    servers = make_servers(python_self, python_uvicorn)
    try:
        failed = run.start_all(servers)
        if failed:
            run.log(f'not ready: {failed}')
            return 1
        results = measure(servers, args)
    finally:
        for server in servers:
            server.stop()
    write({'command': ' '.join(['python benchmarks/ws_bench.py', *argv]),
           'nproc': os.cpu_count(), 'python': sys.version.split()[0],
           'commit': run.git_state(), 'versions': '; '.join(versions),
           'args': vars(args), 'titles': {s.key: s.title for s in servers},
           'results': results})
    return 0


if __name__ == '__main__':
    sys.exit(main())
