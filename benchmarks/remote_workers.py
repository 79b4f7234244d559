"""What a remote worker host (`uhttp-workers worker`) costs and carries.

Starts a redis-server on a free 127.0.0.1 port and one host with
`--workers N` running tests/apps/remote_app.py, then plays a dispatcher:
keeps `--window` requests (GET /echo) in the stream at a time until
`--requests` are answered. Prints answered requests per second, the CPU
the host process itself (not its workers) spent per request, and its CPU
while idle. Everything runs on this machine, so the numbers include
Redis's and the client's share of the cores. `--latency MS` puts
benchmarks/latency_proxy.py between the host and Redis (MS more each way),
as when Redis runs on another machine.

Run:  python benchmarks/remote_workers.py [--requests 2000] [--workers 2]
      [--window 16] [--latency 0]
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import redis  # noqa: E402

from uhttp.workers import messages  # noqa: E402
from uhttp.workers import remote_protocol as rp  # noqa: E402

POOL = 'bench'
CONSUMER = 'bench-host'    # its alive key tells the host is up
TICKS = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid):
    """User + system CPU time of one process (Linux)."""
    with open(f'/proc/{pid}/stat', encoding='ascii') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit('timed out')
        time.sleep(0.05)


def run(args, directory):
    port = free_port()
    server = subprocess.Popen(  # pylint: disable=consider-using-with
        [shutil.which('redis-server'), '--port', str(port), '--bind',
         '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir',
         directory], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    host = proxy = None
    host_port = port
    try:
        wait_for(lambda: _pings(client), 10)
        if args.latency > 0:
            host_port = free_port()
            proxy = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, os.path.join(ROOT, 'benchmarks',
                                              'latency_proxy.py'),
                 str(host_port), str(port), str(args.latency)])
        client.xgroup_create(rp.requests_stream(POOL), rp.GROUP, id='$',
                             mkstream=True)
        log = open(os.path.join(directory, 'host.log'), 'wb')  # pylint: disable=consider-using-with
        host = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, '-m', 'uhttp.workers', 'worker',
             'remote_app:RemoteApp', '--redis',
             f'redis://127.0.0.1:{host_port}',
             '--pool', POOL, '--consumer', CONSUMER, '--workers',
             str(args.workers), '--app-dir',
             os.path.join(ROOT, 'tests', 'apps'), '--log-level', 'warning'],
            stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: client.exists(rp.alive_key(POOL, CONSUMER)), 20)
        time.sleep(1.0)     # workers ready
        idle_before = cpu_seconds(host.pid)
        time.sleep(args.idle)
        idle = cpu_seconds(host.pid) - idle_before
        busy_before = cpu_seconds(host.pid)
        started = time.perf_counter()
        answered = _drive(client, args.requests, args.window)
        elapsed = time.perf_counter() - started
        busy = cpu_seconds(host.pid) - busy_before
        print(f'{args.requests} requests, {args.workers} workers, window '
              f'{args.window}: {answered / elapsed:.0f} answers/s; host '
              f'process CPU {busy / answered * 1e6:.0f} us/request; idle '
              f'host CPU {idle / args.idle * 100:.2f} % over {args.idle}s')
        # how the host's round trips batch: reply batches (one MULTI/EXEC
        # each) and stream reads per answer (the driver makes neither)
        stats = client.info('commandstats')
        print('per answer: %.2f reply batches (EXEC), %.2f reads '
              '(XREADGROUP)' % tuple(
                  stats.get(f'cmdstat_{name}', {}).get('calls', 0)
                  / answered for name in ('exec', 'xreadgroup')))
    finally:
        if host is not None:
            host.send_signal(signal.SIGTERM)
            host.wait(30)
        client.close()
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        server.terminate()
        server.wait(10)


def _pings(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def _drive(client, total, window):
    stream = rp.requests_stream(POOL)
    replies = rp.replies_stream(POOL, 'bench')
    sent = answered = 0
    last = b'0-0'
    while answered < total:
        while sent < total and sent - answered < window:
            client.xadd(stream, rp.encode_request(
                'bench', messages.request(sent, 'GET', '/echo', None, {},
                                          None, '127.0.0.1'), 30000))
            sent += 1
        for _name, entries in client.xread({replies: last}, count=1000,
                                           block=1000) or []:
            for entry_id, fields in entries:
                last = entry_id
                if rp.decode_reply(fields)[1][0] == messages.RESPONSE:
                    answered += 1
    return answered


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=2000)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--window', type=int, default=16)
    parser.add_argument('--latency', type=float, default=0.0,
                        help='ms added each way between the host and Redis')
    parser.add_argument('--idle', type=float, default=5.0,
                        help='seconds of idle CPU measurement')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        run(args, directory)


if __name__ == '__main__':
    main()
