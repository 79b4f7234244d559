"""Worker-side code written for uhttp-workers 1.x runs unchanged.

End to end (real dispatcher, real workers): teardown() at every end a worker
can see, Response return values, respond(cookies=), trailing slashes and
float exponents. Pure unit tests: Request/Response construction.
"""

import os
import pickle
import signal

import pytest

import uhttp.workers as _workers
from uhttp.workers.request import add_cookies, split_result

from conftest import pid_alive, wait_until, worker_pids

APP = 'compat_worker_app.py'


def teardowns(path):
    """PIDs written by teardown(), in order (a PID once per call)."""
    try:
        with open(path, encoding='ascii') as file:
            return [int(line) for line in file.read().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def teardown_file(tmp_path):
    return str(tmp_path / 'teardowns')


def start_compat(start_server, teardown_file, **env):
    env = {'TEARDOWN_FILE': teardown_file, **env}
    workers = int(env.get('WORKERS', '2'))
    return start_server(APP, env=env, ready_workers=workers)


# -- 1. teardown() ------------------------------------------------------------

def test_teardown_runs_once_per_worker_on_graceful_stop(
        start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    pids = worker_pids(server)
    assert len(pids) == 2 and teardowns(teardown_file) == []
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert sorted(teardowns(teardown_file)) == sorted(pids)


def test_teardown_runs_when_a_worker_is_recycled(start_server, teardown_file):
    server = start_compat(start_server, teardown_file, WORKERS='1',
                          MAX_REQUESTS='2')
    first = server.get('/api/pid').json()['pid']
    server.get('/api/pid')
    wait_until(lambda: teardowns(teardown_file) == [first],
               message=lambda: f'{teardowns(teardown_file)}\n{server.log}')
    assert server.get('/api/pid').json()['pid'] != first


def test_teardown_runs_in_a_rolling_restart(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    old = sorted(worker_pids(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: sorted(teardowns(teardown_file)) == old,
               timeout=30, message=lambda: server.log)
    wait_until(lambda: len(set(worker_pids(server)) - set(old)) == 2,
               timeout=30)
    assert sorted(teardowns(teardown_file)) == old  # the new ones run on


def test_teardown_runs_when_the_dispatcher_is_killed(
        start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    pids = worker_pids(server)
    server.signal(signal.SIGKILL)
    server.wait_exit()
    wait_until(lambda: sorted(teardowns(teardown_file)) == sorted(pids),
               message=lambda: f'{teardowns(teardown_file)} {pids}')
    wait_until(lambda: not any(pid_alive(pid) for pid in pids))


def test_teardown_error_is_logged_with_its_traceback(
        start_server, teardown_file):
    server = start_compat(start_server, teardown_file, WORKERS='1',
                          TEARDOWN_FAIL='1')
    pid = worker_pids(server)[0]
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert teardowns(teardown_file) == [pid]
    log = server.log
    assert 'teardown() failed' in log, log
    assert 'Traceback (most recent call last)' in log, log
    assert 'RuntimeError: teardown went wrong' in log, log


def test_teardown_is_not_run_when_setup_failed():
    class Failing(_workers.Worker):
        calls = 0

        def setup(self):
            raise RuntimeError('no database')

        def teardown(self):
            Failing.calls += 1

    import socket
    from uhttp.workers.channel import Channel
    from uhttp.workers.worker import EXIT_SETUP_FAILED
    left, right = socket.socketpair()
    with left, right:
        worker = Failing(log_level=_workers.LOG_CRITICAL + 10)
        assert worker._run(Channel(left)) == EXIT_SETUP_FAILED
    assert Failing.calls == 0


# -- 2. Response as a return value; on_response still works --------------------

def test_handler_returns_a_response(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    result = server.get('/api/response')
    assert result.status == 201, result
    assert result.json() == {'made': 'by a Response'}
    assert result.headers['x-kind'] == 'compat'
    seen = server.get('/last-response').json()
    assert seen['status'] == 201 and seen['x-kind'] == 'compat'
    assert seen['data'] == {'made': 'by a Response'}
    assert seen['body'] == len(result.body)


def test_response_cookies_become_set_cookie_fields(
        start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    head = server.raw(b'GET /api/response HTTP/1.1\r\nHost: x\r\n'
                      b'Connection: close\r\n\r\n')
    lines = head.split(b'\r\n\r\n')[0].split(b'\r\n')
    cookies = [line for line in lines if line.lower().startswith(
        b'set-cookie:')]
    assert cookies == [b'set-cookie: session=abc; Path=/',
                       b'set-cookie: old=; Max-Age=0'], head


def test_response_with_positional_data_and_status(
        start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    result = server.get('/api/response-positional')
    assert result.status == 202
    assert result.body == b'plain text'
    assert result.headers['content-type'].startswith('text/html')


def test_invalid_cookie_name_is_a_logged_500(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    result = server.get('/api/bad-cookie')
    assert result.status == 500
    server.wait_log(r"cannot encode the response .*cookie name 'bad name'")
    assert server.get('/api/pid').status == 200  # the worker goes on


# -- 3. respond(cookies=) -----------------------------------------------------

def test_respond_accepts_cookies(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    head = server.raw(b'GET /api/deferred-cookies HTTP/1.1\r\nHost: x\r\n'
                      b'Connection: close\r\n\r\n')
    head, _, body = head.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 200 ')
    cookies = [line for line in head.split(b'\r\n')
               if line.lower().startswith(b'set-cookie:')]
    assert cookies == [b'set-cookie: first=1',
                       b'set-cookie: second=2; HttpOnly',
                       b'set-cookie: gone=; Max-Age=0'], head
    assert body == b'{"ok": true}'


# -- 4. Request(...) as 1.x builds it ------------------------------------------

def test_request_positional_order_of_1x():
    request = _workers.Request(
        7, 'POST', '/x', {'q': '1'}, {'d': 1}, {'content-type': 'a/b'},
        'text/plain; charset=utf-8', '10.0.0.1', {'user': 3})
    assert (request.request_id, request.method, request.path) == \
        (7, 'POST', '/x')
    assert request.query == {'q': '1'} and request.data == {'d': 1}
    assert request.headers == {'content-type': 'a/b'}
    assert request.content_type == 'text/plain; charset=utf-8'  # as given
    assert request.remote_address == '10.0.0.1'
    assert request.context == {'user': 3}
    assert request.path_params == {}


def test_request_keywords_and_defaults():
    bare = _workers.Request(1, 'GET', '/')
    assert bare.content_type is None and bare.context is None
    assert bare.query is None and bare.data is None and bare.headers == {}
    derived = _workers.Request(
        request_id=2, method='PUT', path='/y', data=b'x',
        headers={'content-type': 'Application/JSON; charset=utf-8'},
        path_params={'id': 4})
    assert derived.content_type == 'application/json'
    assert derived.path_params == {'id': 4}


def test_request_survives_pickling():
    request = _workers.Request(3, 'POST', '/z', None, {'a': 1}, {},
                               'text/plain', '::1', ['ctx'])
    copy = pickle.loads(pickle.dumps(request))
    assert (copy.request_id, copy.data, copy.content_type,
            copy.remote_address, copy.context) == \
        (3, {'a': 1}, 'text/plain', '::1', ['ctx'])


def test_content_type_of_a_client_request(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    with_type = server.request(
        'POST', '/api/request?a=1', body={'k': 'v'},
        headers={'Content-Type': 'application/json; charset=utf-8'}).json()
    assert with_type == {'content_type': 'application/json',
                         'data': {'k': 'v'}, 'query': {'a': '1'},
                         'context': None}
    without = server.request('POST', '/api/request').json()
    assert without['content_type'] == '' and without['data'] is None


# -- Response built as 1.x and as the dispatcher does --------------------------

def test_response_signature_of_1x():
    response = _workers.Response(5, {'a': 1}, 201, {'x': 'y'}, {'c': 'd'})
    assert (response.request_id, response.data, response.status,
            response.headers, response.cookies) == \
        (5, {'a': 1}, 201, {'x': 'y'}, {'c': 'd'})
    assert response.body is None
    defaults = _workers.Response(6)
    assert (defaults.data, defaults.status, defaults.headers,
            defaults.cookies) == (None, 200, None, None)
    assert split_result(response) == ({'a': 1}, 201, {'x': 'y'}, {'c': 'd'})


def test_response_from_wire_decodes_the_body():
    wire = (b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n'
            b'content-length: 8\r\n\r\n{"a": 1}')
    response = _workers.Response.from_wire(9, 200, wire)
    assert response.body == b'{"a": 1}' and response.data == {'a': 1}
    assert response.headers['content-type'] == 'application/json'
    with pytest.raises(TypeError):
        _workers.Response(1, data='x', body=b'x')


def test_add_cookies_keeps_existing_set_cookie_and_checks_names():
    headers = {'set-cookie': 'a=1'}
    add_cookies(headers, {'b': '2', 'c': None})
    assert headers['set-cookie'] == ['a=1', 'b=2', 'c=; Max-Age=0']
    with pytest.raises(ValueError):
        add_cookies({}, {'x;y': '1'})


# -- 5. routing -----------------------------------------------------------------

def test_one_trailing_slash_and_float_exponents(start_server, teardown_file):
    server = start_compat(start_server, teardown_file)
    assert server.get('/api/items/').json() == {'items': [],
                                                'path': '/api/items/'}
    assert server.get('/api/items').status == 200
    assert server.get('/api/items//').status == 404
    assert server.get('/api/price/1e5').json() == {'value': 100000.0}
    assert server.get('/api/price/2.5E-1/').json() == {'value': 0.25}
    assert server.get('/api/price/inf').status == 404
    assert server.get('/api/price/1e999').status == 404
