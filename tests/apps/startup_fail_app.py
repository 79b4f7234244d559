"""A service whose Broken pool cannot start, beside a healthy pool.

Environment: PORT, ADDRESS, BROKEN_WORKERS (default 3), KEEP_RETRYING (set:
exit_on_startup_failure=False), FAIL_ONLY (a worker id: only that worker of
Broken fails, once: while the file FAIL_FLAG exists, which it removes).
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ


class Broken(_workers.Worker):
    def setup(self):
        only = ENV.get('FAIL_ONLY')
        if only is None:
            raise ConnectionError('database at db.invalid:5432 refused')
        if int(only) == self.worker_id and os.path.exists(ENV['FAIL_FLAG']):
            os.unlink(ENV['FAIL_FLAG'])    # fails once
            raise ConnectionError('database at db.invalid:5432 refused')

    @_workers.api('/broken/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker_id': self.worker_id}


class Healthy(_workers.Worker):
    @_workers.api('/healthy', 'GET')
    def healthy(self, request):
        return {'ok': True}


def main():
    _workers.Dispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        pools=[
            _workers.WorkerPool(
                Broken, num_workers=int(ENV.get('BROKEN_WORKERS', '3')),
                routes=['/broken/**'], max_restarts=3,
                exit_on_startup_failure=not ENV.get('KEEP_RETRYING')),
            _workers.WorkerPool(Healthy, routes=['/healthy']),
        ]).run()
    sys.exit(0)


if __name__ == '__main__':
    main()
