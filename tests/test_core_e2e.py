"""End-to-end tests of the core request path of uhttp.workers.

A real dispatcher runs tests/apps/core_app.py in a subprocess on 127.0.0.1;
the tests talk HTTP to it over real sockets (http.client, or raw sockets for
malformed input and for many concurrent clients). Tests that leave the
server as they found it share one server per module; tests that need other
settings, or that stop the server, start their own.
"""

import concurrent.futures
import http.client
import inspect
import io
import json
import os
import pty
import re
import selectors
import signal
import socket
import threading
import time
import uuid

import pytest

import uhttp.workers as _workers
from uhttp.workers.log import LogOutput, detect_style

from conftest import (
    APPS, Server, parse_response, pid_alive, wait_until, worker_pids)

CORE_APP = os.path.join(APPS, 'core_app.py')
ROUTING_APP = os.path.join(APPS, 'core_routing_app.py')

MAX_CONTENT_LENGTH = 100_000
CORE_WORKERS = 4            # CoreWorker x2, OtherWorker x1, Fallback x1


# -- helpers -------------------------------------------------------------------

def exchange(port, data, host='127.0.0.1', timeout=10.0):
    """Send raw bytes; return (status, headers, body) of the first response,
    or (None, {}, b'') when the server closed without answering."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(data)
        buffer = bytearray()
        while True:
            parsed = parse_response(buffer)
            if parsed:
                return parsed[:3]
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b''
            if not chunk:
                if buffer:
                    raise AssertionError(f'incomplete response: {buffer!r}')
                return None, {}, b''
            buffer += chunk


def get_request(path, extra=''):
    """Bytes of a keep-alive HTTP/1.1 GET."""
    return f'GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n'.encode()


def read_one_response_each(socks, timeout=60.0):
    """Read one HTTP response from every socket, all at once (selector)."""
    selector = selectors.DefaultSelector()
    buffers = {}
    results = {}
    for index, sock in enumerate(socks):
        buffers[index] = bytearray()
        selector.register(sock, selectors.EVENT_READ, index)
    deadline = time.monotonic() + timeout
    try:
        while len(results) < len(socks):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f'{len(socks) - len(results)} of {len(socks)} clients '
                    'got no answer')
            for key, _mask in selector.select(min(remaining, 1.0)):
                index = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b''
                if not chunk:
                    results[index] = None
                    selector.unregister(key.fileobj)
                    continue
                buffers[index] += chunk
                parsed = parse_response(buffers[index])
                if parsed:
                    results[index] = parsed[:3]
                    selector.unregister(key.fileobj)
    finally:
        selector.close()
    return [results[index] for index in range(len(socks))]


def monitor(server):
    """The app's /monitor document."""
    return server.get('/monitor').json()


def core_pool(server):
    """Status of the CoreWorker pool."""
    return monitor(server)['pools'][0]


def start_module_server(script, env=None, ready_workers=CORE_WORKERS):
    server = Server(script, env=env)
    try:
        server.start(ready_workers)
    except BaseException:
        server.stop()
        raise
    return server


def in_thread(func, *args, **kwargs):
    """Run func(*args, **kwargs) in a thread; return (thread, result list)."""
    result = []

    def run():
        try:
            result.append(func(*args, **kwargs))
        except Exception as err:  # pylint: disable=broad-except
            result.append(err)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def unique(prefix='k'):
    return f'{prefix}{uuid.uuid4().hex[:12]}'


# -- servers shared by a module ---------------------------------------------------

@pytest.fixture(scope='module')
def core():
    """core_app.py with its defaults (2 CoreWorkers) and a small body limit."""
    server = start_module_server(
        CORE_APP, env={'MAX_CONTENT_LENGTH': str(MAX_CONTENT_LENGTH)})
    yield server
    server.stop()


@pytest.fixture(scope='module')
def routing(tmp_path_factory):
    """core_routing_app.py: two overlapping pools, no fallback, static."""
    static = tmp_path_factory.mktemp('routing_static')
    (static / 'file.txt').write_text('static file wins')
    server = start_module_server(
        ROUTING_APP, env={'STATIC_DIR': str(static)}, ready_workers=2)
    yield server
    server.stop()


@pytest.fixture(scope='module')
def short_timeout():
    """Pool timeout 0.5 s, worker logs at DEBUG."""
    server = start_module_server(
        CORE_APP, env={'TIMEOUT': '0.5', 'WORKER_LOG_LEVEL': '10'})
    yield server
    server.stop()


@pytest.fixture(scope='module')
def single():
    """One CoreWorker: a slow request makes the next ones wait."""
    server = start_module_server(CORE_APP, env={'WORKERS': '1'},
                                 ready_workers=CORE_WORKERS - 1)
    yield server
    server.stop()


# -- 1. public API -------------------------------------------------------------------

def test_public_api_names_and_levels():
    for name in ('Dispatcher', 'Worker', 'WorkerPool', 'ApiHandler',
                 'Request', 'Response', 'api', 'sync', 'RejectRequest',
                 'DEFERRED'):
        assert hasattr(_workers, name), name
    assert issubclass(_workers.RejectRequest, Exception)
    assert (_workers.LOG_DEBUG, _workers.LOG_INFO, _workers.LOG_WARNING,
            _workers.LOG_ERROR, _workers.LOG_CRITICAL) == (10, 20, 30, 40, 50)
    assert repr(_workers.DEFERRED) == 'DEFERRED'
    rejected = _workers.RejectRequest()
    assert (rejected.data, rejected.status) == ({'error': 'Rejected'}, 403)


def _empty_default(parameter):
    # [] and {} as defaults would be shared mutable objects: None that means
    # "empty" is the same contract.
    return parameter.default is None or parameter.default in ([], {})


def test_dispatcher_documented_defaults():
    params = inspect.signature(_workers.Dispatcher.__init__).parameters
    names = list(params)[1:8]
    assert names == ['port', 'address', 'pools', 'static_routes',
                     'shutdown_timeout', 'max_pending', 'ssl_context']
    assert params['port'].default == 8080
    assert params['address'].default == '0.0.0.0'
    assert _empty_default(params['pools'])
    assert _empty_default(params['static_routes'])
    assert params['shutdown_timeout'].default == 10
    assert params['max_pending'].default == 1000
    assert params['ssl_context'].default is None
    dispatcher = _workers.Dispatcher()
    assert dispatcher.pools == []
    assert not dispatcher._static  # pylint: disable=protected-access
    assert (dispatcher.port, dispatcher.address, dispatcher.max_pending,
            dispatcher.shutdown_timeout) == (8080, '0.0.0.0', 1000, 10)


def test_worker_pool_documented_defaults():
    params = inspect.signature(_workers.WorkerPool.__init__).parameters
    assert list(params)[1:11] == [
        'worker_class', 'num_workers', 'routes', 'timeout', 'stuck_timeout',
        'heartbeat_interval', 'log_level', 'max_restarts', 'restart_window',
        'queue_warning']
    expected = {
        'num_workers': 1, 'routes': None, 'timeout': 30, 'stuck_timeout': 60,
        # log_level: None takes the dispatcher's level (1.x: LOG_WARNING,
        # which silently dropped self.log.info() of handlers)
        'heartbeat_interval': 1, 'log_level': None,
        'max_restarts': 10, 'restart_window': 300, 'queue_warning': 100}
    for name, value in expected.items():
        assert params[name].default == value, name
    assert params['worker_class'].default is inspect.Parameter.empty
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD
               for p in params.values())


# -- 2. routing -------------------------------------------------------------------------

def test_routing_static_beats_sync(routing):
    result = routing.get('/static/file.txt')
    assert result.status == 200
    assert result.body == b'static file wins'


def test_routing_sync_beats_pool(routing):
    result = routing.get('/a/sync')
    assert result.status == 200
    assert result.json() == {'by': 'sync', 'path': '/a/sync'}


def test_routing_first_matching_pool_wins(routing):
    # '/a/b/x' matches pool A ('/a/**', listed first) and pool B ('/a/b/**')
    assert routing.get('/a/b/x').json() == {'by': 'pool A', 'path': '/a/b/x'}
    assert routing.get('/a/x').json() == {'by': 'pool A', 'path': '/a/x'}
    assert routing.get('/b/x').json() == {'by': 'pool B', 'path': '/b/x'}


def test_routing_no_pool_no_fallback_is_404(routing):
    result = routing.get('/nowhere/at/all')
    assert result.status == 404
    assert result.json() == {'error': 'Not Found'}
    assert routing.get('/sync/12').json() == {'by': 'sync', 'n': 12}
    assert routing.get('/sync/twelve').status == 404


def test_routing_prefixed_pool_and_fallback_pool(core):
    assert core.get('/other/thing').json() == {'pool': 'other',
                                               'rest': 'thing'}
    before = monitor(core)['pools'][2]
    assert before['name'] == 'Fallback'
    result = core.get('/fallback/hit')
    assert result.json() == {'pool': 'fallback'}
    # the fallback pool (not the '/other/**' pool) ran it
    wait_until(lambda: monitor(core)['pools'][2]['workers'][0]['handled']
               > before['workers'][0]['handled'], 10)
    # a path no route of the fallback worker knows
    assert core.get('/no/such/path').status == 404


def test_path_parameter_conversion(core):
    item = core.get('/api/item/42').json()
    assert item == {'id': 42} and isinstance(item['id'], int)
    assert core.get('/api/item/-3').json() == {'id': -3}
    price = core.get('/api/price/2.5').json()
    assert price == {'amount': 2.5}
    assert core.get('/api/price/7').json() == {'amount': 7.0}
    assert core.get('/api/tag/hello').json() == {'name': 'hello',
                                                 'method': 'GET'}


@pytest.mark.parametrize('path', [
    '/api/item/abc', '/api/item/1.5', '/api/item/', '/api/price/abc',
    '/api/price/nan', '/api/nothing/here'])
def test_unconvertible_or_unknown_path_is_404(core, path):
    result = core.get(path)
    assert result.status == 404, result
    assert result.json() == {'error': 'Not Found'}


def test_405_with_allow_header(core):
    result = core.request('PUT', '/api/item/5')
    assert result.status == 405
    allowed = {m.strip() for m in result.headers['allow'].split(',')}
    assert allowed == {'GET', 'DELETE'}
    assert core.request('DELETE', '/api/item/5').json() == {'deleted': 5}
    result = core.get('/api/log')
    assert result.status == 405
    assert result.headers['allow'] == 'POST'
    # a method a @sync route does not take goes on to the pool serving
    # the path (here the fallback pool, which has no such route)
    result = core.request('POST', '/sync/hello/bob')
    assert result.status == 404
    assert result.json() == {'error': 'Not Found'}


@pytest.mark.parametrize('method', ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'])
def test_route_without_methods_accepts_all(core, method):
    result = core.request(method, '/api/tag/any')
    assert result.status == 200
    assert result.json() == {'name': 'any', 'method': method}


# -- 3. ApiHandler, HANDLERS, @api on the worker --------------------------------------

def test_api_handler_pattern_prefix_and_worker(core):
    result = core.get('/api/base/who').json()
    assert result['handler'] == 'BaseHandler'
    assert result['pattern'] == '/api/base'
    assert result['worker'] in (0, 1)    # self.worker is the Worker


def test_api_handler_inheritance_uses_subclass_pattern(core):
    result = core.get('/api/derived/who').json()
    assert result == {'handler': 'DerivedHandler', 'pattern': '/api/derived',
                      'worker': result['worker']}
    assert core.get('/api/derived/extra').json() == {'extra': True}
    # the subclass' own route is not added under the parent's PATTERN
    assert core.get('/api/base/extra').status == 404


# -- 4. the Request as handlers see it ----------------------------------------------

def test_request_fields_json(core):
    result = core.request(
        'POST', '/api/echo?page=1&tag=a%20b', body={'a': 1, 'b': [1, 2]},
        headers={'X-Test': 'yes', 'Cookie': 'session=abc; theme=dark'})
    assert result.status == 200
    echo = result.json()
    assert echo['method'] == 'POST'
    assert echo['path'] == '/api/echo'
    assert echo['path_params'] == {}
    assert echo['query'] == {'page': '1', 'tag': 'a b'}
    assert echo['data'] == {'a': 1, 'b': [1, 2]}
    assert echo['data_type'] == 'dict'
    assert echo['headers']['x-test'] == 'yes'
    assert echo['cookies'] == {'session': 'abc', 'theme': 'dark'}
    assert echo['content_type'] == 'application/json'
    assert isinstance(echo['request_id'], int) and echo['request_id'] > 0


def test_request_fields_binary_and_empty(core):
    body = bytes(range(256))
    echo = core.request('POST', '/api/echo', body=body, headers={
        'Content-Type': 'application/octet-stream'}).json()
    assert echo['data_type'] == 'bytes'
    assert echo['data'] == {'bytes': body.decode('latin-1')}
    assert echo['content_type'] == 'application/octet-stream'

    echo = core.request('PUT', '/api/echo', body=b'hello', headers={
        'Content-Type': 'text/plain; charset=utf-8'}).json()
    assert echo['data_type'] == 'bytes'
    assert echo['data'] == {'bytes': 'hello'}
    assert echo['content_type'] == 'text/plain'

    echo = core.get('/api/echo').json()
    assert echo['data'] is None and echo['data_type'] == 'NoneType'
    assert echo['query'] is None
    assert echo['cookies'] == {}
    assert echo['content_type'] == ''
    assert echo['method'] == 'GET'


def test_request_ids_are_unique(core):
    ids = [core.get('/api/echo').json()['request_id'] for _ in range(5)]
    assert len(set(ids)) == 5


def test_invalid_json_body_is_400(core):
    result = core.request('POST', '/api/echo', body=b'{"a": 1,,,',
                          headers={'Content-Type': 'application/json'})
    assert result.status == 400
    assert b'JSON' in result.body
    assert core.get('/api/item/1').status == 200


def test_invalid_json_body_on_a_sync_route_is_400(core):
    # JSON bodies are decoded when first used: in the dispatcher for @sync
    # routes, in the worker for pool routes
    result = core.request('POST', '/control/config', body=b'[1, 2',
                          headers={'Content-Type': 'application/json'})
    assert result.status == 400
    assert b'JSON' in result.body
    assert core.get('/sync/hello/x').json() == {'hello': 'x'}


# -- 5. handler return values -------------------------------------------------------

def test_plain_data_is_200_json(core):
    result = core.get('/api/item/9')
    assert result.status == 200
    assert result.headers['content-type'].startswith('application/json')
    assert result.json() == {'id': 9}


def test_data_status_headers_tuple(core):
    result = core.get('/api/status/201')
    assert result.status == 201
    assert result.headers['x-custom'] == 'yes'
    assert result.json() == {'code': 201}
    result = core.get('/api/status/418')
    assert result.status == 418
    assert result.json() == {'code': 418}


def test_data_status_tuple(core):
    # the worker's do_check returns (data, status)
    result = core.get('/api/item/1', headers={'X-Worker-Deny': 'tuple'})
    assert result.status == 401
    assert result.json() == {'error': 'denied by worker'}


def test_bytes_are_sent_as_octet_stream(core):
    result = core.get('/api/bytes')
    assert result.status == 200
    assert result.headers['content-type'] == 'application/octet-stream'
    assert result.body == b'\x00\x01binary'


def test_str_is_sent_as_text(core):
    result = core.get('/api/text')
    assert result.status == 200
    assert result.headers['content-type'].startswith('text/')
    assert result.body == b'plain text'


def test_handler_exception_is_500_with_traceback_logged(core):
    result = core.get('/api/fail')
    assert result.status == 500
    assert result.json() == {'error': 'handler bug on purpose'}
    core.wait_log(r'ERROR +\[CoreWorker\[\d\]\] GET /api/fail .*handler bug '
                  r'on purpose')
    log = core.log
    assert 'Traceback (most recent call last)' in log
    assert "ValueError: handler bug on purpose" in log
    assert core.get('/api/item/2').json() == {'id': 2}


def test_unserialisable_result_is_500_and_worker_survives(core):
    before = {w['index']: w['pid'] for w in core_pool(core)['workers']}
    result = core.get('/api/unpicklable')
    assert result.status == 500
    match = core.wait_log(
        r'ERROR +\[CoreWorker\[(\d)\]\] request \d+: cannot encode')
    index = int(match.group(1))
    # the same worker process keeps serving
    status = core_pool(core)
    worker = status['workers'][index]
    assert worker['pid'] == before[index]
    assert worker['alive'] and worker['restarts'] == 0
    assert pid_alive(before[index])
    pids = {core.get('/api/pid').json()['pid'] for _ in range(3)}
    assert pids <= set(before.values())
    assert core.get('/api/item/3').json() == {'id': 3}


# -- 6. sync routes -----------------------------------------------------------------

def test_sync_route_with_params(core):
    result = core.get('/sync/hello/world')
    assert result.status == 200
    assert result.json() == {'hello': 'world'}


def test_sync_handler_raising_is_500_and_dispatcher_serves_on(core):
    result = core.get('/sync/fail')
    assert result.status == 500
    core.wait_log(r'sync handler GET /sync/fail failed')
    assert 'RuntimeError: sync bug on purpose' in core.log
    assert core.proc.poll() is None
    assert core.get('/health').json()['status'] == 'ok'
    assert core.get('/sync/hello/again').json() == {'hello': 'again'}


def test_sync_handler_not_responding_is_500(core):
    result = core.get('/sync/silent')
    assert result.status == 500
    core.wait_log(r'sync handler for GET /sync/silent returned without')
    assert core.get('/sync/hello/x').status == 200


# -- 7. do_check ------------------------------------------------------------------------

def test_dispatcher_do_check_custom_response(core):
    key = unique()
    result = core.request('POST', f'/api/count/{key}',
                          headers={'X-Deny': 'custom'})
    assert result.status == 401
    assert result.json() == {'error': 'unauthorized'}
    # the rejected request never reached a worker
    assert core.request('POST', '/api/log').status == 200
    core.wait_log(r'percent style 42 x')
    assert core.count_log(f'ran {key}') == 0


def test_dispatcher_do_check_default_reject(core):
    result = core.get('/api/item/1', headers={'X-Deny': 'default'})
    assert result.status == 403
    assert result.json() == {'error': 'Rejected'}


def test_dispatcher_do_check_reject_with_data_and_status(core):
    result = core.get('/api/item/1', headers={'X-Deny': 'data'})
    assert result.status == 418
    assert result.json() == {'error': 'nope'}


def test_dispatcher_do_check_raising_is_500(core):
    result = core.get('/api/item/1', headers={'X-Deny': 'crash'})
    assert result.status == 500
    core.wait_log(r'do_check\(\) raised')
    assert 'RuntimeError: do_check bug' in core.log
    assert core.get('/api/item/1').json() == {'id': 1}


@pytest.mark.parametrize('mode', ['default', 'custom', 'crash'])
def test_dispatcher_do_check_not_called_for_sync(core, mode):
    result = core.get('/sync/hello/free', headers={'X-Deny': mode})
    assert result.status == 200
    assert result.json() == {'hello': 'free'}
    assert core.get('/health', headers={'X-Deny': mode}).status == 200


def test_worker_do_check_raise_with_data(core):
    result = core.get('/api/item/1', headers={'X-Worker-Deny': 'raise'})
    assert result.status == 403
    assert result.json() == {'error': 'forbidden'}


def test_worker_do_check_raise_default(core):
    result = core.get('/api/item/1', headers={'X-Worker-Deny': 'default'})
    assert result.status == 403
    assert result.json() == {'error': 'Rejected'}


# -- 8. lifecycle hooks ------------------------------------------------------------

def _pid_info_from_both_workers(server):
    """/api/pid from each CoreWorker: one is kept busy, the other answers."""
    thread, result = in_thread(server.get, '/api/sleep/0.8')
    wait_until(lambda: any(w['in_flight'] for w in core_pool(server)['workers']),
               10, message='the slow request was not assigned')
    busy = core_pool(server)['workers']
    first = server.get('/api/pid').json()
    thread.join(15)
    assert result and result[0].status == 200, result
    second = server.get('/api/pid').json()
    assert first['pid'] != second['pid'], (busy, first, second)
    return [first, second]


def test_setup_once_per_worker_and_kwargs(core):
    infos = _pid_info_from_both_workers(core)
    pids = {w['pid'] for w in core_pool(core)['workers']}
    assert {info['pid'] for info in infos} == pids
    for info in infos:
        assert info['setup_calls'] == 1
        assert info['kwargs'] == {'flavour': 'test', 'answer': 42}
    # and still once after more requests
    assert core.get('/api/pid').json()['setup_calls'] == 1


def test_worker_on_idle_runs(core):
    first = core.get('/api/pid').json()

    def grew():
        info = core.get('/api/pid').json()
        return info['pid'] == first['pid'] and \
            info['idle_calls'] > first['idle_calls']
    wait_until(grew, 15, interval=0.1,
               message='worker on_idle() was not called')


def test_dispatcher_on_idle_runs(core):
    first = monitor(core)['idle_ticks']
    wait_until(lambda: monitor(core)['idle_ticks'] > first, 15, interval=0.1,
               message='Dispatcher.on_idle() was not called')


def test_on_response_internal_request_runs_in_worker(core):
    pattern = r"WARNING +\[CoreWorker\[\d\]\] internal record " \
              r"\{'seen': '/api/echo'\}"
    before = core.count_log(pattern)
    result = core.get('/api/echo', headers={'X-Record': '1'})
    assert result.status == 200
    assert result.json()['path'] == '/api/echo'
    wait_until(lambda: core.count_log(pattern) == before + 1, 10,
               message='the request_id=-1 request did not run')
    # nothing waits for its answer, nothing leaks
    wait_until(lambda: monitor(core)['pending'] == 0
               and core_pool(core)['pending'] == 0, 10)
    for _ in range(3):
        assert core.get('/api/item/1').status == 200
    assert core.count_log(pattern) == before + 1


# -- 9. limits -------------------------------------------------------------------------

def test_pool_timeout_is_504_and_logged_with_request_id(short_timeout):
    server = short_timeout
    connection = http.client.HTTPConnection('127.0.0.1', server.port,
                                            timeout=20)
    try:
        connection.request('GET', '/api/echo')
        last_id = json.loads(connection.getresponse().read())['request_id']
        connection.request('GET', '/api/sleep/2')
        response = connection.getresponse()
        assert response.status == 504
        assert json.loads(response.read()) == {'error': 'Gateway Timeout'}
        server.wait_log(rf'WARNING +\[dispatcher\] request {last_id + 1} '
                        r'GET /api/sleep/2 timed out')
        # the late answer must not reach this connection's next request
        wait_until(lambda: core_pool(server)['pending'] == 0, 15,
                   message='the slow request never finished')
        connection.request('GET', '/api/item/5')
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {'id': 5}
    finally:
        connection.close()


def test_debug_log_line_shown_at_debug_level(short_timeout):
    assert short_timeout.request('POST', '/api/log').status == 200
    short_timeout.wait_log(r'DEBUG +\[CoreWorker\[\d\]\] debug line hidden')


def test_body_over_max_content_length_is_413(core):
    head = (b'POST /api/echo HTTP/1.1\r\nHost: x\r\n'
            b'Content-Type: application/octet-stream\r\n'
            b'Content-Length: %d\r\n\r\n' % (MAX_CONTENT_LENGTH + 1000))
    status, _headers, _body = exchange(core.port, head + b'x' * 1000)
    assert status == 413
    # just under the limit is accepted and arrives whole
    body = b'y' * (MAX_CONTENT_LENGTH - 10)
    result = core.request('POST', '/api/echo', body=body, headers={
        'Content-Type': 'application/octet-stream'})
    assert result.status == 200
    assert result.json()['data'] == {'bytes': body.decode()}


def test_malformed_request_line(core):
    status, _headers, _body = exchange(core.port, b'GARBAGE\r\n\r\n')
    assert status is None or 400 <= status < 500, status
    status, _headers, _body = exchange(core.port, b'GET /\r\n\r\n')
    assert status is None or 400 <= status < 500, status
    assert core.proc.poll() is None
    assert core.get('/api/item/11').json() == {'id': 11}


def test_unknown_method_is_501(core):
    status, _headers, _body = exchange(
        core.port, b'FOO / HTTP/1.1\r\nHost: x\r\n\r\n')
    assert status == 501
    assert core.get('/api/item/12').json() == {'id': 12}


def test_thousand_keep_alive_clients(core):
    count = 1000
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(('127.0.0.1', core.port),
                                                  timeout=30))
        for round_ in range(2):
            for index, sock in enumerate(socks):
                sock.sendall(get_request(f'/api/item/{round_ * count + index}'))
            answers = read_one_response_each(socks)
            for index, answer in enumerate(answers):
                assert answer is not None, f'client {index} was closed'
                status, headers, body = answer
                assert status == 200, (index, answer)
                assert json.loads(body) == {'id': round_ * count + index}
                assert headers.get('connection', '').lower() != 'close'
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: monitor(core)['pending'] == 0, 10)


def read_responses(sock, count, timeout=5.0):
    """Read `count` responses, in order, from one connection."""
    sock.settimeout(timeout)
    buffer = bytearray()
    answers = []
    while len(answers) < count:
        parsed = parse_response(buffer)
        if parsed:
            answers.append(parsed[:3])
            del buffer[:parsed[3]]
            continue
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            chunk = b''
        if not chunk:
            raise AssertionError(
                f'got {len(answers)} of {count} answers: {answers}')
        buffer += chunk
    return answers


def test_next_request_sent_while_first_is_pending(core):
    """HTTP/1.1 pipelining, the second request in its own segment."""
    with socket.create_connection(('127.0.0.1', core.port),
                                  timeout=10) as sock:
        sock.sendall(get_request('/api/sleep/0.5'))
        wait_until(lambda: any(w['in_flight']
                               for w in core_pool(core)['workers']), 10)
        sock.sendall(get_request('/api/item/21'))
        answers = read_responses(sock, 2, timeout=20)
    assert [a[0] for a in answers] == [200, 200]
    assert json.loads(answers[0][2])['slept'] == 0.5
    assert json.loads(answers[1][2]) == {'id': 21}


def test_pipelined_requests_in_one_segment(core):
    with socket.create_connection(('127.0.0.1', core.port),
                                  timeout=10) as sock:
        sock.sendall(get_request('/api/item/31') + get_request('/api/item/32')
                     + get_request('/sync/hello/p', 'Connection: close\r\n'))
        answers = read_responses(sock, 3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert json.loads(answers[0][2]) == {'id': 31}
    assert json.loads(answers[1][2]) == {'id': 32}
    assert json.loads(answers[2][2]) == {'hello': 'p'}


# -- 10. concurrency ------------------------------------------------------------------

def test_200_concurrent_requests_from_20_threads(core):
    def client(thread_index):
        connection = http.client.HTTPConnection('127.0.0.1', core.port,
                                                timeout=30)
        answers = []
        try:
            for n in range(10):
                item = 10_000 + thread_index * 100 + n
                connection.request('GET', f'/api/item/{item}?n={item}')
                response = connection.getresponse()
                answers.append((item, response.status,
                                json.loads(response.read())))
        finally:
            connection.close()
        return answers

    with concurrent.futures.ThreadPoolExecutor(20) as executor:
        results = [a for answers in executor.map(client, range(20))
                   for a in answers]
    assert len(results) == 200
    for item, status, data in results:
        assert status == 200
        assert data == {'id': item}
    assert len({item for item, _, _ in results}) == 200


# -- 11. a client that leaves while its request is pending ------------------------

def test_client_leaving_while_queued_drops_request(single):
    server = single
    key = unique('queued')
    # Nothing is sent ahead of a request that has run REVOKE_AFTER (0.1 s):
    # once the slow one has, the next one waits in the pool's backlog.
    slow = [in_thread(server.get, '/api/sleep/1', timeout=20)]
    wait_until(lambda: core_pool(server)['workers'][0]['in_flight'] == 1, 10,
               message='the slow request was not assigned')
    time.sleep(0.2)
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    try:
        sock.sendall(f'POST /api/count/{key} HTTP/1.1\r\nHost: x\r\n'
                     'Content-Length: 0\r\n\r\n'.encode())
        wait_until(lambda: core_pool(server)['queue_size'] == 1, 10,
                   message='the request did not wait in the backlog')
    finally:
        sock.close()
    # the dispatcher forgets it at once (only the slow one remains)
    wait_until(lambda: monitor(server)['pending'] == 1, 10)
    for thread, result in slow:
        thread.join(20)
        assert result and result[0].status == 200, result
    wait_until(lambda: monitor(server)['pending'] == 0
               and core_pool(server)['pending'] == 0, 10)
    assert server.get(f'/api/ran/{key}').json() == {'ran': 0}
    assert server.count_log(f'ran {key}') == 0


def test_client_leaving_while_waiting_in_worker_channel_is_cancelled(single):
    server = single
    key = unique('cancelled')
    # one slow request busy in the worker; the next one is already sent to
    # the same worker (it holds up to 2) but has not started
    slow = in_thread(server.get, '/api/sleep/1', timeout=20)
    wait_until(lambda: core_pool(server)['workers'][0]['in_flight'] == 1, 10)
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    try:
        sock.sendall(f'POST /api/count/{key} HTTP/1.1\r\nHost: x\r\n'
                     'Content-Length: 0\r\n\r\n'.encode())
        wait_until(lambda: core_pool(server)['workers'][0]['in_flight'] == 2,
                   10, message='the request was not sent to the worker')
    finally:
        sock.close()
    slow[0].join(20)
    assert slow[1] and slow[1][0].status == 200
    wait_until(lambda: core_pool(server)['pending'] == 0, 10)
    assert server.get(f'/api/ran/{key}').json() == {'ran': 0}
    assert server.count_log(f'ran {key}') == 0


def test_client_leaving_after_worker_took_request(single):
    server = single
    key = unique('taken')
    sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
    try:
        sock.sendall(f'POST /api/slowcount/{key}/0.8 HTTP/1.1\r\nHost: x\r\n'
                     'Content-Length: 0\r\n\r\n'.encode())
        # the worker started it (assigned alone is not enough: a request the
        # worker has not read yet is skipped when its client leaves)
        server.wait_log(f'slowcount {key} started')
    finally:
        sock.close()
    wait_until(lambda: monitor(server)['pending'] == 0, 10)
    # the worker runs it exactly once; its late answer is dropped
    wait_until(lambda: server.get(f'/api/ran/{key}').json()['ran'] == 1, 10)
    wait_until(lambda: core_pool(server)['pending'] == 0, 10)
    status = monitor(server)
    assert status['pending'] == 0
    assert status['pools'][0]['workers'][0]['in_flight'] == 0
    # the log line travels through the server's output pipe: poll for it
    wait_until(lambda: server.count_log(f'ran {key} in worker') == 1, 10)
    assert server.get('/api/item/4').json() == {'id': 4}


# -- 12. logging ------------------------------------------------------------------------

def test_worker_log_lines_reach_dispatcher_output(core):
    assert core.request('POST', '/api/log').json() == {'logged': True}
    core.wait_log(r'WARNING +\[CoreWorker\[\d\]\] percent style 42 x$')
    core.wait_log(r'WARNING +\[CoreWorker\[\d\]\] brace style 43$')
    # one more round trip so a (wrongly) emitted debug line would be there
    assert core.get('/api/item/1').status == 200
    assert 'debug line hidden' not in core.log


def test_no_colours_when_output_is_not_a_terminal(core):
    assert core.request('POST', '/api/log').status == 200
    core.wait_log(r'percent style 42 x')
    assert '\x1b[' not in core.log


def test_log_output_styles():
    journal = LogOutput(io.StringIO(), style='journal')
    assert journal.format('name', _workers.LOG_ERROR, 'msg') == '<3>name: msg'
    assert journal.format('name', _workers.LOG_WARNING, 'a\nb') == \
        '<4>name: a\n<4>name: b'
    color = LogOutput(io.StringIO(), style='color')
    line = color.format('name', _workers.LOG_ERROR, 'msg')
    assert line.startswith('\x1b[31m') and line.endswith('\x1b[0m')
    assert '[name] msg' in line and 'ERROR' in line
    plain = LogOutput(io.StringIO(), style='plain')
    line = plain.format('name', _workers.LOG_ERROR, 'msg')
    assert '\x1b[' not in line and not line.startswith('<')
    assert re.search(r'ERROR +\[name\] msg$', line)
    stream = io.StringIO()
    LogOutput(stream, style='plain').write('w', _workers.LOG_INFO, 'hello')
    assert stream.getvalue().endswith('[w] hello\n')


def test_log_style_detection(monkeypatch, tmp_path):
    monkeypatch.delenv('JOURNAL_STREAM', raising=False)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, 'w') as pipe:
        os.close(read_end)
        assert detect_style(pipe) == 'plain'
    main_fd, tty_fd = pty.openpty()
    try:
        with os.fdopen(tty_fd, 'w') as tty:
            assert detect_style(tty) == 'color'
    finally:
        os.close(main_fd)
    with open(tmp_path / 'log', 'w', encoding='utf-8') as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv('JOURNAL_STREAM', f'{info.st_dev}:{info.st_ino}')
        assert detect_style(stream) == 'journal'
        monkeypatch.setenv('JOURNAL_STREAM', '1:2')
        assert detect_style(stream) == 'plain'


# -- 13./14. shutdown ------------------------------------------------------------------

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_graceful_shutdown_finishes_pending_request(start_server, signum):
    server = start_server('core_app.py', ready_workers=CORE_WORKERS)
    pids = worker_pids(server)
    assert len(pids) == CORE_WORKERS
    thread, result = in_thread(server.get, '/api/sleep/1', timeout=20)
    wait_until(lambda: any(w['in_flight'] for w in core_pool(server)['workers']),
               10, message='the slow request was not assigned')
    server.signal(signum)
    server.wait_log(r'draining 1 pending requests')
    # no new connections once draining
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', server.port), timeout=2).close()
    thread.join(20)
    assert result and not isinstance(result[0], Exception), result
    assert result[0].status == 200
    assert result[0].json()['slept'] == 1.0
    assert server.wait_exit(20) == 0
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10,
               message=f'workers outlived the dispatcher: {pids}')


def test_no_worker_outlives_sigkilled_dispatcher(start_server):
    server = start_server('core_app.py', ready_workers=CORE_WORKERS)
    pids = worker_pids(server)
    assert len(pids) == CORE_WORKERS and all(pid_alive(p) for p in pids)
    os.kill(server.pid, signal.SIGKILL)
    server.wait_exit(10)
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 15,
               message='workers outlived the SIGKILLed dispatcher')


# -- 15. IPv6 --------------------------------------------------------------------------

def _ipv6_loopback_works():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(('::1', 0))
        return True
    except OSError:
        return False


def test_ipv6_loopback(start_server):
    if not _ipv6_loopback_works():
        pytest.skip('IPv6 loopback (::1) is not available here')
    server = start_server('core_app.py', env={'ADDRESS': '::1',
                                              'WORKERS': '1'},
                          ready_workers=CORE_WORKERS - 1)
    assert '[::1]' in server.log
    connection = http.client.HTTPConnection('::1', server.port, timeout=10)
    try:
        connection.request('GET', '/api/item/6')
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {'id': 6}
        connection.request('GET', '/sync/hello/v6')
        response = connection.getresponse()
        assert json.loads(response.read()) == {'hello': 'v6'}
    finally:
        connection.close()
    status, _headers, body = exchange(
        server.port, get_request('/api/item/7', 'Connection: close\r\n'),
        host='::1')
    assert status == 200 and json.loads(body) == {'id': 7}


@pytest.mark.parametrize('value', [[1, 2], 'x', 5, 1.5, True, [], 0, None,
                                   {'nested': [1, {'a': None}]}])
def test_any_json_body_reaches_the_handler_as_sent(core, value):
    answer = core.request('POST', '/api/echo', body=json.dumps(value).encode(),
                          headers={'Content-Type': 'application/json'})
    assert answer.status == 200
    assert answer.json()['data'] == value
    assert core.get('/api/item/1').status == 200  # still serving
