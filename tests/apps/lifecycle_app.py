"""Test application for the lifecycle: hooks, graceful stop and SIGKILL
escalation, teardown, paced starts, stack dumps.

Every hook appends `<pid> <hook> <arguments>` to the file EVENTS, so a test
can see which process ran it, and when relative to the others.
Settings: PORT, ADDRESS, EVENTS, WORKERS, MAX_REQUESTS, GRACEFUL_TIMEOUT,
START_DELAY, START_DELAY_RAND, RESTART_INTERVAL, SHUTDOWN_TIMEOUT,
DUMP_STACKS (0 disables), FAIL_HOOK (the name of a hook that raises).
"""

import os
import signal
import sys
import time

import uhttp.workers as _workers

ENV = os.environ


def record(hook, *args):
    """One line per hook call; O_APPEND keeps lines of processes whole."""
    line = ' '.join([str(os.getpid()), hook, *map(str, args)]) + '\n'
    fd = os.open(ENV['EVENTS'], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if ENV.get('FAIL_HOOK') == hook:
        raise RuntimeError(f'{hook} failed on purpose')


class LifeWorker(_workers.Worker):
    def after_fork(self):
        record('after_fork', self.worker_id)

    def setup(self):
        record('setup', self.worker_id)

    def teardown(self):
        record('teardown', self.worker_id)

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid()}

    @_workers.api('/api/nap/{seconds:float}', 'GET')
    def nap(self, request):
        record('nap_started', self.worker_id)
        return napping_in_a_handler(request.path_params['seconds'])

    @_workers.api('/api/ignore-term', 'GET')
    def ignore_term(self, request):
        """Block SIGTERM and hang: only SIGKILL ends this worker."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        record('sigterm_blocked', self.worker_id)
        time.sleep(60)
        return {'unreachable': True}


def napping_in_a_handler(seconds):
    """A function name the stack dump of a busy worker must show."""
    time.sleep(seconds)
    return {'slept': seconds, 'pid': os.getpid()}


class LifeDispatcher(_workers.Dispatcher):
    def on_start(self):
        record('on_start')

    def on_stop(self):
        record('on_stop')

    def before_fork(self, pool, worker_id):
        record('before_fork', pool.name, worker_id)

    def on_worker_recycle(self, pool, worker_id, reason):
        record('on_worker_recycle', pool.name, worker_id, reason)

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond(self.status())


def main():
    dispatcher = LifeDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=float(ENV.get('SHUTDOWN_TIMEOUT', '10')),
        dump_stacks=ENV.get('DUMP_STACKS', '1') != '0',
        log_level=_workers.LOG_INFO,
        pools=[_workers.WorkerPool(
            LifeWorker, num_workers=int(ENV.get('WORKERS', '2')),
            routes=['/api/**'], heartbeat_interval=0.2,
            log_level=_workers.LOG_INFO,
            max_requests=int(ENV.get('MAX_REQUESTS', '0')),
            graceful_timeout=float(ENV.get('GRACEFUL_TIMEOUT', '30')),
            start_worker_delay=float(ENV.get('START_DELAY', '0')),
            start_worker_delay_rand=float(ENV.get('START_DELAY_RAND', '0')),
            restart_worker_interval=float(ENV.get('RESTART_INTERVAL', '0')),
        )],
    )
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
