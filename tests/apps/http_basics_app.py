"""Test application for the basics every answer must get right (Date,
HEAD, redirects, static validators and ranges).

A static mount '/static/' (STATIC_DIR) with a Cache-Control of its own
(the mount's `headers`), one worker pool on '/api/**' (`/api/text/{n}`
answers n bytes of text, `/api/sleep/{s}` sleeps, `/api/crash` ends its
worker), and @sync routes `/sync/text/{n}` (GET only) and
`/sync/redirect`. Anything else is the dispatcher's own 404. Settings from
the environment: PORT, ADDRESS, STATIC_DIR, TIMEOUT (of the pool),
MAX_RESTARTS, MAX_CONTENT_LENGTH.
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ


class BasicsWorker(_workers.Worker):
    @_workers.api('/api/text/{n:int}', 'GET')
    def text(self, request):
        return 'x' * request.path_params['n']

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': request.path_params['seconds']}

    @_workers.api('/api/crash', 'GET')
    def crash(self, request):
        os._exit(7)

    @_workers.api('/api/post', 'POST')
    def post(self, request):
        return {'length': len(request.data or b'')}


class BasicsDispatcher(_workers.Dispatcher):
    @_workers.sync('/sync/text/{n:int}', 'GET')
    def sync_text(self, client, path_params):
        client.respond('y' * path_params['n'])

    @_workers.sync('/sync/redirect', 'GET')
    def sync_redirect(self, client, path_params):
        client.respond(b'', status=302, headers={'location': '/elsewhere'})


def main():
    dispatcher = BasicsDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        max_content_length=int(ENV.get('MAX_CONTENT_LENGTH', 4096)),
        static_routes={'/static/': {
            'path': ENV['STATIC_DIR'],
            'headers': {'cache-control': 'public, max-age=60'}}},
        pools=[_workers.WorkerPool(
            BasicsWorker, num_workers=1, routes=['/api/**'],
            timeout=float(ENV.get('TIMEOUT', 30)),
            max_restarts=int(ENV.get('MAX_RESTARTS', '10')))])
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
