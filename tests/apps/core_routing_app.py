"""Test application for the dispatcher's routing order.

static -> sync -> first pool whose prefix matches -> (no fallback) -> 404.

Pool A serves '/a/**', pool B serves '/a/b/**' and '/b/**': a path under
'/a/b/' matches both, and pool A (listed first) must get it. A @sync route
sits on a path pool A also serves, and another on a path that is a static
file. There is no fallback pool, so unclaimed paths get the dispatcher's 404.

Settings: PORT, ADDRESS, STATIC_DIR (required).
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ


class AWorker(_workers.Worker):
    @_workers.api('/a/sync')
    def a_sync(self, request):
        return {'by': 'pool A', 'path': request.path}

    @_workers.api('/a/{x}')
    def a_any(self, request):
        return {'by': 'pool A', 'path': request.path}

    @_workers.api('/a/b/{x}')
    def a_b(self, request):
        return {'by': 'pool A', 'path': request.path}


class BWorker(_workers.Worker):
    @_workers.api('/a/b/{x}')
    def b_shadowed(self, request):
        return {'by': 'pool B', 'path': request.path}

    @_workers.api('/b/{x}')
    def b_any(self, request):
        return {'by': 'pool B', 'path': request.path}


class RoutingDispatcher(_workers.Dispatcher):
    @_workers.sync('/a/sync')
    def a_sync(self, client, path_params):
        client.respond({'by': 'sync', 'path': client.path})

    @_workers.sync('/static/file.txt')
    def static_shadowed(self, client, path_params):
        client.respond({'by': 'sync', 'path': client.path})

    @_workers.sync('/sync/{n:int}', 'GET')
    def numbered(self, client, path_params):
        client.respond({'by': 'sync', 'n': path_params['n']})


def main():
    dispatcher = RoutingDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        static_routes={'/static/': ENV['STATIC_DIR']},
        pools=[
            _workers.WorkerPool(AWorker, routes=['/a/**'],
                                heartbeat_interval=0.2),
            _workers.WorkerPool(BWorker, routes=['/a/b/**', '/b/**'],
                                heartbeat_interval=0.2),
        ],
    )
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
