"""A helper server shared by every worker, started once, on first use.

Each worker asks `HELPER.connect()` for a client. The first process on the
host to do so binds the helper's lock socket and starts the helper (and
restarts it if it crashes); the others wait until it answers its health
check. If that worker dies, the helper dies with it and the next
`connect()` in any worker starts it again.

Run:  python examples/singleton_service.py  (PORT=8080; helper on 8765,
      its lock on 18765: HELPER_PORT, HELPER_LOCK_PORT)
Try:  curl http://127.0.0.1:8080/api/quote
"""

import os
import sys

import uhttp.workers as _workers
from uhttp.workers.service import Service, ServiceError

HERE = os.path.dirname(os.path.abspath(__file__))
LOCK_PORT = os.environ.get('HELPER_LOCK_PORT')

# Module level: every worker process builds the same description.
HELPER = Service(
    name='quote-helper',
    command=[sys.executable, os.path.join(HERE, 'helper_server.py'),
             '--port', '{port}'],
    port=int(os.environ.get('HELPER_PORT', '8765')),
    lock_port=int(LOCK_PORT) if LOCK_PORT else None,
    health_check_url='/health',
    health_check_interval=2.0,
    startup_timeout=10.0,
    restart_delay=0.5,
    shutdown_timeout=5.0,
)


class QuoteWorker(_workers.Worker):
    def ask_helper(self, path):
        """GET `path` from the helper; (data, status) for the client."""
        try:
            with HELPER.connect(timeout=10.0, request_timeout=5.0) as helper:
                answer = helper.get(path)
        except ServiceError as err:
            self.log.error('helper: %s', err)
            return {'error': 'helper unavailable'}, 503
        return answer.json(), answer.status

    @_workers.api('/api/quote', 'GET')
    def quote(self, request):
        data, status = self.ask_helper('/quote')
        if status != 200:
            return data, status
        return {'worker': self.worker_id, 'worker_pid': os.getpid(), **data}

    @_workers.api('/api/helper', 'GET')
    def helper(self, request):
        data, status = self.ask_helper('/quote')
        if status != 200:
            return data, status
        return {'helper_pid': data['helper_pid'],
                'address': HELPER.address, 'owner': HELPER.owned}


def main():
    dispatcher = _workers.Dispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        pools=[_workers.WorkerPool(QuoteWorker, num_workers=3,
                                   routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
