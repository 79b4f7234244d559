"""A remote pool against a local pool of the same Worker class, one run.

Starts a redis-server on 127.0.0.1 (a free port, no persistence), one
dispatcher with two pools of `ItemWorker` — a local WorkerPool on
/local/** and a RemotePool on /remote/** — and the remote side, then
measures for each pool:

- round-trip latency: p50 / p99 of --requests sequential requests on one
  kept-alive connection;
- throughput: `wrk -t1 -c<clients> -d<duration>s` (bounded in time).

The remote side: `uhttp-workers worker benchmarks.remote_pool:ItemWorker
--redis URL` when this installation has that command (module
uhttp.workers.remote_worker); without it, a stand-in consumer process (a
few lines of redis-py here, built on remote_protocol) that answers each
entry itself with the bytes the worker would send. The stand-in measures
the dispatcher and the Redis transport only (no worker process behind
it): the table says which side ran.

Run:  python benchmarks/remote_pool.py [--requests 1000] [--clients 16]
      [--duration 3] [--workers 1] [--stand-in-side]
"""

import argparse
import http.client
import importlib.util
import json
import os
import re
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
import uhttp.workers as _workers  # noqa: E402
from uhttp.workers import framing, messages  # noqa: E402
from uhttp.workers import remote_protocol as proto  # noqa: E402

POOL = 'bench'


class ItemWorker(_workers.Worker):
    """The same small JSON answer under both pools' prefixes."""

    @_workers.api('/local/item/{id:int}', 'GET')
    def local_item(self, request):
        return {'id': request.path_params['id']}

    @_workers.api('/remote/item/{id:int}', 'GET')
    def remote_item(self, request):
        return {'id': request.path_params['id']}


def serve(port, redis_url, workers):
    """The benchmarked dispatcher (run in its own process)."""
    _workers.Dispatcher(
        port=port, address='127.0.0.1', access_log=False, allow_root=True,
        log_level=_workers.LOG_INFO,
        pools=[
            _workers.WorkerPool(ItemWorker, num_workers=workers,
                                routes=['/local/**'], name='local'),
            _workers.RemotePool(routes=['/remote/**'], redis_url=redis_url,
                                name=POOL, worker_class=ItemWorker),
        ]).run()


def stand_in(redis_url):
    """The remote side without uhttp-workers worker: one consumer that
    answers every entry itself (STARTED with XACK, then RESPONSE)."""
    import redis   # pylint: disable=import-outside-toplevel
    client = redis.Redis.from_url(redis_url)
    consumer = f'stand-in-{os.getpid()}'
    stream = proto.requests_stream(POOL)
    try:
        client.xgroup_create(stream, proto.GROUP, id='$', mkstream=True)
    except redis.ResponseError:
        pass    # BUSYGROUP: the dispatcher made it first
    client.sadd(proto.consumers_set(POOL), consumer)
    beat_at = 0.0
    handled = 0
    while True:
        now = time.monotonic()
        if now >= beat_at:
            client.set(proto.alive_key(POOL, consumer), proto.encode_heartbeat(
                socket.gethostname(), os.getpid(), 1, 0, handled),
                px=proto.ALIVE_TTL_MS)
            beat_at = now + proto.HEARTBEAT_INTERVAL
        found = client.xreadgroup(proto.GROUP, consumer, {stream: '>'},
                                  count=64, block=500)
        if not found:
            continue
        pipe = client.pipeline(transaction=True)
        for entry_id, fields in found[0][1]:
            dispatcher_id, _, message = proto.decode_request(fields)
            request_id, path, keep_alive = message[1], message[3], message[9]
            replies = proto.replies_stream(POOL, dispatcher_id)
            pipe.xack(stream, proto.GROUP, entry_id)
            pipe.xadd(replies, proto.encode_reply(
                consumer, proto.started(request_id, consumer)))
            body = json.dumps({'id': int(path.rsplit('/', 1)[1])}).encode()
            wire, keep_alive = framing.frame_response(
                200, {'content-type': 'application/json'}, body,
                keep_alive=keep_alive)
            pipe.xadd(replies, proto.encode_reply(consumer, messages.response(
                request_id, 200, wire, keep_alive, '/remote/item/{id:int}')))
            handled += 1
        pipe.execute()


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f'timed out waiting for {what}')
        time.sleep(0.05)


def answers(port, path):
    try:
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=2)
        connection.request('GET', path)
        status = connection.getresponse().status
        connection.close()
        return status == 200
    except OSError:
        return False


def latencies(port, path, count):
    """Seconds of `count` sequential requests on one connection."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    spent = []
    for index in range(count):
        started = time.perf_counter()
        connection.request('GET', f'{path}{index}')
        response = connection.getresponse()
        response.read()
        spent.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f'{path}: status {response.status}')
    connection.close()
    spent.sort()
    return spent[len(spent) // 2], spent[min(len(spent) - 1,
                                             int(len(spent) * 0.99))]


def throughput(port, path, clients, duration):
    """Requests per second of wrk, and its non-2xx count."""
    if shutil.which('wrk') is None:
        return None, None
    out = subprocess.run(
        ['wrk', '-t1', f'-c{clients}', f'-d{duration:g}s',
         f'http://127.0.0.1:{port}{path}1'],
        capture_output=True, text=True, timeout=duration + 30,
        check=True).stdout
    rate = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    return rate, int(errors.group(1)) if errors else 0


def remote_command(redis_url, workers, stand_in_only):
    """The remote side to start, and its label."""
    if not stand_in_only and importlib.util.find_spec(
            'uhttp.workers.remote_worker') is not None:
        return ([sys.executable, '-m', 'uhttp.workers', 'worker',
                 'remote_pool:ItemWorker', '--redis', redis_url,
                 '--pool', POOL, '--workers', str(workers),
                 '--app-dir', os.path.join(ROOT, 'benchmarks')],
                f'uhttp-workers worker, {workers} worker(s)')
    return ([sys.executable, __file__, '--stand-in', redis_url],
            'stand-in consumer (no worker process)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--requests', type=int, default=1000)
    parser.add_argument('--clients', type=int, default=16)
    parser.add_argument('--duration', type=int, default=3)
    parser.add_argument('--workers', type=int, default=1)
    parser.add_argument('--stand-in-side', action='store_true',
                        help='use the stand-in consumer even when '
                        'uhttp-workers worker exists')
    parser.add_argument('--serve', nargs=3, metavar=('PORT', 'URL', 'N'))
    parser.add_argument('--stand-in', metavar='URL')
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], int(args.serve[2]))
        return
    if args.stand_in:
        stand_in(args.stand_in)
        return
    binary = shutil.which('redis-server')
    if binary is None:
        raise SystemExit('redis-server is not installed')
    processes = []
    with tempfile.TemporaryDirectory() as directory:
        try:
            redis_port, port = free_port(), free_port()
            redis_url = f'redis://127.0.0.1:{redis_port}/0'
            processes.append(subprocess.Popen(
                [binary, '--port', str(redis_port), '--bind', '127.0.0.1',
                 '--save', '', '--appendonly', 'no', '--dir', directory],
                stdout=subprocess.DEVNULL))
            processes.append(subprocess.Popen(
                [sys.executable, __file__, '--serve', str(port), redis_url,
                 str(args.workers)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            command, label = remote_command(redis_url, args.workers,
                                            args.stand_in_side)
            processes.append(subprocess.Popen(command, cwd=ROOT,
                                              stdout=subprocess.DEVNULL))
            wait_for(lambda: answers(port, '/local/item/1'), 30, 'local pool')
            wait_for(lambda: answers(port, '/remote/item/1'), 30,
                     'remote pool')
            rows = []
            for name in ('local', 'remote'):
                path = f'/{name}/item/'
                latencies(port, path, 100)   # warm-up
                p50, p99 = latencies(port, path, args.requests)
                rate, errors = throughput(port, path, args.clients,
                                          args.duration)
                rows.append((name, p50, p99, rate, errors))
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
    print(f'remote side: {label}; local pool: {args.workers} worker(s); '
          f'{args.requests} sequential requests, wrk -t1 -c{args.clients} '
          f'-d{args.duration:g}s')
    print(f'{"pool":8} {"p50 ms":>8} {"p99 ms":>8} {"req/s":>9} {"non-2xx":>8}')
    for name, p50, p99, rate, errors in rows:
        print(f'{name:8} {p50 * 1000:8.3f} {p99 * 1000:8.3f} '
              f'{rate if rate is not None else float("nan"):9.0f} '
              f'{errors if errors is not None else "-":>8}')


if __name__ == '__main__':
    main()
