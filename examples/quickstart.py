"""Quick start: one pool of item workers behind an API-key check.

Run:  python examples/quickstart.py   (PORT=8080 by default)
Try, from a second terminal while the server runs:
      curl -H 'x-api-key: secret' http://127.0.0.1:8080/api/items
      curl -H 'x-api-key: secret' -H 'content-type: application/json' \
           -d '{"name": "pen"}' http://127.0.0.1:8080/api/items

Every worker is a process of its own, and `self.items` lives in it: with
several workers each would keep its own dict, so two POSTs could both be
given id 2 and a GET could miss an item another worker stored. This pool
therefore has ONE worker. To run more, keep the state in a store that every
worker shares (a database such as SQLite or PostgreSQL, Redis, ...) and open
it in setup().
"""

import os

import uhttp.workers as _workers

VALID_KEYS = {'secret'}


class ItemWorker(_workers.Worker):
    def setup(self):
        # per-process state: correct only because the pool has one worker
        self.items = {1: {'id': 1, 'name': 'first'}}
        self.next_id = 2

    @_workers.api('/api/items', 'GET')
    def list_items(self, request):
        return {'items': list(self.items.values())}

    @_workers.api('/api/items', 'POST')
    def add_item(self, request):
        if not isinstance(request.data, dict) or 'name' not in request.data:
            return {'error': 'send JSON like {"name": "..."}'}, 400
        item = {'id': self.next_id, 'name': request.data['name']}
        self.items[self.next_id] = item
        self.next_id += 1
        return item, 201

    @_workers.api('/api/item/{id:int}', 'GET')
    def get_item(self, request):
        item = self.items.get(request.path_params['id'])
        if not item:
            return {'error': 'Not found'}, 404
        return item


class MyDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        api_key = client.headers.get('x-api-key')
        if api_key not in VALID_KEYS:
            client.respond({'error': 'unauthorized'}, status=401)
            raise _workers.RejectRequest()

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})


def main():
    dispatcher = MyDispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        pools=[
            _workers.WorkerPool(
                ItemWorker,
                num_workers=1,  # the items live in the worker: see above
                routes=['/api/**'],
                timeout=30,
            ),
        ],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
