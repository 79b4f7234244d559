"""One instance of a service that runs as several instances behind haproxy.

Each instance is a dispatcher of its own on its own port (here: one per
port of 127.0.0.1; in production: one per host). haproxy in front of them
(haproxy.cfg next to this file) checks `GET /health` on each and spreads
the requests. What must happen once for the whole service is coordinated
through one Redis server that every instance is given:

- `migrate`, a run-once job: one job process among all instances holds the
  Redis job lock and runs it; `once_ever=True` keeps a "done" marker in
  Redis, so it does not run again after a failover or a restart;
- the primary duty of the `HelloWorker` pool: one worker among all the
  workers of all instances is primary (`PRIMARY_SCOPE = 'service'`); if its
  instance dies, a worker of another one takes over within PRIMARY_TTL.

Both write what they did into Redis lists (KEY_PREFIX:migrations,
KEY_PREFIX:promotions), so anyone can check that it happened once.

Run (one Redis, two instances, then haproxy; see docs/how-to/multi-host.md):
      INSTANCE=a PORT=8081 REDIS_URL=redis://127.0.0.1:6379/0 python examples/multi_host/app.py
      INSTANCE=b PORT=8082 REDIS_URL=redis://127.0.0.1:6379/0 python examples/multi_host/app.py
Try:  curl http://127.0.0.1:8081/health
      curl http://127.0.0.1:8081/api/hello
"""

import os
import time

import redis

import uhttp.workers as _workers

ENV = os.environ
INSTANCE = ENV.get('INSTANCE', 'a')
PORT = int(ENV.get('PORT', '8081'))
REDIS_URL = ENV.get('REDIS_URL', 'redis://127.0.0.1:6379/0')
KEY_PREFIX = ENV.get('KEY_PREFIX', 'multi-host')
PRIMARY_TTL = float(ENV.get('PRIMARY_TTL', '10'))
JOB_TTL = float(ENV.get('JOB_TTL', '10'))


def record(what, text):
    """Append `text` to the Redis list KEY_PREFIX:<what>."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.rpush(f'{KEY_PREFIX}:{what}', text)
    finally:
        client.close()


@_workers.run_once(once_ever=True)
def migrate():
    """The schema migration of the service: once, by one instance, ever."""
    record('migrations', f'{INSTANCE} {os.getpid()} {time.time():.3f}')


class HelloWorker(_workers.Worker):
    PRIMARY_LOCK = True             # join the election when the worker starts
    PRIMARY_SCOPE = 'service'       # one primary among all the instances
    PRIMARY_REDIS_URL = REDIS_URL
    PRIMARY_REDIS_KEY = f'{KEY_PREFIX}:primary'
    PRIMARY_TTL = PRIMARY_TTL

    def on_primary(self):
        """The duty of the one primary worker: here, say who took it."""
        self.log.info('primary of the service on instance %s', INSTANCE)
        record('promotions', f'{INSTANCE} {os.getpid()}')

    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        return {'instance': INSTANCE, 'port': PORT, 'pid': os.getpid(),
                'primary': self.is_primary_worker()}


class HelloDispatcher(_workers.Dispatcher):
    @_workers.sync('/health')
    def health(self, client, path_params):
        # answered by the dispatcher: it stops answering (its listener
        # closes) as soon as a shutdown begins, so the balancer sees it
        client.respond({'status': 'ok', 'instance': INSTANCE})


def main():
    dispatcher = HelloDispatcher(
        port=PORT,
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=10,
        jobs=[migrate],
        job_lock=('redis', REDIS_URL, f'{KEY_PREFIX}:jobs', JOB_TTL),
        pools=[_workers.WorkerPool(HelloWorker, num_workers=2,
                                   routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
