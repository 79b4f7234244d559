"""Benchmark app for uhttp.workers — the same file runs on this project (2.x,
from the checkout) and on the PyPI peer uhttp-workers 1.8.1.

Both implementations share the public API used here: Worker + @api,
Dispatcher + @sync, WorkerPool, static_routes, DEFERRED, request.
response_stream() / send_event(), Worker.on_disconnect, pool.send_config() →
Worker.on_config, pool.status() and Dispatcher._pending. Only the tuning
keywords of the Dispatcher differ (1.8.1 hands unknown keywords to its
HttpServer), so they are chosen by the installed version below.

This project runs with its public defaults: only `shutdown_timeout` is set
(5 s, the graceful timeout every server of the benchmark gets). 1.8.1 is
given this project's defaults where its own differ (listen backlog 1024
instead of 8, 10000 connections instead of 32, 1000 requests per keep-alive
connection instead of 100, 10 s request timeout, 1 MiB bodies), so both
implementations run under the same limits; max_pending is 1000 on both (the
default of each).

Routes:
  GET  /health               @sync, in the dispatcher
  GET  /monitor              @sync: pending count and pool statuses
  POST /broadcast            @sync: {"seq": n} -> every worker's on_config()
                             sends one SSE event to each of its subscribers
  GET  /static/file4k.bin    static_routes
  GET  /api/item/{id:int}    pool: {"id": id}
  POST /api/echo             pool: the JSON body back
  GET  /api/work/{ms:int}    pool: burn ms milliseconds of CPU time
  GET  /api/sleep/{ms:int}   pool: sleep ms milliseconds (holds its worker,
                             burns no CPU)
  GET  /api/sse              pool: SSE subscription (DEFERRED stream)

Run: python workers_app.py --port 18081 --workers 2 --static-dir DIR

BENCH_PROFILE_DIR=dir (this project only): the dispatcher runs under cProfile
(dispatcher.prof) and each worker enables cProfile in setup() and writes
worker-<id>.prof when its process exits (multiprocessing finalizer + atexit,
so it works whether the worker was forked or spawned).
"""

import argparse
import atexit
import importlib.metadata
import os
import time

import uhttp.workers as _workers

IMPL_VERSION = importlib.metadata.version('uhttp-workers')
IS_PEER_1X = IMPL_VERSION.startswith('1.')
PROFILE_DIR = os.environ.get('BENCH_PROFILE_DIR')


def burn_cpu(ms):
    """Spend `ms` milliseconds of this process's CPU time."""
    end = time.process_time() + ms / 1000.0
    x = 0
    while time.process_time() < end:
        for i in range(200):
            x += i * i
    return x


def _start_worker_profile(worker_id):
    """Profile this worker process from here on; write the stats when it
    exits. Workers may be forked (exit through os._exit: no atexit) or
    spawned, so the dump is registered both as a multiprocessing finalizer
    (run by every start method when the process target returns or raises
    SystemExit) and with atexit; it runs once."""
    import cProfile  # pylint: disable=import-outside-toplevel
    import multiprocessing.util  # pylint: disable=import-outside-toplevel
    profiler = cProfile.Profile()
    path = os.path.join(PROFILE_DIR, f'worker-{worker_id}.prof')
    done = []

    def dump():
        if done:
            return
        done.append(True)
        profiler.disable()
        profiler.dump_stats(path)
    multiprocessing.util.Finalize(None, dump, exitpriority=100)
    atexit.register(dump)
    profiler.enable()


class BenchWorker(_workers.Worker):

    def setup(self):
        self.subscribers = {}
        if PROFILE_DIR and not IS_PEER_1X:
            _start_worker_profile(self.worker_id)

    @_workers.api('/api/item/{id:int}', 'GET')
    def item(self, request):
        return {'id': request.path_params['id']}

    @_workers.api('/api/echo', 'POST')
    def echo(self, request):
        return request.data

    @_workers.api('/api/work/{ms:int}', 'GET')
    def work(self, request):
        ms = request.path_params['ms']
        burn_cpu(ms)
        return {'ms': ms}

    @_workers.api('/api/sleep/{ms:int}', 'GET')
    def sleep(self, request):
        ms = request.path_params['ms']
        time.sleep(max(ms, 0) / 1000.0)
        return {'ms': ms}

    @_workers.api('/api/sse', 'GET')
    def sse(self, request):
        request.response_stream()
        self.subscribers[request.request_id] = request
        return _workers.DEFERRED

    def on_disconnect(self, request_id):
        self.subscribers.pop(request_id, None)

    def on_config(self, config):
        if not isinstance(config, dict) or 'event' not in config:
            return
        seq = config['event']
        payload = {'seq': seq, 'worker': self.worker_id}
        for request in list(self.subscribers.values()):
            request.send_event(data=payload, event='tick', event_id=seq)


class BenchDispatcher(_workers.Dispatcher):

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond({
            'impl': IMPL_VERSION,
            'pending': len(self._pending),
            'pools': [pool.status() for pool in self._pools],
        })

    @_workers.sync('/broadcast', 'POST')
    def broadcast(self, client, path_params):
        data = client.data if isinstance(client.data, dict) else {}
        seq = data.get('seq', 0)
        for pool in self._pools:
            pool.send_config({'event': seq})
        client.respond({'sent': seq})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, default=18081)
    parser.add_argument('--address', default='127.0.0.1')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--static-dir', required=True)
    parser.add_argument('--shutdown-timeout', type=float, default=5)
    parser.add_argument('--metrics', action='store_true',
                        help='serve /metrics (this project only; needs '
                        'prometheus_client)')
    parser.add_argument('--no-access-log', action='store_true',
                        help='turn the access log off (this project only)')
    args = parser.parse_args()

    options = {}
    if IS_PEER_1X:
        # handed to uhttp-server 2.6.2's HttpServer: the defaults of 2.x
        options.update(listen=1024, max_waiting_clients=10000,
                       keep_alive_max_requests=1000, request_timeout=10,
                       max_content_length=1024 * 1024,
                       file_chunk_size=64 * 1024)
    elif args.metrics:
        options['metrics_route'] = '/metrics'
    if args.no_access_log and not IS_PEER_1X:
        options['access_log'] = False

    dispatcher = BenchDispatcher(
        port=args.port, address=args.address,
        pools=[_workers.WorkerPool(
            BenchWorker, num_workers=args.workers, routes=['/api/**'])],
        static_routes={'/static/': args.static_dir},
        shutdown_timeout=args.shutdown_timeout,
        **options)

    if PROFILE_DIR and not IS_PEER_1X:
        import cProfile  # pylint: disable=import-outside-toplevel
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            dispatcher.run()
        finally:
            profiler.disable()
            profiler.dump_stats(os.path.join(PROFILE_DIR, 'dispatcher.prof'))
    else:
        dispatcher.run()


if __name__ == '__main__':
    main()
