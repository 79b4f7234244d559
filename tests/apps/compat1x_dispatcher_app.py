"""A dispatcher written against the uhttp-workers 1.8.1 API, unchanged.

Its hooks record what they were called with; the @sync route /seen shows
the records. Settings: PORT, ADDRESS, TRUSTED_PROXIES (comma separated),
MAX_HEADERS_LENGTH (an HttpServer option, passed through),
STATIC_DIR (mounted at /, and its assets/ at /assets/ with headers and
authoritative).
"""

import os
import time

import uhttp.workers as _workers

ENV = os.environ


class CompatWorker(_workers.Worker):
    @_workers.api('/api/addr', 'GET')
    def addr(self, request):
        return {'remote_address': request.remote_address}

    @_workers.api('/api/crash', 'GET')
    def crash(self, request):
        os._exit(3)

    @_workers.api('/assets/{name}', 'GET')
    def asset(self, request):
        # never reached while /assets/ is an authoritative static mount
        return {'from': 'pool'}

    @_workers.api('/api/sleep', 'GET')
    def sleep(self, request):
        time.sleep(float(request.query.get('s', '1')))
        return {'slept': True}

    @_workers.api('/api/forward', 'GET')
    def forward_it(self, request):
        self.forward('/api/sink', {'n': 7})
        return {'forwarded': True}

    @_workers.api('/api/sink', 'POST')
    def sink(self, request):
        self.log.warning('sink got %r as request %s', request.data,
                         request.request_id)
        return {}

    def on_config(self, config):
        self.config = config

    @_workers.api('/api/config', 'GET')
    def show_config(self, request):
        return {'config': getattr(self, 'config', None)}

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid()}


class CompatDispatcher(_workers.Dispatcher):
    """1.8.1 hook signatures, as a 1.8.1 application wrote them."""

    seen = None

    def record(self, name, *values):
        if self.seen is None:
            self.seen = []
        self.seen.append([name, *values])

    def do_check_sync(self, client):
        self.record('do_check_sync', client.path)
        if client.headers.get('x-token') == 'crash':
            raise RuntimeError('do_check_sync bug on purpose')
        if client.headers.get('x-token') == 'custom':
            client.respond({'error': 'go away'}, status=401)
            raise _workers.RejectRequest()
        if client.headers.get('x-token') != 'secret':
            raise _workers.RejectRequest({'error': 'no token'}, status=401)

    def on_worker_died(self, pool, worker_id, reason, exitcode, victims):
        self.record('on_worker_died', pool.name, worker_id, exitcode,
                    [[request_id, pending.client.path]
                     for request_id, pending in victims],
                    [pending.client.method for _, pending in victims])

    def on_request_accepted(self, request_id, client, pool):
        self.record('accepted', request_id, client.path, pool.name)
        if client.headers.get('x-hook') == 'crash':
            raise RuntimeError('on_request_accepted bug on purpose')
        return {'role': 'admin'}

    def on_pending_removed(self, request_id, pending, reason):
        self.record('removed', request_id, reason)
        if reason == _workers.PENDING_WORKER_DIED:
            raise RuntimeError('on_pending_removed bug on purpose')

    def on_static_served(self, client, file_path, status):
        self.record('static', os.path.basename(file_path), status)
        if status == 404:
            raise RuntimeError('on_static_served bug on purpose')

    def on_forward(self, route, data):
        self.record('forward', route, data)
        super().on_forward(route, data)

    @_workers.sync('/sync/secret', 'GET')
    def secret(self, client, path_params):
        self.record('secret ran')
        client.respond({'secret': 42})

    @_workers.sync('/broadcast/{what}')
    def broadcast(self, client, path_params):
        # 1.8.1's control messages: ('CONFIG', config) and None (stop)
        pool = self._pools[0]
        if path_params['what'] == 'config':
            pool.broadcast((_workers.CTL_CONFIG, {'colour': 'green'}))
        else:
            pool.broadcast(None)
        client.respond({'sent': path_params['what']})

    @_workers.sync('/seen')
    def show(self, client, path_params):
        # `/seen` itself passes do_check_sync with the token
        client.respond({'seen': self.seen or []})


def main():
    proxies = [p for p in ENV.get('TRUSTED_PROXIES', '').split(',') if p]
    static_dir = ENV.get('STATIC_DIR')
    static_routes = None
    if static_dir:    # 1.8.1's mount options
        static_routes = {
            '/': {'path': static_dir},
            '/assets/': {'path': os.path.join(static_dir, 'assets'),
                         'headers': {'Cache-Control': 'max-age=60'},
                         'authoritative': True},
        }
    dispatcher = CompatDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        pools=[_workers.WorkerPool(
            CompatWorker, num_workers=1, routes=['/api/**', '/assets/**'],
            timeout=10)],
        static_routes=static_routes,
        trusted_proxies=proxies or None,
        # passed through to uhttp-server's HttpServer, as 1.8.1 did
        max_headers_length=int(ENV.get('MAX_HEADERS_LENGTH', '65536')))
    dispatcher.run()


if __name__ == '__main__':
    main()
