"""The access log: one line per finished request, in each format, for
every kind of answer (a pool's, @sync, static, the dispatcher's own 404 and
400), through the `uhttp.workers.access` logger; and none when disabled.
Real dispatcher processes; the formatting itself also as a unit."""

import json
import logging
import re
import signal
import time

import pytest

from uhttp.workers.access_log import AccessLog, build, check_template
from uhttp.workers.log import LogRouter

APP = 'logging_app.py'
CLF_TIME = r'\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]'
MALFORMED = b'GET /api/hello HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n'


@pytest.fixture(name='static_dir')
def fixture_static_dir(tmp_path):
    (tmp_path / 'a.txt').write_text('hello static\n')
    return str(tmp_path)


def _start(start_server, static_dir, **env):
    env = dict(env, STATIC_DIR=static_dir)
    return start_server(APP, env=env, ready_workers=2)


def _access_lines(server):
    return [line for line in server.lines if '[access] ' in line]


def _wait_access(server, pattern):
    return server.wait_log(r'\[access\] .*' + pattern)


def _serve_each_kind(server):
    """A pool request, a @sync one, a static file, a 404, a 400; returns
    the length of the pool answer's body."""
    answer = server.get('/api/hello?x=1', headers={
        'Referer': 'http://ref.example/', 'User-Agent': 'probe/1.0'})
    assert answer.json()['pid']
    assert server.get('/health').status == 200
    assert server.get('/static/a.txt').body == b'hello static\n'
    assert server.get('/nothing-here').status == 404
    assert server.raw(MALFORMED).startswith(b'HTTP/1.1 400')
    return len(answer.body)


def test_common_format_fields_for_each_kind_of_answer(start_server,
                                                      static_dir):
    server = _start(start_server, static_dir)
    size = _serve_each_kind(server)
    pool = _wait_access(server, r'"GET /api/hello\?x=1 HTTP/1.1"')
    line = pool.string
    assert re.search(rf'\[access\] 127\.0\.0\.1 - - {CLF_TIME} '
                     rf'"GET /api/hello\?x=1 HTTP/1\.1" 200 {size} '
                     r'\d+\.\d{3}ms Items\[[01]\] \d+$', line), line
    _wait_access(server, r'"GET /health HTTP/1.1" 200 16 \d+\.\d{3}ms sync -$')
    _wait_access(server, r'"GET /static/a.txt HTTP/1.1" 200 13 '
                 r'\d+\.\d{3}ms static -$')
    _wait_access(server, r'"GET /nothing-here HTTP/1.1" 404 \d+ '
                 r'\d+\.\d{3}ms - -$')
    # the head is refused before a request exists: no method, path nor id
    _wait_access(server, r'"-" 400 \d+ \d+\.\d{3}ms - -$')


def test_combined_format_adds_referer_and_user_agent(start_server,
                                                     static_dir):
    server = _start(start_server, static_dir, ACCESS_LOG_FORMAT='combined')
    size = _serve_each_kind(server)
    _wait_access(server, rf'"GET /api/hello\?x=1 HTTP/1.1" 200 {size} '
                 r'"http://ref.example/" "probe/1.0" \d+\.\d{3}ms '
                 r'Items\[[01]\] \d+$')
    # http.client sends no User-Agent: '-' as in Apache's format
    _wait_access(server, r'"GET /health HTTP/1.1" 200 16 "-" "-" '
                 r'\d+\.\d{3}ms sync -$')
    _wait_access(server, r'"-" 400 \d+ "-" "-" \d+\.\d{3}ms - -$')


def test_json_format_is_one_object_per_line(start_server, static_dir):
    server = _start(start_server, static_dir, ACCESS_LOG_FORMAT='json')
    size = _serve_each_kind(server)
    wait = time.monotonic() + 15
    while len(_access_lines(server)) < 5 and time.monotonic() < wait:
        time.sleep(0.05)
    records = [json.loads(line.split('[access] ', 1)[1])
               for line in _access_lines(server)]
    by_path = {record['path']: record for record in records}
    assert set(by_path) == {'/api/hello?x=1', '/health', '/static/a.txt',
                            '/nothing-here', None}, records
    pool = by_path['/api/hello?x=1']
    assert (pool['method'], pool['status'], pool['bytes'], pool['remote'],
            pool['referer'], pool['user_agent'], pool['protocol']) == (
        'GET', 200, size, '127.0.0.1', 'http://ref.example/', 'probe/1.0',
        'HTTP/1.1')
    assert re.fullmatch(r'Items\[[01]\]', pool['served_by'])
    assert isinstance(pool['request_id'], int)
    assert pool['duration_ms'] >= 0
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}',
                        pool['time_iso'])
    assert (by_path['/health']['served_by'], by_path['/health']['status'],
            by_path['/health']['request_id']) == ('sync', 200, None)
    assert (by_path['/static/a.txt']['served_by'],
            by_path['/static/a.txt']['bytes']) == ('static', 13)
    assert (by_path['/nothing-here']['status'],
            by_path['/nothing-here']['served_by']) == (404, '-')
    assert (by_path[None]['status'], by_path[None]['method']) == (400, None)


def test_a_stream_is_logged_when_it_ends(start_server, static_dir):
    server = _start(start_server, static_dir)
    assert server.get('/api/stream').body == b'part 0\npart 1\npart 2\n'
    _wait_access(server, r'"GET /api/stream HTTP/1.1" 200 - \d+\.\d{3}ms '
                 r'Items\[[01]\] \d+$')


def test_user_template(start_server, static_dir):
    server = _start(start_server, static_dir, ACCESS_LOG_FORMAT=(
        'ACC {method} {path} -> {status} by {served_by} #{request_id} '
        '{bytes}B ua={user_agent}'))
    server.get('/api/item/7')
    server.get('/health')
    _wait_access(server, r'ACC GET /api/item/7 -> 200 by Items\[[01]\] '
                 r'#\d+ \d+B ua=-$')
    _wait_access(server, r'ACC GET /health -> 200 by sync #- 16B ua=-$')


def test_disabled_access_log_writes_no_line(start_server, static_dir):
    server = _start(start_server, static_dir, ACCESS_LOG='off')
    _serve_each_kind(server)
    server.get('/api/stream')
    # everything the dispatcher had to write is out once it has stopped
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    server.wait_log(r'\[dispatcher\] stopped$')
    assert 'hello from handler' in server.log
    assert _access_lines(server) == []
    assert 'access' not in server.log


def test_access_lines_reach_stdlib_handlers(start_server, static_dir):
    server = _start(start_server, static_dir, CAPTURE='1')
    server.get('/health')
    match = server.wait_log(r'^CAPTURED .*"name": "uhttp.workers.access"')
    record = json.loads(match.string.split(' ', 1)[1])
    assert record['level'] == 'INFO'
    assert '"GET /health HTTP/1.1" 200 16' in record['message']
    # the application's handler took it: not the default output as well
    assert _access_lines(server) == []


def test_a_named_logger_gets_the_lines(start_server, static_dir):
    server = _start(start_server, static_dir, CAPTURE='1',
                    ACCESS_LOG='logger:myapp.access')
    server.get('/health')
    server.wait_log(r'^CAPTURED .*"name": "myapp.access".*'
                    r'GET /health HTTP/1.1\\" 200')


# -- the formatting, without processes ----------------------------------------

class _FakeConnection:
    """The fields of a connection the access log reads."""
    # pylint: disable=too-few-public-methods
    _request_start = None
    _method = 'GET'
    _url = '/a?b=1'
    _protocol = 'HTTP/1.1'
    _socket_ip = '10.0.0.1'
    _headers = {'referer': 'say "hi"', 'user-agent': 'x\\y'}
    access_by = 'Items[0]'
    access_id = 3


def _line(fmt, connection=None):
    lines = []
    AccessLog(fmt, lambda: lines.append).finished(
        connection or _FakeConnection(), 201, 5)
    return lines[0]


def test_formats_as_a_unit():
    common = _line('common')
    assert re.fullmatch(rf'10\.0\.0\.1 - - {CLF_TIME} "GET /a\?b=1 HTTP/1\.1"'
                        r' 201 5 0\.000ms Items\[0\] 3', common), common
    combined = _line('combined')
    assert r'201 5 "say \"hi\"" "x\\y" 0.000ms Items[0] 3' in combined
    assert json.loads(_line('json'))['referer'] == 'say "hi"'
    assert _line('{status}|{bytes}|{served_by}|{request_id}') == \
        '201|5|Items[0]|3'


def test_head_requests_count_no_body_bytes():
    connection = _FakeConnection()
    connection._method = 'HEAD'  # pylint: disable=protected-access
    assert json.loads(_line('json', connection))['bytes'] == 0


def test_bad_templates_and_formats_are_refused_at_start():
    with pytest.raises(ValueError, match='unknown field'):
        check_template('{remote} {nope}')
    with pytest.raises(ValueError):
        AccessLog('{remote', print)
    with pytest.raises(ValueError):
        AccessLog(42, print)


def test_disabled_builds_nothing():
    router = LogRouter(print)
    assert build(False, 'common', router) is None
    assert build(None, 'json', router) is None
    assert isinstance(build(True, 'json', router), AccessLog)


def test_explicit_logger_honours_its_level():
    logger = logging.getLogger('test.access.level')
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log = build(logger, 'common', LogRouter(print))
        logger.setLevel(logging.WARNING)
        log.finished(_FakeConnection(), 200, 1)
        assert records == []
        logger.setLevel(logging.INFO)
        log.finished(_FakeConnection(), 200, 1)
        assert len(records) == 1 and '" 200 1 ' in records[0].getMessage()
    finally:
        logger.removeHandler(handler)
