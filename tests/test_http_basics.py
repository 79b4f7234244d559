"""End-to-end tests of what every answer must carry: a Date field (pool,
@sync, static, redirect, 304/206/416 and the dispatcher's own errors), the
Content-Length GET would send on a HEAD answer without its body, and no
Content-Type on a redirect with an empty body.

Each exchange is one request on a fresh socket with `Connection: close`,
read until the server closes: what follows the head is exactly the body
that was sent (so "HEAD sent no body" is an exact check, not a wait).
"""

import os
import re
import socket
from email.utils import parsedate_to_datetime

import pytest

from conftest import APPS, Server, wait_until

from uhttp.workers import framing

APP = os.path.join(APPS, 'http_basics_app.py')

SMALL = b'small file, served from the cache\n'
BIG = bytes(range(256)) * 4096          # 1 MiB: streamed, never cached
INDEX = b'<p>index of sub</p>'

_IMF_FIXDATE = re.compile(
    r'(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug'
    r'|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\Z')


class Answer:
    """Status, header fields (in order, names lowercased), body."""

    def __init__(self, status, fields, body):
        self.status = status
        self.fields = fields
        self.headers = dict(fields)
        self.body = body

    def values(self, name):
        """Every value of the field `name` (lowercase)."""
        return [value for key, value in self.fields if key == name]

    def __repr__(self):
        return f'<Answer {self.status} {self.fields} {self.body[:60]!r}>'


def parse_answer(data):
    """The Answer of everything a server sent before closing."""
    head, sep, body = data.partition(b'\r\n\r\n')
    assert sep, f'no complete head in {data!r}'
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split(' ')[1])
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(':')
        fields.append((name.strip().lower(), value.strip()))
    return Answer(status, fields, body)


def send_raw(port, data):
    """Send `data`, return everything received until the server closes."""
    with socket.create_connection(('127.0.0.1', port), timeout=15) as sock:
        sock.sendall(data)
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


def ask(port, method, path, headers=(), body=b''):
    """One request (`headers`: 'Name: value' strings); its Answer."""
    lines = [f'{method} {path} HTTP/1.1', 'Host: test', 'Connection: close',
             *headers]
    if body:
        lines.append(f'Content-Length: {len(body)}')
    request = ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body
    return parse_answer(send_raw(port, request))


def assert_dated(answer):
    """Exactly one Date field, an IMF-fixdate (RFC 9110 §5.6.7)."""
    dates = answer.values('date')
    assert len(dates) == 1, answer
    assert _IMF_FIXDATE.match(dates[0]), answer


# -- servers ---------------------------------------------------------------

@pytest.fixture(scope='module')
def static_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('basics_static')
    (root / 'small.txt').write_bytes(SMALL)
    (root / 'big.bin').write_bytes(BIG)
    (root / 'sub').mkdir()
    (root / 'sub' / 'index.html').write_bytes(INDEX)
    return root


@pytest.fixture(scope='module')
def server(static_root):
    running = Server(APP, env={'STATIC_DIR': str(static_root)})
    try:
        running.start(ready_workers=1)
        yield running
    finally:
        running.stop()


# -- Date --------------------------------------------------------------------

@pytest.mark.parametrize('method, path, headers, status', [
    ('GET', '/api/text/5', (), 200),                 # pool answer
    ('GET', '/api/none', (), 404),                   # a worker's 404
    ('GET', '/sync/text/3', (), 200),                # @sync answer
    ('GET', '/static/small.txt', (), 200),           # cached static file
    ('GET', '/static/big.bin', (), 200),             # streamed static file
    ('GET', '/static/sub', (), 301),                 # static redirect
    ('GET', '/sync/redirect', (), 302),              # @sync redirect
    ('GET', '/static/small.txt', ('If-None-Match: *',), 304),
    ('GET', '/static/big.bin', ('Range: bytes=0-9',), 206),
    ('GET', '/static/big.bin', ('Range: bytes=99999999-',), 416),
    ('POST', '/static/small.txt', (), 405),          # dispatcher's 405
    ('GET', '/nowhere', (), 404),                    # dispatcher's 404
    ('HEAD', '/static/big.bin', (), 200),
    ('HEAD', '/nowhere', (), 404),
])
def test_every_answer_has_one_date(server, method, path, headers, status):
    answer = ask(server.port, method, path, headers)
    assert answer.status == status, answer
    assert_dated(answer)


def test_parser_refusals_have_a_date(server):
    answer = parse_answer(send_raw(server.port, b'NOT HTTP AT ALL\r\n\r\n'))
    assert answer.status == 400, answer
    assert_dated(answer)
    answer = parse_answer(send_raw(
        server.port, b'POST /api/post HTTP/1.1\r\nHost: test\r\n'
        b'Content-Length: 100000\r\n\r\n'))
    assert answer.status == 413, answer
    assert_dated(answer)


def test_gateway_timeout_has_a_date(static_root):
    running = Server(APP, env={'STATIC_DIR': str(static_root),
                               'TIMEOUT': '0.5'})
    try:
        running.start(ready_workers=1)
        answer = ask(running.port, 'GET', '/api/sleep/2')
        assert answer.status == 504, answer
        assert_dated(answer)
    finally:
        running.stop()


def test_worker_died_and_degraded_have_a_date(static_root):
    running = Server(APP, env={'STATIC_DIR': str(static_root),
                               'MAX_RESTARTS': '1'})
    try:
        running.start(ready_workers=1)
        # the worker dies with the request: 502; its restart degrades
        # the pool (max_restarts=1), whose next requests get 503
        answer = ask(running.port, 'GET', '/api/crash')
        assert answer.status == 502, answer
        assert_dated(answer)
        answers = []

        def degraded():
            answers.append(ask(running.port, 'GET', '/api/text/1'))
            return answers[-1].status == 503
        wait_until(degraded, message=f'no 503: {answers[-3:]}')
        assert_dated(answers[-1])
    finally:
        running.stop()


# -- HEAD --------------------------------------------------------------------

@pytest.mark.parametrize('path', [
    '/api/text/1234',        # pool route
    '/sync/text/777',        # @sync route declared for GET only
    '/static/small.txt',     # cached static file
    '/static/big.bin',       # streamed static file
    '/static/sub/',          # a directory's index.html
    '/nowhere',              # the dispatcher's 404
])
def test_head_has_the_length_of_get_and_no_body(server, path):
    got = ask(server.port, 'GET', path)
    head = ask(server.port, 'HEAD', path)
    assert head.status == got.status, (head, got)
    assert int(got.headers['content-length']) == len(got.body) > 0
    assert head.headers['content-length'] == got.headers['content-length']
    assert head.headers.get('content-type') == \
        got.headers.get('content-type')
    assert head.body == b''


def test_head_of_a_static_file_ignores_range(server):
    head = ask(server.port, 'HEAD', '/static/big.bin',
               ('Range: bytes=0-9',))
    assert head.status == 200, head
    assert head.headers['content-length'] == str(len(BIG))
    assert head.body == b''


# -- redirects ---------------------------------------------------------------

@pytest.mark.parametrize('method, path, status, location', [
    ('GET', '/static/sub', 301, '/static/sub/'),
    ('HEAD', '/static/sub', 301, '/static/sub/'),
    ('GET', '/static', 301, '/static/'),
    ('GET', '/sync/redirect', 302, '/elsewhere'),
])
def test_redirect_has_no_content_type(server, method, path, status,
                                      location):
    answer = ask(server.port, method, path)
    assert answer.status == status, answer
    assert answer.headers['location'] == location
    assert 'content-type' not in answer.headers, answer
    assert answer.values('content-length') == ['0']
    assert answer.body == b''


# -- framing.http_date, unit -------------------------------------------------

def test_http_date_is_the_date_line_of_framing():
    value = framing.http_date()
    assert _IMF_FIXDATE.match(value), value
    wire = framing.encode_response(200, None, b'', keep_alive=True)
    # the same second, unless it changed in between: then a later value
    dates = [line[len(b'date: '):].decode() for line in wire.split(b'\r\n')
             if line.startswith(b'date: ')]
    assert len(dates) == 1
    assert parsedate_to_datetime(dates[0]) >= parsedate_to_datetime(value)
