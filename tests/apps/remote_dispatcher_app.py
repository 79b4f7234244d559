"""Test application for remote pools (tests/test_remote_pool.py).

One dispatcher, two pools of the same Worker class: a RemotePool named
POOL_NAME (default 'remote') on /remote/**, whose workers run elsewhere
and are reached through REDIS_URL, and a local WorkerPool on /local/**.
GET /monitor answers Dispatcher.status(); /metrics serves the Prometheus
metrics. A request with `x-context: set` gets a context that pickles but
JSON cannot carry (a set).

Settings: PORT, ADDRESS, REDIS_URL, POOL_NAME, REMOTE_ROUTES (the remote
pool's routes, space-separated; default /remote/**), TIMEOUT (the remote
pool's, seconds), SHUTDOWN_TIMEOUT, DISPATCHERS (default 1).

With REMOTE_ROUTES naming the routes of tests/apps/remote_app.py, real
remote hosts (`uhttp-workers worker remote_app:RemoteApp`) serve them.
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ


class Echo(_workers.Worker):
    """Answers with what it was asked, and where it ran."""

    @_workers.api('/local/echo', 'GET', 'POST')
    def local_echo(self, request):
        return {'pid': os.getpid(), 'method': request.method,
                'data': request.data}

    @_workers.api('/remote/echo', 'GET', 'POST')
    def remote_echo(self, request):
        return {'pid': os.getpid(), 'method': request.method,
                'data': request.data, 'context': request.context}


class RemoteDispatcher(_workers.Dispatcher):
    """Serves its status on /monitor."""

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond(self.status())

    def on_request_accepted(self, request_id, client, pool):
        if client.headers.get('x-context') == 'set':
            return {1, 2, 3}
        return {'accepted': request_id}


def main():
    dispatcher = RemoteDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=float(ENV.get('SHUTDOWN_TIMEOUT', '10')),
        metrics_route='/metrics',
        dispatchers=int(ENV.get('DISPATCHERS', '1')),
        pools=[
            _workers.RemotePool(
                routes=ENV.get('REMOTE_ROUTES', '/remote/**').split(),
                redis_url=ENV['REDIS_URL'],
                name=ENV.get('POOL_NAME', 'remote'), worker_class=Echo,
                timeout=float(ENV.get('TIMEOUT', '30'))),
            _workers.WorkerPool(Echo, num_workers=1, routes=['/local/**'],
                                name='local'),
        ],
    )
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
