"""Dispatcher code written for uhttp-workers 1.8.1 runs unchanged.

Each test starts tests/apps/compat1x_dispatcher_app.py, whose hooks have
1.8.1's names and signatures, and checks that they are called as 1.8.1
calls them (with this project's answers where they are better).
"""

import pytest

from conftest import wait_until

APP = 'compat1x_dispatcher_app.py'
TOKEN = {'X-Token': 'secret'}


def seen(server):
    result = server.get('/seen', headers=TOKEN)
    assert result.status == 200, result
    return result.json()['seen']


@pytest.fixture
def app(start_server):
    return start_server(APP, ready_workers=1)


# -- 1. do_check_sync guards @sync routes -------------------------------------

def test_rejecting_do_check_sync_blocks_the_sync_route(app):
    result = app.get('/sync/secret')
    assert result.status == 401
    assert result.json() == {'error': 'no token'}
    names = [entry[0] for entry in seen(app)]
    assert ['do_check_sync', '/sync/secret'] in seen(app)
    assert 'secret ran' not in names


def test_do_check_sync_that_responds_itself_keeps_its_answer(app):
    result = app.get('/sync/secret', headers={'X-Token': 'custom'})
    assert result.status == 401
    assert result.json() == {'error': 'go away'}
    assert ['secret ran'] not in seen(app)


def test_accepting_do_check_sync_runs_the_handler(app):
    result = app.get('/sync/secret', headers=TOKEN)
    assert result.status == 200
    assert result.json() == {'secret': 42}
    assert ['secret ran'] in seen(app)


def test_failing_do_check_sync_answers_500_and_the_loop_goes_on(app):
    result = app.get('/sync/secret', headers={'X-Token': 'crash'})
    assert result.status == 500
    app.wait_log('do_check_sync\\(\\) raised')
    assert ['secret ran'] not in seen(app)
    assert app.get('/sync/secret', headers=TOKEN).status == 200


def test_do_check_sync_is_not_called_for_pool_requests(app):
    assert app.get('/api/pid').status == 200
    assert not [e for e in seen(app) if e[1:] == ['/api/pid']]


# -- 2. on_worker_died(pool, worker_id, reason, exitcode, victims) --------------

def test_on_worker_died_gets_the_requests_it_took_down(app):
    result = app.get('/api/crash')
    assert result.status == 502
    died = wait_until(lambda: [e for e in seen(app)
                               if e[0] == 'on_worker_died'])
    name, pool, worker_id, exitcode, victims, methods = died[0]
    assert methods == ['GET']
    assert (pool, worker_id, exitcode) == ('CompatWorker', 0, 3)
    assert len(victims) == 1 and victims[0][1] == '/api/crash'
    assert isinstance(victims[0][0], int)
    assert 'on_worker_died() raised' not in app.log


def test_four_argument_on_worker_died_still_called():
    from uhttp.workers import Dispatcher
    from uhttp.workers.dispatcher import _accepts_arguments

    class Old(Dispatcher):
        def on_worker_died(self, pool, worker_id, reason, exitcode):
            pass

    class New(Dispatcher):
        def on_worker_died(self, pool, worker_id, reason, exitcode,
                           victims):
            pass

    class Loose(Dispatcher):
        def on_worker_died(self, *args):
            pass
    assert not _accepts_arguments(Old(port=0).on_worker_died, 5)
    assert _accepts_arguments(New(port=0).on_worker_died, 5)
    assert _accepts_arguments(Loose(port=0).on_worker_died, 5)
    assert _accepts_arguments(Dispatcher(port=0).on_worker_died, 5)
