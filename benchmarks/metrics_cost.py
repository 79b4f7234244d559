"""Does enabling /metrics move the numbers? An A/B of this project alone.

Starts the benchmark app twice (without and with `--metrics`), then runs
wrk on the pool route against each in turn for several rounds, and prints
the median 2xx/s and CPU microseconds per request of each server tree.

Run:  python benchmarks/metrics_cost.py [--rounds 5] [--seconds 5]
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, 'apps', 'workers_app.py')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tree_cpu(pid):
    """utime+stime seconds of a process and its children (from /proc)."""
    total = 0.0
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat', encoding='ascii') as stat:
                    fields = stat.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(
                (int(entry), int(fields[11]) + int(fields[12])))
    todo = [pid]
    own = None
    with open(f'/proc/{pid}/stat', encoding='ascii') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
        own = int(fields[11]) + int(fields[12])
    total = own
    while todo:
        for child, ticks in children.get(todo.pop(), ()):
            total += ticks
            todo.append(child)
    return total / os.sysconf('SC_CLK_TCK')


def wrk(port, seconds):
    out = subprocess.run(
        ['wrk', '-t1', '-c32', f'-d{seconds}s',
         f'http://127.0.0.1:{port}/api/item/1'],
        capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r'(\d+) requests in', out).group(1))
    rate = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    return requests, rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--seconds', type=int, default=5)
    args = parser.parse_args()
    if shutil.which('wrk') is None:
        sys.exit('wrk is missing: apt-get install -y wrk')
    static = tempfile.mkdtemp()
    servers = {}
    for name, extra in (('without /metrics', []), ('with /metrics', ['--metrics'])):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, APP, '--port', str(port), '--static-dir', static,
             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers[name] = (port, process)
    time.sleep(3)
    results = {name: [] for name in servers}
    try:
        for round_number in range(args.rounds):
            order = list(servers)
            if round_number % 2:
                order.reverse()
            for name in order:
                port, process = servers[name]
                before = tree_cpu(process.pid)
                requests, rate = wrk(port, args.seconds)
                cpu = tree_cpu(process.pid) - before
                results[name].append((rate, 1e6 * cpu / requests))
    finally:
        for port, process in servers.values():
            process.terminate()
            process.wait(15)
        shutil.rmtree(static)
    print('| server | 2xx/s (median) | CPU µs/req (median) |')
    print('|---|---:|---:|')
    for name, rows in results.items():
        print(f'| {name} | {statistics.median(r[0] for r in rows):,.0f} | '
              f'{statistics.median(r[1] for r in rows):.0f} |')


if __name__ == '__main__':
    main()
