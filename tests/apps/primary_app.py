"""Test application for the primary worker (tests/test_primary.py).

Two pools: 'alpha' joins the election as its workers start
(`PRIMARY_LOCK = True`), 'beta' asks `is_primary_worker()` in setup() (the
lazy way). Every promotion appends "pid loop-thread main-thread" to
RECORD_DIR/<pool>.promotions; POST /ask/<pool> (a dispatcher route)
broadcasts /<pool>/report to each worker of the pool, which writes
{"token", "pid", "primary"} into RECORD_DIR/<pool>.<pid>.json.

Settings: PORT, ADDRESS, RECORD_DIR, WORKERS, SCOPE ('host' or 'service'),
REDIS_URL and TTL (service scope), LOCK_DIR (optional).
"""

import json
import os
import threading

import uhttp.workers as _workers

ENV = os.environ
RECORD_DIR = ENV.get('RECORD_DIR', '.')


def write_file(path, text):
    temporary = f'{path}.{os.getpid()}.tmp'
    with open(temporary, 'w', encoding='utf-8') as handle:
        handle.write(text)
    os.replace(temporary, path)


class Probe(_workers.ApiHandler):
    """Routes of a pool's workers, under the pool's prefix."""

    @_workers.api('/report', 'POST')
    def report(self, request):
        worker = self.worker
        state = {'token': request.data['token'], 'pid': os.getpid(),
                 'primary': worker.is_primary_worker()}
        write_file(os.path.join(
            RECORD_DIR, f'{worker.pool_name}.{os.getpid()}.json'),
            json.dumps(state))
        return state

    @_workers.api('/whoami', 'GET')
    def whoami(self, request):
        return {'pid': os.getpid(),
                'primary': self.worker.is_primary_worker()}


class AlphaProbe(Probe):
    PATTERN = '/alpha'


class BetaProbe(Probe):
    PATTERN = '/beta'


class Recording(_workers.Worker):
    """Records each promotion and in which thread on_primary() ran."""

    PRIMARY_SCOPE = ENV.get('SCOPE', 'host')
    PRIMARY_REDIS_URL = ENV.get('REDIS_URL') or None
    PRIMARY_TTL = float(ENV.get('TTL', '10'))
    PRIMARY_LOCK_DIR = ENV.get('LOCK_DIR') or None

    def on_primary(self):
        line = (f'{os.getpid()} {threading.get_ident()} '
                f'{threading.main_thread().ident}\n')
        with open(os.path.join(RECORD_DIR, f'{self.pool_name}.promotions'),
                  'a', encoding='ascii') as handle:
            handle.write(line)


class AlphaWorker(Recording):
    HANDLERS = [AlphaProbe]
    PRIMARY_LOCK = True


class BetaWorker(Recording):
    HANDLERS = [BetaProbe]

    def setup(self):
        self.primary_at_setup = self.is_primary_worker()


class PrimaryDispatcher(_workers.Dispatcher):

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond(self.status())

    @_workers.sync('/ask/{pool}', 'POST')
    def ask(self, client, path_params):
        name = path_params['pool']
        for pool in self.pools:
            if pool.name == name:
                pool.broadcast(f"/{name}/report", client.data)
                client.respond({'asked': name})
                return
        client.respond({'error': f'no pool {name}'}, status=404)


def main():
    workers = int(ENV.get('WORKERS', '3'))
    dispatcher = PrimaryDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=5,
        pools=[
            _workers.WorkerPool(AlphaWorker, num_workers=workers,
                                name='alpha', routes=['/alpha/**'],
                                heartbeat_interval=0.2,
                                log_level=_workers.LOG_INFO),
            _workers.WorkerPool(BetaWorker, num_workers=workers,
                                name='beta', routes=['/beta/**'],
                                heartbeat_interval=0.2,
                                log_level=_workers.LOG_INFO),
        ],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
