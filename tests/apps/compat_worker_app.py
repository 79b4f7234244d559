"""Test application: worker-side code written for uhttp-workers 1.x.

Its handlers return `Response(...)`, answer with `request.respond(...,
cookies=)`, rely on one trailing slash and exponents in float parameters,
and its worker has a `teardown()`.
Settings: PORT, ADDRESS, WORKERS, MAX_REQUESTS, TEARDOWN_FILE (each
teardown() appends its PID there), TEARDOWN_FAIL (teardown() raises after
writing).
"""

import os

import uhttp.workers as _workers

ENV = os.environ


class CompatWorker(_workers.Worker):

    def teardown(self):
        with open(ENV['TEARDOWN_FILE'], 'a', encoding='ascii') as file:
            file.write(f'{os.getpid()}\n')
        if ENV.get('TEARDOWN_FAIL'):
            raise RuntimeError('teardown went wrong')

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid()}

    @_workers.api('/api/response', 'GET')
    def response(self, request):
        return _workers.Response(
            0, data={'made': 'by a Response'}, status=201,
            headers={'X-Kind': 'compat'},
            cookies={'session': 'abc; Path=/', 'old': None})

    @_workers.api('/api/response-positional', 'GET')
    def response_positional(self, request):
        return _workers.Response(request.request_id, 'plain text', 202)

    @_workers.api('/api/deferred-cookies', 'GET')
    def deferred_cookies(self, request):
        request.respond({'ok': True}, headers={'Set-Cookie': 'first=1'},
                        cookies={'second': '2; HttpOnly', 'gone': None})
        return _workers.DEFERRED

    @_workers.api('/api/bad-cookie', 'GET')
    def bad_cookie(self, request):
        return _workers.Response(0, data='x', cookies={'bad name': 'x'})

    @_workers.api('/api/items', 'GET')
    def items(self, request):
        return {'items': [], 'path': request.path}

    @_workers.api('/api/price/{value:float}', 'GET')
    def price(self, request):
        return {'value': request.path_params['value']}

    @_workers.api('/api/request', 'POST')
    def request_view(self, request):
        return {'content_type': request.content_type, 'data': request.data,
                'query': request.query, 'context': request.context}


class CompatDispatcher(_workers.Dispatcher):
    last_response = None

    def on_response(self, response, pending):
        self.last_response = {
            'status': response.status, 'data': response.data,
            'x-kind': response.headers.get('x-kind'),
            'body': len(response.body)}

    @_workers.sync('/last-response')
    def seen(self, client, path_params):
        client.respond(self.last_response)

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond(self.status())


def main():
    dispatcher = CompatDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=5,
        pools=[_workers.WorkerPool(
            CompatWorker, num_workers=int(ENV.get('WORKERS', '2')),
            max_requests=int(ENV.get('MAX_REQUESTS', '0')),
            heartbeat_interval=0.2, log_level=_workers.LOG_INFO,
            routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
