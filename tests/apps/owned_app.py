"""Test application: a dispatcher that owns a helper service and a job.

Settings: PORT, ADDRESS, SERVICE_PORT, SERVICE_KIND ('good' or 'crash'),
SERVICE_STARTS (file the good server appends its pid to), JOB_FILE (the
job appends '<pid> <time>' to it), JOB_LOCK (lock file shared by every
dispatcher running this app).
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ
APPS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = {'good': 'service_server.py', 'crash': 'service_crash.py'}

HELPER = _workers.Service(
    name='helper',
    command=[sys.executable, os.path.join(APPS, SCRIPT[ENV.get(
        'SERVICE_KIND', 'good')]), '--port', '{port}'],
    port=int(ENV.get('SERVICE_PORT', '18999')),
    health_check_url='/health', health_check_interval=0.3,
    startup_timeout=5.0, max_restarts=2, restart_delay=0.2,
    shutdown_timeout=3.0)


@_workers.periodic(float(ENV.get('JOB_INTERVAL', '0.5')))
def record():
    """Append this process's pid and the time to JOB_FILE."""
    with open(ENV['JOB_FILE'], 'a', encoding='utf-8') as out:
        out.write(f'{os.getpid()} {time.time():.3f}\n')


class HelperWorker(_workers.Worker):
    @_workers.api('/api/helper', 'GET')
    def helper(self, request):
        try:
            with self.services['helper'].client(timeout=2.0) as client:
                return client.get('/').json()
        except _workers.ServiceUnavailable as err:
            return {'error': str(err), 'state': err.state}, 503


class OwnedDispatcher(_workers.Dispatcher):
    @_workers.sync('/status')
    def show_status(self, client, path_params):
        client.respond(self.status())


def main():
    jobs = [record] if ENV.get('JOB_FILE') else None
    OwnedDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        services=[HELPER] if ENV.get('SERVICE_PORT') else None,
        jobs=jobs,
        job_lock=('file', ENV['JOB_LOCK']) if jobs else None,
        shutdown_timeout=3,
        pools=[_workers.WorkerPool(HelperWorker, num_workers=2,
                                   routes=['/api/**'])],
    ).run()


if __name__ == '__main__':
    main()
