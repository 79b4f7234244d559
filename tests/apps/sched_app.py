"""Test application for scheduling and overload.

A pool of WORKERS workers (default 2) with routes that hold until the test
lets them go, fast routes, and a slow route; sync routes for health and
monitoring. Settings: PORT, ADDRESS, WORKERS, MAX_PENDING, TIMEOUT,
HOLD_DIR (where the files that release held requests appear).
"""

import os
import time

import uhttp.workers as _workers

ENV = os.environ
HOLD_DIR = ENV.get('HOLD_DIR', '/tmp')


class SchedWorker(_workers.Worker):

    def setup(self):
        self.ran = []

    @_workers.api('/api/hold/{name}', 'GET')
    def hold(self, request):
        """Run until the file HOLD_DIR/<name> exists (at most 30 s)."""
        name = request.path_params['name']
        self.log.info('holding {name} in worker {w}', name=name,
                      w=self.worker_id)
        path = os.path.join(HOLD_DIR, name)
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {'worker': self.worker_id, 'released': os.path.exists(path)}

    @_workers.api('/api/fast/{name}', 'GET')
    def fast(self, request):
        self.ran.append(request.path_params['name'])
        return {'worker': self.worker_id, 'name': request.path_params['name']}

    @_workers.api('/api/sleep/{ms:int}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['ms'] / 1000)
        return {'worker': self.worker_id}

    @_workers.api('/api/ran', 'GET')
    def ran_here(self, request):
        return {'worker': self.worker_id, 'ran': self.ran}


class SchedDispatcher(_workers.Dispatcher):

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        status = self.status()
        client.respond({'pending': status['pending'],
                        'parked': status['parked'],
                        'pools': status['pools']})


def main():
    SchedDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        max_pending=int(ENV.get('MAX_PENDING', '1000')),
        pools=[_workers.WorkerPool(
            SchedWorker, num_workers=int(ENV.get('WORKERS', '2')),
            routes=['/api/**'], timeout=float(ENV.get('TIMEOUT', '30')),
            log_level=_workers.LOG_DEBUG)],
    ).run()


if __name__ == '__main__':
    main()
