"""Test application exercising the core request path and supervision.

Settings come from the environment so tests can vary them:
PORT, ADDRESS, WORKERS, TIMEOUT, STUCK_TIMEOUT, MAX_PENDING, MAX_RESTARTS,
SETUP_FAIL_FLAG (a file: while it exists, setup() raises), KEEP_RETRYING
(set: exit_on_startup_failure=False), STATIC_DIR.
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ


def env_float(name, default):
    return float(ENV.get(name, default))


class Unpicklable:
    """A value neither JSON nor pickle can send."""

    def __reduce__(self):
        raise TypeError('not picklable')


class BaseHandler(_workers.ApiHandler):
    PATTERN = '/api/base'

    @_workers.api('/who', 'GET')
    def who(self, request):
        return {'handler': type(self).__name__, 'pattern': self.PATTERN,
                'worker': self.worker.worker_id}


class DerivedHandler(BaseHandler):
    PATTERN = '/api/derived'

    @_workers.api('/extra', 'GET')
    def extra(self, request):
        return {'extra': True}


class CoreWorker(_workers.Worker):
    HANDLERS = [BaseHandler, DerivedHandler]

    def setup(self):
        flag = ENV.get('SETUP_FAIL_FLAG')
        if flag and os.path.exists(flag):
            raise RuntimeError(f'setup refused: {flag} exists')
        hang = ENV.get('SETUP_HANG_FLAG')
        if hang and os.path.exists(hang):
            time.sleep(60)
        self.setup_calls = getattr(self, 'setup_calls', 0) + 1
        self.config = None
        self.idle_calls = 0
        self.deferred = {}
        self.disconnected = []
        self.ran = {}

    def on_config(self, config):
        self.config = config

    def on_idle(self):
        self.idle_calls += 1
        for request_id, (request, due) in list(self.deferred.items()):
            if time.monotonic() >= due:
                del self.deferred[request_id]
                request.respond({'deferred': request_id})

    def on_disconnect(self, request_id):
        self.disconnected.append(request_id)
        self.deferred.pop(request_id, None)

    def do_check(self, request):
        if request.headers.get('x-worker-deny') == 'tuple':
            return {'error': 'denied by worker'}, 401
        if request.headers.get('x-worker-deny') == 'raise':
            raise _workers.RejectRequest(data={'error': 'forbidden'},
                                         status=403)
        if request.headers.get('x-worker-deny') == 'default':
            raise _workers.RejectRequest()
        return None

    @_workers.api('/api/echo')
    def echo(self, request):
        data = request.data
        if isinstance(data, bytes):
            data = {'bytes': data.decode('latin-1')}
        return {
            'request_id': request.request_id,
            'method': request.method,
            'path': request.path,
            'path_params': request.path_params,
            'query': request.query,
            'data': data,
            'data_type': type(request.data).__name__,
            'headers': request.headers,
            'cookies': request.cookies,
            'content_type': request.content_type,
            'worker': self.worker_id,
            'pid': os.getpid(),
        }

    @_workers.api('/api/item/{id:int}', 'GET')
    def item(self, request):
        return {'id': request.path_params['id']}

    @_workers.api('/api/item/{id:int}', 'DELETE')
    def delete_item(self, request):
        return {'deleted': request.path_params['id']}

    @_workers.api('/api/price/{amount:float}', 'GET')
    def price(self, request):
        return {'amount': request.path_params['amount']}

    @_workers.api('/api/tag/{name}')
    def tag(self, request):
        return {'name': request.path_params['name'],
                'method': request.method}

    @_workers.api('/api/status/{code:int}', 'GET')
    def status(self, request):
        return {'code': request.path_params['code']}, \
            request.path_params['code'], {'X-Custom': 'yes'}

    @_workers.api('/api/badanswer/{kind}', 'GET')
    def bad_answer(self, request):
        """Answers that must never reach the wire as given."""
        return {
            'colon-in-name': ('x', 200, {'x-a:b': '1'}),
            'space-in-name': ('x', 200, {'x a': '1'}),
            'nul-in-value': ('x', 200, {'x-a': 'a\x00b'}),
            'crlf-in-value': ('x', 200, {'x-a': 'a\r\nset-cookie: y=1'}),
            'function-value': ('x', 200, {'x-a': print}),
            'status-1xx': ('x', 102),
            'status-101': ('x', 101),
            'status-700': ('x', 700),
            'status-str': ('x', '200'),
        }[request.path_params['kind']]

    @_workers.api('/api/bytes', 'GET')
    def raw_bytes(self, request):
        return b'\x00\x01binary'

    @_workers.api('/api/text', 'GET')
    def text(self, request):
        return 'plain text'

    @_workers.api('/api/fail', 'GET')
    def fail(self, request):
        raise ValueError('handler bug on purpose')

    @_workers.api('/api/unpicklable', 'GET')
    def unpicklable(self, request):
        return Unpicklable()

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker': self.worker_id,
                'kwargs': self.kwargs, 'setup_calls': self.setup_calls,
                'config': self.config, 'idle_calls': self.idle_calls}

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': request.path_params['seconds'], 'pid': os.getpid()}

    @_workers.api('/api/count/{key}', 'POST')
    def count(self, request):
        key = request.path_params['key']
        self.ran[key] = self.ran.get(key, 0) + 1
        self.log.info('ran {key} in worker {w}', key=key, w=self.worker_id)
        return {'ran': self.ran[key]}

    @_workers.api('/api/slowcount/{key}/{seconds:float}', 'POST')
    def slow_count(self, request):
        """Sleep, then count like /api/count/{key} (client-left tests)."""
        self.log.info('slowcount {key} started', key=request.path_params['key'])
        time.sleep(request.path_params['seconds'])
        return self.count(request)

    @_workers.api('/api/ran/{key}', 'GET')
    def ran_count(self, request):
        return {'ran': self.ran.get(request.path_params['key'], 0)}

    @_workers.api('/api/keepalive/{seconds:float}', 'GET')
    def keepalive(self, request):
        end = time.monotonic() + request.path_params['seconds']
        while time.monotonic() < end:
            time.sleep(0.05)
            self.keep_alive()
        return {'kept_alive': True}

    @_workers.api('/api/ignore-term', 'GET')
    def ignore_term(self, request):
        """Hang with SIGTERM and SIGQUIT blocked: only SIGKILL ends this
        worker."""
        import signal  # pylint: disable=import-outside-toplevel
        signal.pthread_sigmask(signal.SIG_BLOCK,
                               {signal.SIGTERM, signal.SIGQUIT})
        time.sleep(60)
        return {'unreachable': True}

    @_workers.api('/api/descriptors', 'GET')
    def descriptors(self, request):
        """What this worker process has open, by kind."""
        kinds = {}
        for name in os.listdir('/proc/self/fd'):
            try:
                target = os.readlink(f'/proc/self/fd/{name}')
            except OSError:
                continue  # the listing's own descriptor, already closed
            kind = target.split(':', 1)[0] if ':' in target else target
            kinds[kind] = kinds.get(kind, 0) + 1
        return {'kinds': kinds, 'pid': os.getpid()}

    @_workers.api('/api/crash', 'GET')
    def crash(self, request):
        os._exit(7)

    @_workers.api('/api/log', 'POST')
    def log_it(self, request):
        self.log.warning('percent style %d %s', 42, 'x')
        self.log.warning('brace style {n}', n=43)
        self.log.debug('debug line hidden at default level')
        return {'logged': True}

    @_workers.api('/api/defer/{seconds:float}', 'GET')
    def defer(self, request):
        self.deferred[request.request_id] = (
            request, time.monotonic() + request.path_params['seconds'])
        return _workers.DEFERRED

    @_workers.api('/api/disconnected', 'GET')
    def disconnected_list(self, request):
        return {'disconnected': self.disconnected}

    @_workers.api('/internal/record', 'POST')
    def record(self, request):
        self.ran['internal'] = self.ran.get('internal', 0) + 1
        self.log.warning('internal record %s', request.data)
        return {'ok': True}


class OtherWorker(_workers.Worker):
    @_workers.api('/other/{rest}')
    def other(self, request):
        return {'pool': 'other', 'rest': request.path_params['rest']}

    @_workers.api('/fallback/hit')
    def fallback(self, request):
        return {'pool': 'fallback'}


class CoreDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        mode = client.headers.get('x-deny')
        if mode == 'custom':
            client.respond({'error': 'unauthorized'}, status=401)
            raise _workers.RejectRequest()
        if mode == 'default':
            raise _workers.RejectRequest()
        if mode == 'data':
            raise _workers.RejectRequest(data={'error': 'nope'}, status=418)
        if mode == 'crash':
            raise RuntimeError('do_check bug')

    def on_response(self, response, pending):
        if pending.client.headers.get('x-record') and response.status == 200:
            pool = self._find_pool('/internal/record')
            pool.request_queue.put(_workers.Request(
                request_id=-1, method='POST', path='/internal/record',
                data={'seen': response.data['path']}))

    def on_idle(self):
        self.idle_ticks = getattr(self, 'idle_ticks', 0) + 1

    def on_worker_died(self, pool, worker_id, reason, exitcode):
        self.died = getattr(self, 'died', [])
        self.died.append([pool.name, worker_id, reason, exitcode])

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok',
                        'pools': [pool.status() for pool in self._pools]})

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond({'pools': [pool.status() for pool in self._pools],
                        'pending': len(self._pending),
                        'idle_ticks': getattr(self, 'idle_ticks', 0),
                        'died': getattr(self, 'died', [])})

    @_workers.sync('/sync/hello/{name}', 'GET')
    def hello(self, client, path_params):
        client.respond({'hello': path_params['name']})

    @_workers.sync('/sync/fail')
    def sync_fail(self, client, path_params):
        raise RuntimeError('sync bug on purpose')

    @_workers.sync('/sync/silent')
    def sync_silent(self, client, path_params):
        pass

    @_workers.sync('/control/config', 'POST')
    def send_config(self, client, path_params):
        for pool in self._pools:
            pool.send_config(client.data)
        client.respond({'sent': client.data})


def tls_context():
    """An SSLContext from TLS_CERT/TLS_KEY, or None."""
    if not ENV.get('TLS_CERT'):
        return None
    import ssl  # pylint: disable=import-outside-toplevel
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ENV['TLS_CERT'], ENV['TLS_KEY'])
    return context


def main():
    static_dir = ENV.get('STATIC_DIR')
    dispatcher = CoreDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        static_routes={'/static/': static_dir} if static_dir else None,
        max_pending=int(ENV.get('MAX_PENDING', '1000')),
        ssl_context=tls_context(),
        shutdown_timeout=env_float('SHUTDOWN_TIMEOUT', 10),
        max_content_length=int(ENV.get('MAX_CONTENT_LENGTH', 1024 * 1024)),
        log_level=int(ENV.get('LOG_LEVEL', _workers.LOG_INFO)),
        pools=[
            _workers.WorkerPool(
                CoreWorker, num_workers=int(ENV.get('WORKERS', '2')),
                routes=['/api/**', '/internal/**'],
                timeout=env_float('TIMEOUT', 30),
                stuck_timeout=env_float('STUCK_TIMEOUT', 60),
                heartbeat_interval=env_float('HEARTBEAT', 0.2),
                max_restarts=int(ENV.get('MAX_RESTARTS', '10')),
                restart_window=env_float('RESTART_WINDOW', 300),
                log_level=int(ENV.get('WORKER_LOG_LEVEL',
                                      _workers.LOG_INFO)),
                worker_kill_timeout=env_float('KILL_TIMEOUT', 5),
                setup_timeout=env_float('SETUP_TIMEOUT', 300),
                queue_warning=int(ENV.get('QUEUE_WARNING', '100')),
                unrecoverable_exit_codes=[
                    int(code) for code in ENV.get('UNRECOVERABLE', '').split()],
                exit_on_startup_failure=not ENV.get('KEEP_RETRYING'),
                flavour='test', answer=42,
            ),
            _workers.WorkerPool(OtherWorker, routes=['/other/**']),
            _workers.WorkerPool(OtherWorker, name='Fallback'),
        ],
    )
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
