"""Test application for the command line (`uhttp-workers cli_app:...`).

Every target form: `CliDispatcher` (a subclass), `instance` (a module-level
Dispatcher), `make` (a factory, --factory), `broken` (a factory whose pools
clash: a configuration error), `not_a_dispatcher`. `GET /settings` reports
the options in effect, `GET /api/hello` runs on a worker, `/static/` is a
static mount. The pool 'main' leaves num_workers unset (--workers sets it);
the pool 'fixed' sets num_workers=1 itself.
"""

import os

import uhttp.workers as _workers

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'static_cli')


class HelloWorker(_workers.Worker):
    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        return {'hello': 'world', 'pid': os.getpid(),
                'remote': request.remote_address}


class FixedWorker(_workers.Worker):
    @_workers.api('/fixed/pid', 'GET', 'POST')
    def pid(self, request):
        return {'pid': os.getpid()}


def _pools():
    return [
        _workers.WorkerPool(HelloWorker, routes=['/api/**'], name='main',
                            heartbeat_interval=0.2),
        _workers.WorkerPool(FixedWorker, num_workers=1, routes=['/fixed/**'],
                            name='fixed', heartbeat_interval=0.2),
    ]


class CliDispatcher(_workers.Dispatcher):
    """Takes every Dispatcher keyword; its own shutdown_timeout is 7."""

    def __init__(self, shutdown_timeout=7, **options):
        super().__init__(pools=_pools(), static_routes={'/static': STATIC},
                         shutdown_timeout=shutdown_timeout, **options)

    @_workers.sync('/settings')
    def report_settings(self, client, path_params):
        options = self._server_options  # pylint: disable=protected-access
        client.respond({
            'pid': os.getpid(),
            'address': self.address,
            'shutdown_timeout': self.shutdown_timeout,
            'max_pending': self.max_pending,
            'request_timeout': options['request_timeout'],
            'keep_alive_timeout': options['keep_alive_timeout'],
            'log_level': self.log.level,
            'workers': {pool.name: pool.num_workers for pool in self.pools},
            'live': {pool.name: pool.alive_count for pool in self.pools},
        })


instance = CliDispatcher(shutdown_timeout=6, max_pending=50)


def make():
    """A factory: --factory calls it."""
    return CliDispatcher(shutdown_timeout=5)


def broken():
    """Two pools claim one route: the Dispatcher refuses to build."""
    return _workers.Dispatcher(pools=[
        _workers.WorkerPool(HelloWorker, routes=['/api/**'], name='a'),
        _workers.WorkerPool(HelloWorker, routes=['/api/**'], name='b')])


not_a_dispatcher = 42
