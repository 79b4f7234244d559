"""Dispatcher code written for uhttp-workers 1.8.1 runs unchanged.

Each test starts tests/apps/compat1x_dispatcher_app.py, whose hooks have
1.8.1's names and signatures, and checks that they are called as 1.8.1
calls them (with this project's answers where they are better).
"""

import json
import socket

import pytest

from conftest import wait_until
import uhttp.workers as _workers
from uhttp.workers.static import StaticFiles

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


# -- 2. on_worker_died(pool, worker_id, reason, exitcode, victims) ------------

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


# -- 3. request.remote_address is "host:port" ---------------------------------

def addr_seen_by_worker(server, headers=None):
    """GET /api/addr on a socket of our own; returns (our port, answer)."""
    lines = ''.join(f'{k}: {v}\r\n' for k, v in (headers or {}).items())
    with socket.create_connection(('127.0.0.1', server.port), 10) as sock:
        sock.sendall(f'GET /api/addr HTTP/1.1\r\nHost: x\r\n{lines}'
                     'Connection: close\r\n\r\n'.encode())
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        port = sock.getsockname()[1]
    head, _, body = data.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 200'), data
    return port, json.loads(body)['remote_address']


def test_remote_address_has_the_port(app):
    port, address = addr_seen_by_worker(app)
    assert address == f'127.0.0.1:{port}'


def test_forwarded_for_ignored_without_trusted_proxies(app):
    port, address = addr_seen_by_worker(
        app, {'X-Forwarded-For': '203.0.113.7'})
    assert address == f'127.0.0.1:{port}'


def test_forwarded_for_from_an_untrusted_peer_is_ignored(start_server):
    server = start_server(APP, env={'TRUSTED_PROXIES': '10.9.9.9'},
                          ready_workers=1)
    port, address = addr_seen_by_worker(
        server, {'X-Forwarded-For': '203.0.113.7'})
    assert address == f'127.0.0.1:{port}'


def test_trusted_proxy_gives_the_client_behind_it(start_server):
    server = start_server(APP, env={'TRUSTED_PROXIES': '127.0.0.1'},
                          ready_workers=1)
    _, address = addr_seen_by_worker(
        server, {'X-Forwarded-For': '203.0.113.7'})
    assert address == '203.0.113.7'
    # a client cannot pick its address by prepending to the header
    _, address = addr_seen_by_worker(
        server, {'X-Forwarded-For': '198.51.100.1, 203.0.113.7'})
    assert address == '203.0.113.7'
    # the proxy itself, when it does not forward: with its port
    port, address = addr_seen_by_worker(server)
    assert address == f'127.0.0.1:{port}'


# -- 4. static_routes mount options; misses go on to the pools ---------------

def test_mount_options_are_read(tmp_path):
    (tmp_path / 'a.css').write_text('a')
    files = StaticFiles({'/s': {'path': str(tmp_path),
                                'headers': {'Cache-Control': 'no-cache'},
                                'authoritative': True}})
    result = files.lookup('/s/a.css')
    assert result.status == 200
    assert result.headers == {'cache-control': 'no-cache'}
    missing = files.lookup('/s/b.css')
    assert missing.status == 404 and missing.authoritative


@pytest.mark.parametrize('mount', [
    {'headers': {}}, {'path': '.', 'authorative': True},
    {'path': '.', 'headers': 'no-cache'}])
def test_bad_mount_options_are_refused_at_start_up(mount):
    with pytest.raises(ValueError):
        StaticFiles({'/s/': mount})


def test_a_miss_tries_the_shorter_mounts(tmp_path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'top.txt').write_text('top')
    files = StaticFiles({'/': str(tmp_path), '/sub/': str(tmp_path / 'sub')})
    # /sub/ does not have it; / has no sub/top.txt either
    assert files.lookup('/sub/top.txt').authoritative is False
    files = StaticFiles({'/': str(tmp_path), '/x/': str(tmp_path / 'sub')})
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'only-here.txt').write_text('here')
    assert files.lookup('/x/only-here.txt').status == 200


@pytest.fixture
def static_app(start_server, tmp_path):
    (tmp_path / 'assets').mkdir()
    (tmp_path / 'index.html').write_text('<h1>home</h1>')
    (tmp_path / 'assets' / 'app.css').write_text('body{}')
    return start_server(APP, env={'STATIC_DIR': str(tmp_path)},
                        ready_workers=1)


def test_mount_at_root_does_not_hide_the_pools(static_app):
    home = static_app.get('/')
    assert home.status == 200 and home.body == b'<h1>home</h1>'
    pid = static_app.get('/api/pid')
    assert pid.status == 200 and pid.json()['pid'] > 0
    assert static_app.get('/missing.html').status == 404  # no pool has it


def test_authoritative_mount_with_headers(static_app):
    css = static_app.get('/assets/app.css')
    assert css.status == 200 and css.body == b'body{}'
    assert css.headers['cache-control'] == 'max-age=60'
    assert 'cache-control' not in static_app.get('/').headers
    # the pool serves /assets/{name}, but the mount owns its prefix
    missing = static_app.get('/assets/missing.css')
    assert missing.status == 404
    assert b'pool' not in missing.body


def test_without_the_mount_the_pool_serves_assets(app):
    # the counterpart of the test above: the route exists in the pool
    assert app.get('/assets/missing.css').json() == {'from': 'pool'}


# -- 5. on_request_accepted, on_pending_removed, on_static_served, on_forward

def entries(server, name):
    return [entry[1:] for entry in seen(server) if entry[0] == name]


def test_accepted_and_removed_once_per_pool_request(app):
    assert app.get('/api/pid').status == 200
    accepted = wait_until(lambda: entries(app, 'accepted'))
    assert len(accepted) == 1
    request_id, path, pool = accepted[0]
    assert (path, pool) == ('/api/pid', 'CompatWorker')
    removed = wait_until(lambda: entries(app, 'removed'))
    assert removed == [[request_id, _workers.PENDING_COMPLETED]]
    # sync routes and static files are not pool requests
    assert len(entries(app, 'accepted')) == 1


def test_a_failing_on_request_accepted_is_logged_and_the_request_runs(app):
    result = app.get('/api/pid', headers={'X-Hook': 'crash'})
    assert result.status == 200 and result.json()['pid'] > 0
    app.wait_log('on_request_accepted\\(\\) raised')


def test_removed_says_worker_died_and_its_failure_is_logged(app):
    assert app.get('/api/crash').status == 502
    removed = wait_until(lambda: entries(app, 'removed'))
    assert removed[0][1] == _workers.PENDING_WORKER_DIED
    app.wait_log('on_pending_removed\\(\\) raised')
    app.wait_log('worker .* ready', timeout=15)
    assert app.get('/api/pid').status == 200  # the loop goes on


def test_removed_says_disconnected_when_the_client_leaves(app):
    with socket.create_connection(('127.0.0.1', app.port), 10) as sock:
        sock.sendall(b'GET /api/sleep?s=1 HTTP/1.1\r\nHost: x\r\n\r\n')
        wait_until(lambda: entries(app, 'accepted'))
    reasons = wait_until(lambda: [e[1] for e in entries(app, 'removed')])
    assert reasons == [_workers.PENDING_DISCONNECTED]


def test_forward_goes_through_on_forward(app):
    assert app.get('/api/forward').status == 200
    # no client waits for a forwarded request: its id is -1, as in 1.8.1
    app.wait_log("sink got \\{'n': 7\\} as request -1$")
    assert entries(app, 'forward') == [['/api/sink', {'n': 7}]]


def test_static_served_hook(static_app):
    assert static_app.get('/assets/app.css').status == 200
    assert static_app.get('/assets/gone.css').status == 404
    static_app.wait_log('on_static_served\\(\\) raised')
    assert entries(static_app, 'static') == [
        ['app.css', 200], ['gone.css', 404]]
    # a miss that goes on to the pools is not a static answer
    assert static_app.get('/api/pid').status == 200
    assert len(entries(static_app, 'static')) == 2


def test_pending_reasons_are_exported():
    assert [_workers.PENDING_COMPLETED, _workers.PENDING_TIMEOUT,
            _workers.PENDING_DISCONNECTED, _workers.PENDING_STREAM_CLOSED,
            _workers.PENDING_SHUTDOWN, _workers.PENDING_WORKER_DIED] == [
        'COMPLETED', 'TIMEOUT', 'DISCONNECTED', 'STREAM_CLOSED', 'SHUTDOWN',
        'WORKER_DIED']


# -- 6. pool.broadcast() with 1.8.1's control messages -------------------------

def test_broadcast_config_reaches_on_config(app):
    assert app.get('/api/config').json() == {'config': None}
    assert app.get('/broadcast/config', headers=TOKEN).status == 200
    wait_until(lambda: app.get('/api/config').json() ==
               {'config': {'colour': 'green'}},
               message='on_config() did not get the broadcast')


def test_broadcast_none_replaces_every_worker(app):
    before = app.get('/api/pid').json()['pid']
    assert app.get('/broadcast/stop', headers=TOKEN).status == 200
    app.wait_log(r'worker .* stopped')
    assert wait_until(lambda: app.get('/api/pid').json()['pid'] != before,
                      message='the worker was not replaced')


def test_broadcast_refuses_what_1x_never_sent():
    pool = _workers.WorkerPool(_workers.Worker)
    with pytest.raises(TypeError, match='takes a path'):
        pool.broadcast(('RELOAD', 1))
    with pytest.raises(TypeError, match='Worker.on_disconnect'):
        pool.broadcast((_workers.CTL_DISCONNECT, 5))


# -- 7. Dispatcher(**kwargs) goes on to uhttp-server's HttpServer -------------

def test_http_server_option_is_passed_through(start_server):
    server = start_server(APP, env={'MAX_HEADERS_LENGTH': '1024'},
                          ready_workers=1)
    assert server.get('/api/pid').status == 200
    answer = server.raw(b'GET /api/pid HTTP/1.1\r\nHost: x\r\nX-Big: '
                        + b'a' * 2000 + b'\r\n\r\n')
    assert answer.split(b' ', 2)[1] in (b'400', b'431'), answer[:80]


def test_http_server_aliases_set_the_dispatcher_option():
    dispatcher = _workers.Dispatcher(port=0, listen=64,
                                     max_waiting_clients=500,
                                     file_chunk_size=4096)
    assert (dispatcher.listen_backlog, dispatcher.max_connections) == (64, 500)
    assert dispatcher._server_options['file_chunk_size'] == 4096


def test_misspelt_http_server_option_names_the_one_meant():
    with pytest.raises(TypeError, match="keyword 'max_header_length'; did "
                                        "you mean 'max_headers_length'"):
        _workers.Dispatcher(port=0, max_header_length=100)


def test_options_the_dispatcher_owns_are_not_passed_through():
    with pytest.raises(TypeError, match="'selector' belongs to the "
                                        "dispatcher"):
        _workers.Dispatcher(port=0, selector=None)
