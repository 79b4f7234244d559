"""Loggers built and used the way uhttp-workers 1.x code does, and its
module-level logging names (unit tests: no dispatcher needed)."""

import multiprocessing
import queue

import pytest

import uhttp.workers as _workers
from uhttp.workers.log import Logger


def _collect(records):
    return lambda *record: records.append(record)


def test_one_x_positional_form_puts_records_on_the_queue():
    records = queue.SimpleQueue()
    logger = Logger('Items[0]', records, _workers.LOG_INFO)
    logger.debug('hidden')
    logger.info('item %d', 7)
    assert records.get_nowait() == (
        _workers.MSG_LOG, 'Items[0]', _workers.LOG_INFO, 'item 7')
    assert records.empty()
    assert (logger.name, logger.level) == ('Items[0]', _workers.LOG_INFO)


def _log_from_child(records):
    Logger('child', records, level=_workers.LOG_DEBUG).debug('pid {p}', p=1)


def test_one_x_queue_form_works_across_processes():
    context = multiprocessing.get_context('spawn')
    records = context.Queue()
    child = context.Process(target=_log_from_child, args=(records,))
    child.start()
    try:
        assert records.get(timeout=30) == (
            'LOG', 'child', _workers.LOG_DEBUG, 'pid 1')
    finally:
        child.join(30)
    assert child.exitcode == 0


def test_one_x_sink_keyword_and_fourth_positional():
    records = []
    Logger('dispatcher', sink=_collect(records), level=_workers.LOG_ERROR
           ).error('boom')
    Logger('d', None, _workers.LOG_WARNING, _collect(records)).warning('w')
    assert records == [('dispatcher', _workers.LOG_ERROR, 'boom'),
                       ('d', _workers.LOG_WARNING, 'w')]


def test_sink_wins_over_queue_as_in_one_x():
    records, unused = [], queue.SimpleQueue()
    Logger('x', unused, sink=_collect(records)).critical('c')
    assert records == [('x', _workers.LOG_CRITICAL, 'c')]
    assert unused.empty()


def test_default_level_is_warning_in_both_forms():
    for logger in (Logger('a'), Logger('b', None), Logger('c', queue=None)):
        assert logger.level == _workers.LOG_WARNING
        assert (logger.is_warning, logger.is_info) == (True, False)


def test_project_forms_keep_working():
    records = []
    Logger('p', _workers.LOG_DEBUG, _collect(records)).debug('one')
    Logger('q', level=_workers.LOG_INFO, emit=_collect(records)).info('two')
    assert records == [('p', _workers.LOG_DEBUG, 'one'),
                       ('q', _workers.LOG_INFO, 'two')]


def test_conflicting_arguments_are_type_errors():
    with pytest.raises(TypeError, match='multiple values'):
        Logger('x', _workers.LOG_INFO, level=_workers.LOG_DEBUG)
    with pytest.raises(TypeError, match='multiple values'):
        Logger('x', queue.SimpleQueue(), _workers.LOG_INFO, queue=None,
               level=_workers.LOG_DEBUG)
    with pytest.raises(TypeError, match='not both'):
        Logger('x', emit=print, sink=print)
    with pytest.raises(TypeError, match='positional'):
        Logger('x', _workers.LOG_INFO, print, print)


def test_name_and_level_can_be_changed_like_one_x_workers_do():
    records = []
    logger = Logger('Worker[0]', sink=_collect(records))
    logger.name, logger.level = 'api-main-0', _workers.LOG_DEBUG
    logger.debug('now')
    assert records == [('api-main-0', _workers.LOG_DEBUG, 'now')]


def test_percent_then_brace_formatting_like_one_x():
    records = []
    logger = Logger('f', sink=_collect(records), level=_workers.LOG_DEBUG)
    logger.info('%s items in {where}', 3, where='stock')
    logger.info('{0} and {1}', x=1)          # bad format: logged, not raised
    assert records[0][2] == '3 items in stock'
    assert records[1][2].startswith('{0} and {1} ')
    assert 'log format error' in records[1][2]


def test_level_names_and_message_type_match_one_x():
    assert _workers.LOG_LEVEL_NAMES == {
        50: 'CRITICAL', 40: 'ERROR', 30: 'WARNING', 20: 'INFO', 10: 'DEBUG'}
    assert (_workers.LOG_CRITICAL, _workers.LOG_ERROR, _workers.LOG_WARNING,
            _workers.LOG_INFO, _workers.LOG_DEBUG) == (50, 40, 30, 20, 10)
    assert _workers.MSG_LOG == 'LOG'
    for name in ('LOG_LEVEL_NAMES', 'MSG_LOG', 'Logger'):
        assert name in _workers.__all__


APP = 'compat1x_log_app.py'


def test_log_name_templates_name_the_lines(start_server):
    server = start_server(APP, env={
        'DISPATCHER_LOG_NAME': 'gw-{cls}-{pid}',
        'WORKER_LOG_NAME': 'api-{pool_name}-{worker_id}-{cls}-{pid}'},
        ready_workers=1)
    pid = server.get('/api/hello').json()['pid']
    server.wait_log(rf'\[api-Items-0-NamedWorker-{pid}\] hello from {pid}$')
    server.wait_log(rf'\[gw-NamedDispatcher-{server.pid}\] listening on ')


def test_bad_log_name_template_warns_and_keeps_the_default(start_server):
    server = start_server(APP, env={
        'DISPATCHER_LOG_NAME': '{nope}', 'WORKER_LOG_NAME': '{0}'},
        ready_workers=1)
    pid = server.get('/api/hello').json()['pid']
    server.wait_log(rf'\[Items\[0\]\] hello from {pid}$')
    server.wait_log(r"\[Items\[0\]\] invalid LOG_NAME '\{0\}'")
    server.wait_log(r"\[dispatcher\] invalid LOG_NAME '\{nope\}'")
    server.wait_log(r'\[dispatcher\] listening on ')


def test_default_log_names_are_unchanged(start_server):
    server = start_server(APP, ready_workers=1)
    pid = server.get('/api/hello').json()['pid']
    server.wait_log(rf'\[Items\[0\]\] hello from {pid}$')
    server.wait_log(r'\[dispatcher\] listening on ')
    assert 'invalid LOG_NAME' not in server.log
