"""Failures and hooks behave as uhttp-workers 1.8.1's for code written for it.

Each test starts tests/apps/compat1x_failures_app.py (1.8.1 hook names and
signatures) and checks what a client and the worker see: 503 at once when
no worker lives, the exception's message in a handler's 500, the return
value of on_request_accepted() as Request.context, and a method a @sync
route does not take going on to the pool.
"""

import pytest

APP = 'compat1x_failures_app.py'


@pytest.fixture
def app(start_server):
    return start_server(APP, ready_workers=1)


# -- 1. no live worker: 503 with Retry-After at once --------------------------

def test_a_pool_without_live_workers_answers_503_at_once(start_server):
    server = start_server(APP, ready_workers=1)
    # the crash victim gets 502 at once (1.8.1: 500 after its timeout)
    assert server.get('/api/die').status == 502
    server.wait_log(r'unrecoverable code 7: not restarted')
    result = server.get('/api/context')
    assert result.status == 503
    assert result.headers['retry-after'] == '1'
    assert result.json() == {'error': 'No Workers Available'}
    # the dispatcher itself goes on serving what it can
    assert server.request('POST', '/both/submit').json() == {'from': 'sync'}


def test_one_live_worker_of_two_keeps_serving(start_server):
    server = start_server(APP, env={'WORKERS': '2'}, ready_workers=2)
    assert server.get('/api/die').status == 502
    server.wait_log(r'unrecoverable code 7: not restarted')
    result = server.get('/api/context')
    assert result.status == 200
    assert result.json() == {'context': None}


def test_a_request_waits_for_workers_that_are_starting(start_server):
    server = start_server(APP, env={'SETUP_DELAY': '2'})
    assert server.count_log(r'worker .* ready') == 0
    result = server.get('/api/context', timeout=30)
    assert result.status == 200
    assert result.json() == {'context': None}


# -- 2. a handler's exception: its message in the 500 -------------------------

def test_a_handler_exception_answers_500_with_its_message(app):
    result = app.get('/api/fail?text=no+such+order')
    assert result.status == 500
    assert result.json() == {'error': 'no such order'}
    # the traceback and the exception's type stay in the log
    assert b'Traceback' not in result.body
    assert b'ValueError' not in result.body
    app.wait_log(r'GET /api/fail .*failed')
    assert 'ValueError: no such order' in app.log


def test_an_exception_without_message_answers_the_generic_500(app):
    result = app.get('/api/fail?text=')
    assert result.status == 500
    assert result.json() == {'error': 'Internal Server Error'}


# -- 3. on_request_accepted()'s value is Request.context ---------------------

def test_the_accepted_hook_value_reaches_the_worker(app):
    result = app.get('/api/context', headers={'X-Context': 'dict'})
    assert result.status == 200
    assert result.json() == {
        'context': {'role': 'admin', 'pool': 'FailuresWorker'}}


def test_no_value_is_a_none_context(app):
    assert app.get('/api/context').json() == {'context': None}


def test_an_unpicklable_value_is_logged_and_a_none_context(app):
    result = app.get('/api/context', headers={'X-Context': 'unpicklable'})
    assert result.status == 200
    assert result.json() == {'context': None}
    app.wait_log(r'on_request_accepted\(\) returned function for request '
                 r'\d+, which cannot be sent to a worker')


def test_a_raising_hook_is_logged_and_a_none_context(app):
    result = app.get('/api/context', headers={'X-Context': 'raise'})
    assert result.status == 200
    assert result.json() == {'context': None}
    app.wait_log(r'on_request_accepted\(\) raised')


# -- 4. a method the @sync route does not take goes on to the pool ------------

def test_another_method_of_a_sync_route_goes_to_the_pool(app):
    assert app.request('POST', '/both/submit').json() == {'from': 'sync'}
    result = app.get('/both/submit')
    assert result.status == 200
    assert result.json() == {'from': 'pool'}


def test_the_fall_through_passes_do_check(app):
    result = app.get('/both/submit', headers={'X-Deny': '1'})
    assert result.status == 401
    assert result.json() == {'error': 'denied'}


def test_without_a_pool_for_the_path_it_stays_405(app):
    result = app.get('/lonely')
    assert result.status == 405
    assert result.headers['allow'] == 'POST'
    assert app.request('POST', '/lonely').json() == {'from': 'sync'}
