"""Configuration mistakes fail at start-up with a message naming them.

Unit tests build WorkerPool and Dispatcher objects without running them (no
process starts); the port-in-use test runs two real dispatchers.
"""

import os
import pickle
import socket

import pytest

import uhttp.workers as _workers
from uhttp.workers.dispatcher import sync
from uhttp.workers.routing import PrefixMatcher, Router, check_methods
from conftest import APPS, Server


class PlainWorker(_workers.Worker):
    """Routes under /api and one under /admin."""

    @_workers.api('/api/items/{id:int}', 'GET')
    def item(self, request):
        return {}

    @_workers.api('/admin/reset', 'POST')
    def reset(self, request):
        return {}


class ApiOnlyWorker(_workers.Worker):
    @_workers.api('/api/ping')
    def ping(self, request):
        return {}


class UsersHandler(_workers.ApiHandler):
    PATTERN = '/users'

    @_workers.api('', 'GET')
    def list_users(self, request):
        return []


class HandlerWorker(_workers.Worker):
    HANDLERS = [UsersHandler]


class RecordingDispatcher(_workers.Dispatcher):
    """Keeps every log record instead of writing it."""

    def __init__(self, *args, **kwargs):
        self.records = []
        super().__init__(*args, **kwargs)

    def on_log(self, name, level, message):
        self.records.append((level, message))

    def warnings(self):
        return [m for level, m in self.records if level == _workers.LOG_WARNING]


# -- 1. misspelt options --------------------------------------------------

@pytest.mark.parametrize('typo, meant', [
    ('num_worker', 'num_workers'), ('timout', 'timeout'),
    ('route', 'routes'), ('max_request', 'max_requests'),
    ('worker_kwarg', 'worker_kwargs')])
def test_pool_refuses_near_miss_of_an_option(typo, meant):
    with pytest.raises(TypeError) as info:
        _workers.WorkerPool(ApiOnlyWorker, **{typo: 4})
    assert str(info.value).startswith(
        f"WorkerPool() got an unexpected keyword '{typo}'; "
        f"did you mean '{meant}'?")
    assert 'worker_kwargs' in str(info.value)


def test_pool_passes_other_keywords_to_workers():
    pool = _workers.WorkerPool(ApiOnlyWorker, flavour='test', answer=42)
    assert pool.kwargs == {'flavour': 'test', 'answer': 42}
    assert pool.num_workers == 1


def test_pool_worker_kwargs_carry_any_name():
    pool = _workers.WorkerPool(ApiOnlyWorker, num_workers=2,
                               worker_kwargs={'num_worker': 7}, extra=1)
    assert pool.num_workers == 2
    assert pool.kwargs == {'num_worker': 7, 'extra': 1}
    pickle.dumps(pool.kwargs)


def test_pool_refuses_a_name_given_twice():
    with pytest.raises(TypeError, match="'extra' given both"):
        _workers.WorkerPool(ApiOnlyWorker, worker_kwargs={'extra': 1},
                            extra=2)


def test_pool_worker_kwargs_must_be_a_dict():
    with pytest.raises(TypeError, match='worker_kwargs must be a dict'):
        _workers.WorkerPool(ApiOnlyWorker, worker_kwargs=[('a', 1)])


def test_dispatcher_names_the_option_meant():
    with pytest.raises(TypeError) as info:
        _workers.Dispatcher(port=0, shutdown_timout=5)
    assert str(info.value) == ("Dispatcher() got an unexpected keyword "
                               "'shutdown_timout'; did you mean "
                               "'shutdown_timeout'?")


def test_dispatcher_unknown_keyword_without_suggestion():
    with pytest.raises(TypeError) as info:
        _workers.Dispatcher(port=0, colour='blue')
    assert str(info.value) == \
        "Dispatcher() got an unexpected keyword 'colour'"


def test_dispatcher_subclass_signature_is_the_one_checked():
    class Mine(_workers.Dispatcher):
        def __init__(self, port, greeting='hi'):
            self.greeting = greeting
            super().__init__(port=port)

    assert Mine(0, greeting='yo').greeting == 'yo'
    with pytest.raises(TypeError, match="Mine.*did you mean 'greeting'"):
        Mine(0, greting='yo')


# -- 2. routes --------------------------------------------------------------

def test_two_pools_claiming_one_prefix():
    pools = [_workers.WorkerPool(ApiOnlyWorker, routes=['/api/**']),
             _workers.WorkerPool(PlainWorker, routes=['/admin/**', '/api/**'])]
    with pytest.raises(ValueError) as info:
        _workers.Dispatcher(port=0, pools=pools)
    message = str(info.value)
    assert "'ApiOnlyWorker'" in message and "'PlainWorker'" in message
    assert "'/api/**'" in message


def test_nested_prefixes_are_not_a_conflict():
    pools = [_workers.WorkerPool(ApiOnlyWorker, routes=['/api/**']),
             _workers.WorkerPool(PlainWorker,
                                 routes=['/api/items/**', '/admin/**'])]
    dispatcher = RecordingDispatcher(port=0, pools=pools)
    assert dispatcher.warnings() == []


def test_unreachable_route_is_a_warning():
    pool = _workers.WorkerPool(PlainWorker, routes=['/api/**'])
    dispatcher = RecordingDispatcher(port=0, pools=[pool])
    assert dispatcher.warnings() == [
        "route '/admin/reset' of PlainWorker is never called: its pools "
        "serve only 'PlainWorker': '/api/**'"]


def test_route_reached_by_another_pool_of_its_class():
    pools = [_workers.WorkerPool(PlainWorker, routes=['/api/**']),
             _workers.WorkerPool(PlainWorker, routes=['/admin/**'],
                                 name='Admin'),
             _workers.WorkerPool(ApiOnlyWorker, routes=[])]
    assert RecordingDispatcher(port=0, pools=pools).warnings() == [
        "route '/api/ping' of ApiOnlyWorker is never called: its pools "
        "serve only 'ApiOnlyWorker': no route"]


def test_fallback_pool_reaches_every_route():
    pool = _workers.WorkerPool(PlainWorker)
    assert RecordingDispatcher(port=0, pools=[pool]).warnings() == []


@pytest.mark.parametrize('entry, pattern, reached', [
    ('/api/**', '/api', True),
    ('/api/**', '/api/items/{id:int}', True),
    ('/api/**', '/apix', False),
    ('/api/**', '/{section}/ping', True),
    ('/items/{id:int}', '/items/{name}', True),
    ('/items/{id:int}', '/items/new', False),
    ('/items/{id:int}', '/items/12', True),
    ('/exact', '/exact/more', False),
    ('/**', '/anything/{x}', True),
])
def test_prefix_matcher_can_reach(entry, pattern, reached):
    assert PrefixMatcher([entry]).can_reach(pattern) is reached


def test_route_without_leading_slash():
    class NoSlashWorker(_workers.Worker):
        @_workers.api('users/{id}')
        def user(self, request):
            return {}

    with pytest.raises(ValueError, match="must start with '/': 'users/{id}'"):
        _workers.WorkerPool(NoSlashWorker)


def test_handler_suffix_without_slash_is_fine_under_its_pattern():
    pool = _workers.WorkerPool(HandlerWorker, routes=['/users/**'])
    assert RecordingDispatcher(port=0, pools=[pool]).warnings() == []


def test_api_refuses_misspelt_method_at_decoration():
    with pytest.raises(ValueError) as info:
        _workers.api('/items', 'GTE')
    assert str(info.value) == (
        "unknown HTTP method 'GTE' in route '/items'; did you mean 'GET'?")


def test_sync_route_refuses_misspelt_method_at_dispatcher():
    class Bad(_workers.Dispatcher):
        @sync('/health', 'POTS')
        def health(self, client, path_params):
            client.respond({})

    with pytest.raises(ValueError, match="'POTS' in route '/health'"):
        Bad(port=0)


@pytest.mark.parametrize('method', ['GET', 'get', 'Patch', 'PROPFIND',
                                    'PROPPATCH', 'PURGE', 'MYVERB'])
def test_accepted_methods(method):
    assert check_methods('/x', [method]) == (method.upper(),)


@pytest.mark.parametrize('method', ['GE T', 'GET/1', '', 'POSTT', 'DELET'])
def test_refused_methods(method):
    with pytest.raises(ValueError, match="route '/x'"):
        check_methods('/x', [method])


# -- 3. port in use ---------------------------------------------------------

def test_port_in_use_is_one_line_and_non_zero_exit(start_server):
    first = start_server('core_app.py', env={'WORKERS': '1'})
    second = Server(os.path.join(APPS, 'core_app.py'),
                    env={'WORKERS': '1', 'PORT': str(first.port)})
    try:
        code = second.wait_exit()
    finally:
        second.stop()
    assert code != 0
    assert (f'cannot listen on 127.0.0.1:{first.port}: address already in use'
            in second.log.splitlines())
    assert 'Traceback' not in second.log
    assert first.get('/other/x').status == 200


def test_port_in_use_removes_the_pid_file(tmp_path):
    pid_file = tmp_path / 'service.pid'
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        dispatcher = _workers.Dispatcher(
            port=port, address='127.0.0.1', pid_file=str(pid_file))
        with pytest.raises(SystemExit) as info:
            dispatcher.run()
    assert str(info.value.code) == (
        f'cannot listen on 127.0.0.1:{port}: address already in use')
    assert not pid_file.exists()
