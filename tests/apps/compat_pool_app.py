"""A pool configured with uhttp-workers 1.8.1's WorkerPool options.

Environment: PORT, ADDRESS, WORKERS, MAX_RESTARTS, RECOVERY_INTERVAL,
PERMANENT_EXIT (permanent_failure_exitcode), MEMORY_MB
(worker_memory_limit_mb), SETUP_FAIL_FLAG (a file: while it exists,
setup() raises), KEEP_RETRYING (set: exit_on_startup_failure=False).
"""

import os
import resource
import sys
import time

import uhttp.workers as _workers

ENV = os.environ


def env_number(name, convert):
    value = ENV.get(name)
    return convert(value) if value else None


class CompatWorker(_workers.Worker):
    def setup(self):
        flag = ENV.get('SETUP_FAIL_FLAG')
        if flag and os.path.exists(flag):
            raise RuntimeError('setup refused')
        # what setup() runs under: the limit must already be there
        self.limit_in_setup = list(resource.getrlimit(resource.RLIMIT_AS))

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid()}

    @_workers.api('/api/kwargs', 'GET')
    def kwargs_seen(self, request):
        return {'kwargs': sorted(self.kwargs)}

    @_workers.api('/api/limit', 'GET')
    def limit(self, request):
        return {'in_setup': self.limit_in_setup}

    @_workers.api('/api/alloc/{mb:int}', 'GET')
    def alloc(self, request):
        try:
            block = bytearray(request.path_params['mb'] * 1024 * 1024)
        except MemoryError:
            return {'memory_error': True}
        return {'memory_error': False, 'size': len(block)}

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': True}

    @_workers.api('/api/exit/{code:int}', 'GET')
    def exit(self, request):
        os._exit(request.path_params['code'])


class CompatDispatcher(_workers.Dispatcher):
    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        pool = self._pools[0]
        client.respond({
            'status': pool.status(), 'is_degraded': pool.is_degraded,
            'alive_count': pool.alive_count,
            'pending_count': pool.pending_count,
            'recovery_interval': pool.recovery_interval})


def main():
    dispatcher = CompatDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        log_level=_workers.LOG_INFO,
        pools=[_workers.WorkerPool(
            CompatWorker, num_workers=int(ENV.get('WORKERS', '1')),
            routes=['/api/**'], heartbeat_interval=0.2,
            max_restarts=int(ENV.get('MAX_RESTARTS', '10')),
            recovery_interval=env_number('RECOVERY_INTERVAL', float),
            permanent_failure_exitcode=env_number('PERMANENT_EXIT', int),
            worker_memory_limit_mb=env_number('MEMORY_MB', int),
            exit_on_startup_failure=not ENV.get('KEEP_RETRYING'),
            flavour='compat')])
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
