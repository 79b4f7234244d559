"""A service written against the uhttp-workers 1.8.1 API, for its failures.

Its dispatcher's on_request_accepted() returns a context chosen by the
X-Context header; its worker shows Request.context, fails on purpose, or
exits with code 7 (unrecoverable: never restarted). Settings: PORT,
ADDRESS, WORKERS (default 1), SETUP_DELAY (seconds setup() sleeps).
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ
UNRECOVERABLE = 7


class FailuresWorker(_workers.Worker):
    def setup(self):
        time.sleep(float(ENV.get('SETUP_DELAY', '0')))

    @_workers.api('/api/context', 'GET')
    def context(self, request):
        return {'context': request.context}

    @_workers.api('/api/fail', 'GET')
    def fail(self, request):
        raise ValueError(request.query.get('text', 'handler bug on purpose'))

    @_workers.api('/api/die', 'GET')
    def die(self, request):
        os._exit(UNRECOVERABLE)

    @_workers.api('/both/submit', 'GET')
    def both(self, request):
        return {'from': 'pool'}


class FailuresDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        if client.headers.get('x-deny'):
            raise _workers.RejectRequest({'error': 'denied'}, status=401)

    def on_request_accepted(self, request_id, client, pool):
        kind = client.headers.get('x-context')
        if kind == 'dict':
            return {'role': 'admin', 'pool': pool.name}
        if kind == 'unpicklable':
            return lambda: None
        if kind == 'raise':
            raise RuntimeError('on_request_accepted bug on purpose')
        return None

    @_workers.sync('/both/submit', 'POST')
    def submit(self, client, path_params):
        client.respond({'from': 'sync'})

    @_workers.sync('/lonely', 'POST')
    def lonely(self, client, path_params):
        client.respond({'from': 'sync'})


def main():
    dispatcher = FailuresDispatcher(
        port=int(ENV.get('PORT', '0')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        pools=[
            _workers.WorkerPool(
                FailuresWorker, num_workers=int(ENV.get('WORKERS', '1')),
                routes=['/api/**', '/both/**'], heartbeat_interval=0.2,
                unrecoverable_exit_codes=[UNRECOVERABLE]),
        ],
    )
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
