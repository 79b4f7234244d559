"""A service whose heavy routes run on other machines, through Redis.

The dispatcher serves `/api/...` with a local pool, as usual, and hands
`/render/...` to a RemotePool: each of those requests goes into a Redis
stream, and `uhttp-workers worker` processes started on other hosts (the
machines with the CPUs, the GPU or the memory this work needs) run them
with the same `Render` class and send the answer back. The dispatcher
never waits for Redis; a request runs at most once; with no worker host
alive `/render/` answers 503 at once while `/api/` keeps serving.

Run (one Redis, the dispatcher, then as many worker hosts as you like):
      REDIS_URL=redis://127.0.0.1:6379/0 python examples/remote_pool/app.py
      uhttp-workers worker app:Render --app-dir examples/remote_pool \\
          --redis redis://127.0.0.1:6379/0 --workers 2
Try:  curl http://127.0.0.1:8080/render/digest?rounds=20000
      curl http://127.0.0.1:8080/api/status
"""

import hashlib
import os
import socket

import uhttp.workers as _workers

ENV = os.environ
REDIS_URL = ENV.get('REDIS_URL', 'redis://127.0.0.1:6379/0')


class Render(_workers.Worker):
    """Runs on the worker hosts: CPU-heavy work, kept off the web host."""

    @_workers.api('/render/digest', 'GET')
    def digest(self, request):
        rounds = min(int(request.query.get('rounds', '1000')), 1_000_000)
        value = b'seed'
        for _ in range(rounds):
            value = hashlib.sha256(value).digest()
        return {'rounds': rounds, 'digest': value.hex(),
                'host': socket.gethostname(), 'pid': os.getpid()}


class Api(_workers.Worker):
    """Runs next to the dispatcher: quick answers."""

    @_workers.api('/api/status', 'GET')
    def status(self, request):
        return {'ok': True, 'pid': os.getpid()}


def main():
    dispatcher = _workers.Dispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        pools=[
            _workers.WorkerPool(Api, num_workers=2, routes=['/api/**']),
            # name: the Redis keys the worker hosts read ('Render', the
            # class name, which `uhttp-workers worker app:Render` uses too)
            _workers.RemotePool(routes=['/render/**'], redis_url=REDIS_URL,
                                worker_class=Render, timeout=30),
        ],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
