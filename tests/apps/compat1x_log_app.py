"""Test application: LOG_NAME templates as uhttp-workers 1.x code sets them.

Settings: PORT, ADDRESS, DISPATCHER_LOG_NAME and WORKER_LOG_NAME (the
templates; unset keeps the defaults). GET /api/hello logs one info line
from the worker and answers its PID.
"""

import os

import uhttp.workers as _workers

ENV = os.environ


class NamedWorker(_workers.Worker):
    LOG_NAME = ENV.get('WORKER_LOG_NAME', _workers.Worker.LOG_NAME)

    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        self.log.info('hello from %d', os.getpid())
        return {'pid': os.getpid()}


class NamedDispatcher(_workers.Dispatcher):
    LOG_NAME = ENV.get('DISPATCHER_LOG_NAME', _workers.Dispatcher.LOG_NAME)


def main():
    NamedDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=5,
        pools=[_workers.WorkerPool(
            NamedWorker, name='Items', num_workers=1, heartbeat_interval=0.2,
            log_level=_workers.LOG_INFO, routes=['/api/**'])],
    ).run()


if __name__ == '__main__':
    main()
