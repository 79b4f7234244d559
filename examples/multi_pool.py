"""Several worker pools: ApiHandlers, an API-key check, health and monitoring.

Run:   python examples/multi_pool.py        (PORT=8080 by default)
Try:   curl -H 'x-api-key: demo' http://127.0.0.1:8080/api/user
       curl -H 'x-api-key: demo' http://127.0.0.1:8080/api/compute/fib/25
       curl http://127.0.0.1:8080/monitor
"""

import os

import uhttp.workers as _workers


class UserHandler(_workers.ApiHandler):
    PATTERN = '/api/user'

    @_workers.api('', 'GET')
    def list_users(self, request):
        return {'users': sorted(self.worker.users.values(),
                                key=lambda user: user['id'])}

    @_workers.api('', 'POST')
    def add_user(self, request):
        name = (request.data or {}).get('name') \
            if isinstance(request.data, dict) else None
        if not name:
            return {'error': 'JSON body with "name" required'}, 400
        return self.worker.add_user(name), 201

    @_workers.api('/{id:int}', 'GET')
    def get_user(self, request):
        user = self.worker.users.get(request.path_params['id'])
        return user if user else ({'error': 'Not found'}, 404)

    @_workers.api('/{id:int}', 'DELETE')
    def delete_user(self, request):
        if self.worker.users.pop(request.path_params['id'], None) is None:
            return {'error': 'Not found'}, 404
        return {'deleted': request.path_params['id']}


class AdminUserHandler(UserHandler):
    """Inherits every route of UserHandler, under /api/admin/user."""
    PATTERN = '/api/admin/user'


class OrderHandler(_workers.ApiHandler):
    PATTERN = '/api/order'

    @_workers.api('/{id:int}', 'GET')
    def get_order(self, request):
        return {'id': request.path_params['id'], 'worker': self.worker.worker_id}


class StorageWorker(_workers.Worker):
    HANDLERS = [UserHandler, AdminUserHandler, OrderHandler]

    def setup(self):
        # an in-memory "database" lives in one worker process: the pool
        # runs one worker so every request sees the same users (with a
        # real database, opened here, the pool can run several)
        self.users = {}
        self.next_id = 1
        for name in self.kwargs.get('seed_users', ()):
            self.add_user(name)

    def add_user(self, name):
        user = {'id': self.next_id, 'name': name}
        self.users[self.next_id] = user
        self.next_id += 1
        return user


class ComputeWorker(_workers.Worker):
    @_workers.api('/api/compute/fib/{n:int}', 'GET')
    def fib(self, request):
        n = request.path_params['n']
        if not 0 <= n <= 5000:
            return {'error': 'n must be between 0 and 5000'}, 400
        a, b = 0, 1
        for _ in range(n):
            a, b = b, a + b
        return {'n': n, 'fib': str(a)}


class GeneralWorker(_workers.Worker):
    @_workers.api('/api/echo')
    def echo(self, request):
        return {'method': request.method, 'path': request.path,
                'query': request.query, 'data': request.data
                if not isinstance(request.data, bytes) else len(request.data)}


class AppDispatcher(_workers.Dispatcher):
    def __init__(self, valid_keys, **kwargs):
        super().__init__(**kwargs)
        self.valid_keys = valid_keys

    def do_check(self, client):
        if client.headers.get('x-api-key') not in self.valid_keys:
            client.respond({'error': 'unauthorized'}, status=401)
            raise _workers.RejectRequest()

    @_workers.sync('/health')
    def health(self, client, path_params):
        degraded = any(pool.status()['degraded'] for pool in self._pools)
        client.respond({'status': 'degraded' if degraded else 'ok'},
                       status=503 if degraded else 200)

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond({
            'pools': [pool.status() for pool in self._pools],
            'pending': len(self._pending),
        })


def main():
    dispatcher = AppDispatcher(
        valid_keys={os.environ.get('API_KEY', 'demo')},
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        pools=[
            _workers.WorkerPool(
                ComputeWorker, num_workers=2,
                routes=['/api/compute/**'], timeout=60),
            _workers.WorkerPool(
                StorageWorker, num_workers=1,
                routes=['/api/user/**', '/api/admin/**', '/api/order/**'],
                timeout=10, seed_users=['ada', 'linus']),
            _workers.WorkerPool(GeneralWorker, num_workers=1),  # fallback
        ],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
