"""Workers' logging through the stdlib `logging` module, end to end: what a
handler logs with `self.log` or with a module logger of its own reaches the
handlers the application installed in the dispatcher, at the dispatcher's
level, with tracebacks; the default output stays when none is installed;
and the service says once that it is ready. Real processes."""

import json
import logging
import queue
import threading

from uhttp.workers.log import (DetailedLogger, ForwardingHandler, Logger,
                               LogRouter, install_forwarding)

APP = 'logging_app.py'


def _captured(server, predicate, count=1):
    """Wait for `count` records the application's handler printed (as
    `CAPTURED {json}` lines) that satisfy `predicate`; return them."""
    def matching():
        records = [json.loads(line.split(' ', 1)[1])
                   for line in list(server.lines)
                   if line.startswith('CAPTURED ')]
        found = [record for record in records if predicate(record)]
        return found if len(found) >= count else None
    from conftest import wait_until  # pylint: disable=import-outside-toplevel
    return wait_until(matching, 15, message=lambda: server.log)


def test_self_log_info_reaches_a_dispatcher_handler(start_server):
    server = start_server(APP, env={'CAPTURE': '1', 'ACCESS_LOG': 'off'},
                          ready_workers=2)
    pid = server.get('/api/hello').json()['pid']
    record, = _captured(server, lambda r: r['message'] == 'hello from handler')
    # the pool sets no level: the dispatcher's INFO applies
    assert record['level'] == 'INFO'
    assert record['name'] == 'uhttp.workers.worker.Items'
    assert record['pool'] == 'Items'
    assert record['worker_id'] in (0, 1)
    assert record['worker_logger'] == f"Items[{record['worker_id']}]"
    assert record['process'] == pid
    # the application's handler took it: the default output did not
    assert 'hello from handler' not in '\n'.join(
        line for line in server.lines if not line.startswith('CAPTURED '))


def test_a_module_logger_in_the_worker_reaches_it_too(start_server):
    server = start_server(APP, env={'CAPTURE': '1', 'ACCESS_LOG': 'off'},
                          ready_workers=2)
    server.get('/api/module?what=knives')
    record, = _captured(
        server, lambda r: r['message'] == 'careful with knives (42)')
    assert (record['level'], record['worker_logger'], record['pool']) == (
        'WARNING', 'mymodule', 'Items')
    assert record['funcName'] == 'warn_about' and record['lineno'] > 0


def test_tracebacks_arrive(start_server):
    server = start_server(APP, env={'CAPTURE': '1', 'ACCESS_LOG': 'off'},
                          ready_workers=2)
    server.get('/api/fail')
    stdlib, = _captured(server, lambda r: r['message'] == 'lookup failed')
    assert stdlib['level'] == 'ERROR'
    assert stdlib['exc_text'].startswith('Traceback (most recent call last)')
    assert "KeyError: 'missing'" in stdlib['exc_text']
    own, = _captured(server, lambda r: r['message'] == 'self.log caught it')
    assert "KeyError: 'inner'" in own['exc_text']


def test_default_output_without_a_handler(start_server):
    server = start_server(APP, env={'ACCESS_LOG': 'off'}, ready_workers=2)
    server.get('/api/hello')
    server.get('/api/module?what=forks')
    server.get('/api/fail')
    server.wait_log(r'INFO +\[Items\[[01]\]\] hello from handler$')
    server.wait_log(r'WARNING +\[Items\[[01]\]:mymodule\] careful with '
                    r'forks \(42\)$')
    server.wait_log(r'ERROR +\[Items\[[01]\]:mymodule\] lookup failed$')
    server.wait_log(r"^KeyError: 'missing'$")


def test_dispatcher_records_reach_the_handler(start_server):
    server = start_server(APP, env={'CAPTURE': '1', 'ACCESS_LOG': 'off'},
                          ready_workers=2)
    records = _captured(server, lambda r: r['message'].startswith('ready: '))
    assert records[0]['name'] == 'uhttp.workers.dispatcher'


def test_a_dispatcher_traceback_arrives_apart(start_server):
    server = start_server(APP, env={'CAPTURE': '1', 'ACCESS_LOG': 'off'},
                          ready_workers=2)
    assert server.get('/sync-boom').status == 500
    record, = _captured(server, lambda r: r['message'].startswith(
        'sync handler GET /sync-boom failed'))
    assert (record['name'], record['level']) == (
        'uhttp.workers.dispatcher', 'ERROR')
    assert record['exc_text'].endswith('RuntimeError: sync went wrong')


def test_the_ready_line_appears_once(start_server):
    server = start_server(APP, env={'ACCESS_LOG': 'off'}, ready_workers=2)
    server.wait_log(r'\[dispatcher\] ready: 2 workers in 1 pool on '
                    rf'http://127\.0\.0\.1:{server.port}$')
    server.get('/api/hello')   # a later line: the ready one came before it
    server.wait_log('hello from handler')
    assert server.count_log(r'\] ready: ') == 1


# -- the pieces, without processes ---------------------------------------------

def test_logger_is_a_stdlib_logger():
    records = []
    logger = Logger('x', 20, lambda *record: records.append(record))
    assert isinstance(logger, logging.Logger)
    assert logger.isEnabledFor(logging.INFO)
    assert not logger.isEnabledFor(logging.DEBUG)
    logger.setLevel(logging.DEBUG)
    assert logger.getEffectiveLevel() == logging.DEBUG
    logger.debug('%s=%d', 'a', 1, extra={'k': 1}, stacklevel=2)
    assert records == [('x', logging.DEBUG, 'a=1')]


def test_detailed_logger_sends_the_traceback_apart():
    records = []
    logger = DetailedLogger('x', 20, lambda *record: records.append(record))
    try:
        raise ValueError('bad')
    except ValueError:
        logger.exception('it failed')
    (name, level, text, details), = records
    assert (name, level, text) == ('x', logging.ERROR, 'it failed')
    assert details['exc_text'].endswith('ValueError: bad')


def test_forwarding_handler_does_not_recurse():
    sent = []
    inner = logging.getLogger('test.forwarding.inner')

    def send(name, level, message, details):
        sent.append((name, message))
        inner.warning('logged while sending')   # must not come back here

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        install_forwarding(send, logging.INFO)
        assert [type(h) for h in root.handlers] == [ForwardingHandler]
        logging.getLogger('test.forwarding').info('n=%d', 5)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert sent == [('test.forwarding', 'n=5')]


def test_forwarding_handler_is_per_thread_guarded():
    # a second thread's record is sent even while another thread sends
    results = queue.Queue()
    gate = threading.Event()

    def send(name, level, message, details):
        results.put(message)
        if message == 'first':
            gate.wait(5)

    handler = ForwardingHandler(send)
    logger = logging.getLogger('test.forwarding.threads')
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        first = threading.Thread(target=logger.info, args=('first',))
        first.start()
        assert results.get(timeout=5) == 'first'
        logger.info('second')
        gate.set()
        first.join(5)
        assert results.get(timeout=5) == 'second'
    finally:
        logger.removeHandler(handler)


def test_router_prefers_configured_handlers():
    fallback = []
    router = LogRouter(lambda *record: fallback.append(record))
    # pytest's own handler sits on the root logger: keep clear of it
    logging.getLogger('test.router.none').propagate = False
    router.route('test.router.none', 'short', 20, 'to fallback')
    assert fallback == [('short', 20, 'to fallback')]
    logger = logging.getLogger('test.router.some')
    logger.propagate = False
    got = []
    handler = logging.Handler()
    handler.emit = got.append
    logger.addHandler(handler)
    try:
        router.route('test.router.some', 'short', 20, 'to stdlib', 'TB',
                     {'created': 1.5, 'lineno': 7}, {'pool': 'P'})
    finally:
        logger.removeHandler(handler)
    record, = got
    assert (record.getMessage(), record.exc_text, record.created,
            record.lineno, record.pool) == ('to stdlib', 'TB', 1.5, 7, 'P')
    assert logging.Formatter().format(record).endswith('to stdlib\nTB')
    assert len(fallback) == 1
