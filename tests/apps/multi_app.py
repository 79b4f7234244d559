"""Test application: several dispatchers on one host (`dispatchers=N`).

Settings: PORT, ADDRESS, DISPATCHERS (default 2), WORKERS (per dispatcher,
default 1), JOB_FILE (a run-once job appends its pid), SERVICE_PORT and
SERVICE_STARTS (an owned helper service; its server appends its pid at each
start), STARTED_FILE (each /api/sleep request appends a line when it
begins), FAIL_FILE (while it exists, a new worker's setup() fails),
HOLD_FILE (while it exists, a new worker's setup() waits, up to 30 s),
DEAF_FILE (a dispatcher whose pid it lists ignores SIGTERM),
SHUTDOWN_TIMEOUT (default 10), KEEP_ALIVE_TIMEOUT (default 15), METRICS
(serve /metrics).

Routes: GET /pid (@sync: the dispatcher's pid), GET /api/where (a worker's
pid and its dispatcher's), GET /api/sleep/{ms} (holds a worker), GET
/api/helper (the helper service through a worker).
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ
APPS = os.path.dirname(os.path.abspath(__file__))

HELPER = _workers.Service(
    name='helper',
    command=[sys.executable, os.path.join(APPS, 'service_server.py'),
             '--port', '{port}'],
    port=int(ENV.get('SERVICE_PORT', '18999')),
    health_check_url='/health', health_check_interval=0.3,
    startup_timeout=5.0, max_restarts=2, restart_delay=0.2,
    shutdown_timeout=3.0)


@_workers.run_once()
def record_once():
    """Append this process's pid to JOB_FILE."""
    with open(ENV['JOB_FILE'], 'a', encoding='utf-8') as out:
        out.write(f'{os.getpid()}\n')


class MultiWorker(_workers.Worker):
    def setup(self):
        if os.path.exists(ENV.get('FAIL_FILE', '')):
            raise RuntimeError('FAIL_FILE exists: this worker will not start')
        deadline = time.monotonic() + 30
        while os.path.exists(ENV.get('HOLD_FILE', '')) \
                and time.monotonic() < deadline:
            time.sleep(0.05)

    @_workers.api('/api/where', 'GET')
    def where(self, request):
        return {'worker': os.getpid(), 'dispatcher': os.getppid()}

    @_workers.api('/api/sleep/{ms:int}', 'GET')
    def sleep(self, request):
        with open(ENV['STARTED_FILE'], 'a', encoding='utf-8') as out:
            out.write(f'{os.getpid()}\n')
        time.sleep(request.path_params['ms'] / 1000)
        return {'slept': request.path_params['ms'],
                'dispatcher': os.getppid()}

    @_workers.api('/api/helper', 'GET')
    def helper(self, request):
        try:
            with self.services['helper'].client(timeout=5.0) as client:
                return {'service': client.get('/').json()['pid'],
                        'dispatcher': os.getppid()}
        except _workers.ServiceUnavailable as err:
            return {'error': str(err)}, 503


class MultiDispatcher(_workers.Dispatcher):
    @_workers.sync('/pid')
    def pid(self, client, path_params):
        client.respond({'pid': os.getpid()})

    def handle_term(self):
        try:
            with open(ENV.get('DEAF_FILE', ''), encoding='ascii') as listed:
                deaf = str(os.getpid()) in listed.read().split()
        except OSError:
            deaf = False
        if deaf:
            self.log.warning('SIGTERM ignored (DEAF_FILE)')
            return
        super().handle_term()

    @_workers.sync('/status')
    def host_status(self, client, path_params):
        client.respond(dict(self.status(), pid=os.getpid()))


def main():
    MultiDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        dispatchers=int(ENV.get('DISPATCHERS', '2')),
        services=[HELPER] if ENV.get('SERVICE_PORT') else None,
        jobs=[record_once] if ENV.get('JOB_FILE') else None,
        job_lock=('file', ENV['JOB_FILE'] + '.lock')
        if ENV.get('JOB_FILE') else None,
        pid_file=ENV.get('PID_FILE'),
        shutdown_timeout=float(ENV.get('SHUTDOWN_TIMEOUT', '10')),
        keep_alive_timeout=float(ENV.get('KEEP_ALIVE_TIMEOUT', '15')),
        metrics_route='/metrics' if ENV.get('METRICS') else None,
        pools=[_workers.WorkerPool(
            MultiWorker, num_workers=int(ENV.get('WORKERS', '1')),
            routes=['/api/**'], heartbeat_interval=0.2)],
    ).run()


if __name__ == '__main__':
    main()
