"""A helper server shared by every worker, and a job that runs only once.

The dispatcher starts the helper (`services=[...]`) before it reports ready,
health-checks it from a background thread, restarts it if it dies and stops
it after the workers at shutdown. Handlers reach it with
`self.services['quote-helper'].client()`, which fails at once with a clear
error while the helper is down or after it has given up.

The `tick` job runs every few seconds in exactly one process among all the
dispatchers on this host that declare it (they share a lock file); if that
process dies, another one takes over within a second.

Run:  python examples/singleton_service.py   (PORT=8080; helper on 8765:
      HELPER_PORT; job log in TICK_FILE, default /tmp/uhttp-workers-tick.log)
Try:  curl http://127.0.0.1:8080/api/quote
      curl http://127.0.0.1:8080/status
"""

import os
import sys
import time

import uhttp.workers as _workers

HERE = os.path.dirname(os.path.abspath(__file__))
TICK_FILE = os.environ.get('TICK_FILE', '/tmp/uhttp-workers-tick.log')

HELPER = _workers.Service(
    name='quote-helper',
    command=[sys.executable, os.path.join(HERE, 'helper_server.py'),
             '--port', '{port}'],
    port=int(os.environ.get('HELPER_PORT', '8765')),
    health_check_url='/health',
    health_check_interval=2.0,
    startup_timeout=10.0,
    restart_delay=0.5,
    shutdown_timeout=5.0,
)


@_workers.periodic(2.0)
def tick():
    """Append a line every 2 s: one writer on the whole host."""
    with open(TICK_FILE, 'a', encoding='utf-8') as log:
        log.write(f'{os.getpid()} {time.time():.1f}\n')


class QuoteWorker(_workers.Worker):
    def ask_helper(self, path):
        """GET `path` from the helper; (data, status) for the client."""
        try:
            with self.services['quote-helper'].client(
                    timeout=10.0, request_timeout=5.0) as helper:
                answer = helper.get(path)
        except _workers.ServiceError as err:
            self.log.error('helper: %s', err)
            return {'error': 'helper unavailable', 'detail': str(err)}, 503
        return answer.json(), answer.status

    @_workers.api('/api/quote', 'GET')
    def quote(self, request):
        data, status = self.ask_helper('/quote')
        if status != 200:
            return data, status
        return {'worker': self.worker_id, 'worker_pid': os.getpid(), **data}


class QuoteDispatcher(_workers.Dispatcher):
    @_workers.sync('/status')
    def show_status(self, client, path_params):
        client.respond({'services': self.status()['services'],
                        'jobs': self.status()['jobs']})


def main():
    dispatcher = QuoteDispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        services=[HELPER],
        jobs=[tick],
        job_lock=('file', TICK_FILE + '.lock'),
        pools=[_workers.WorkerPool(QuoteWorker, num_workers=3,
                                   routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
