"""Test application for strict request parsing: it records what reached a
handler, so a test can prove a smuggled request never did.

`/api/hit/{key}` (one worker, any method) and `/sync/hit/{key}` (in the
dispatcher) count their calls per key; `/api/hits/{key}` and
`/sync/hits/{key}` tell the counts. `/api/echo` returns what its handler
saw. Settings from the environment: PORT, ADDRESS, MAX_CONTENT_LENGTH,
REQUEST_TIMEOUT.
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ


def seen(request):
    """What a handler saw of a request, as JSON."""
    data = request.data
    if isinstance(data, bytes):
        data = {'bytes': data.decode('latin-1')}
    return {'method': request.method, 'path': request.path,
            'query': request.query, 'headers': request.headers,
            'data': data, 'data_type': type(request.data).__name__,
            'content_type': request.content_type}


class StrictWorker(_workers.Worker):
    def setup(self):
        self.hits = {}

    @_workers.api('/api/hit/{key}')
    def hit(self, request):
        key = request.path_params['key']
        self.hits[key] = self.hits.get(key, 0) + 1
        return dict(seen(request), hits=self.hits[key])

    @_workers.api('/api/hits/{key}', 'GET')
    def hits_of(self, request):
        return {'hits': self.hits.get(request.path_params['key'], 0)}

    @_workers.api('/api/echo')
    def echo(self, request):
        return seen(request)


class StrictDispatcher(_workers.Dispatcher):
    hits = {}

    @_workers.sync('/sync/hit/{key}')
    def sync_hit(self, client, path_params):
        key = path_params['key']
        self.hits[key] = self.hits.get(key, 0) + 1
        client.respond({'hits': self.hits[key]})

    @_workers.sync('/sync/hits/{key}', 'GET')
    def sync_hits(self, client, path_params):
        client.respond({'hits': self.hits.get(path_params['key'], 0)})


def main():
    dispatcher = StrictDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        max_content_length=int(ENV.get('MAX_CONTENT_LENGTH', 1024 * 1024)),
        request_timeout=float(ENV.get('REQUEST_TIMEOUT', 10)),
        pools=[_workers.WorkerPool(StrictWorker, num_workers=1,
                                   routes=['/api/**'])])
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
