"""Static files: validators (ETag, Last-Modified), 304 Not Modified, byte
ranges (206, 416, If-Range).

The decisions of `static_http` are unit-tested on their own; the rest runs
against a real dispatcher (tests/apps/http_basics_app.py) over real
sockets, for a small file (served from the cache) and for files above the
cache limit (streamed from their descriptor).
"""

import os
import socket
from email.utils import formatdate

import pytest

from conftest import APPS, Server, parse_response, wait_until
from test_http_basics import ask, assert_dated

from uhttp.workers import static_cache
from uhttp.workers.static_http import (UNSATISFIABLE, Validators,
                                       not_modified, requested_range)

APP = os.path.join(APPS, 'http_basics_app.py')

SMALL = b'0123456789abcdefghijklmnopqrstuvwxyz'
BIG = os.urandom(static_cache.SMALL_FILE * 4 + 12345)
# a sparse file far above any buffer: a range of it must be read alone
HUGE_SIZE = 256 * 1024 * 1024
HUGE_TAIL = b'the last bytes of a huge sparse file'


# -- static_http, unit -------------------------------------------------------

class _Info:
    """The fields of an os.stat_result that Validators reads."""

    def __init__(self, size=100, mtime_ns=1_700_000_000_123_456_789,
                 ino=4242):
        self.st_size = size
        self.st_mtime_ns = mtime_ns
        self.st_ino = ino


VALIDATORS = Validators(_Info())
LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)


def test_validators_of_a_file():
    assert VALIDATORS.etag.startswith('"') and VALIDATORS.etag.endswith('"')
    assert VALIDATORS.mtime == 1_700_000_000
    assert VALIDATORS.last_modified == LAST_MODIFIED
    assert VALIDATORS.fields == {'etag': VALIDATORS.etag,
                                 'last-modified': LAST_MODIFIED,
                                 'accept-ranges': 'bytes'}
    # any of size, mtime (to the ns) and inode changes the tag
    for other in (_Info(size=101), _Info(mtime_ns=1_700_000_000_123_456_790),
                  _Info(ino=4243)):
        assert Validators(other).etag != VALIDATORS.etag


@pytest.mark.parametrize('fields, expected', [
    ({}, False),
    ({'if-none-match': VALIDATORS.etag}, True),
    ({'if-none-match': 'W/' + VALIDATORS.etag}, True),       # weak compare
    ({'if-none-match': f'"x", W/"y", {VALIDATORS.etag}'}, True),
    ({'if-none-match': '*'}, True),
    ({'if-none-match': '"other"'}, False),
    ({'if-none-match': VALIDATORS.etag[:-2] + '"'}, False),
    ({'if-modified-since': LAST_MODIFIED}, True),
    ({'if-modified-since': formatdate(1_700_000_100, usegmt=True)}, True),
    ({'if-modified-since': formatdate(1_699_999_999, usegmt=True)}, False),
    ({'if-modified-since': 'yesterday'}, False),              # ignored
    ({'if-modified-since': 'Tuesday, 14-Nov-23 22:13:20 GMT'}, True),
    # If-None-Match decides alone when present (RFC 9110 §13.2.2)
    ({'if-none-match': '"other"', 'if-modified-since': LAST_MODIFIED},
     False),
    ({'if-none-match': VALIDATORS.etag,
      'if-modified-since': formatdate(1_600_000_000, usegmt=True)}, True),
])
def test_not_modified(fields, expected):
    assert not_modified(fields, VALIDATORS) is expected


@pytest.mark.parametrize('field, expected', [
    ('bytes=0-9', (0, 10)),
    ('bytes=90-', (90, 100)),
    ('bytes=-10', (90, 100)),
    ('bytes=-1000', (0, 100)),
    ('bytes=50-5000', (50, 100)),
    ('bytes=99-99', (99, 100)),
    ('BYTES = 1 - 2 ', (1, 3)),
    ('bytes=0-1,', (0, 2)),                 # an empty list element
    ('bytes=100-', UNSATISFIABLE),
    ('bytes=100-200', UNSATISFIABLE),
    ('bytes=-0', UNSATISFIABLE),
    ('bytes=0-1,5-6', None),                # several ranges: all of it
    ('bytes=5-2', None),                    # invalid: ignored
    ('bytes=-', None),
    ('bytes=a-b', None),
    ('bytes=\u00b2-', None),                # a digit, but not ASCII
    ('bytes 0-1', None),
    ('items=0-1', None),
    ('bytes=', None),
])
def test_requested_range(field, expected):
    assert requested_range({'range': field}, 100, VALIDATORS) == expected


def test_requested_range_of_an_empty_file():
    assert requested_range({'range': 'bytes=0-'}, 0, VALIDATORS) \
        is UNSATISFIABLE
    assert requested_range({'range': 'bytes=-5'}, 0, VALIDATORS) \
        is UNSATISFIABLE


@pytest.mark.parametrize('if_range, honoured', [
    (VALIDATORS.etag, True),
    ('W/' + VALIDATORS.etag, False),        # If-Range compares strongly
    ('"other"', False),
    (LAST_MODIFIED, True),
    (formatdate(1_700_000_001, usegmt=True), False),
    ('not a date', False),
])
def test_if_range(if_range, honoured):
    fields = {'range': 'bytes=0-9', 'if-range': if_range}
    assert requested_range(fields, 100, VALIDATORS) == \
        ((0, 10) if honoured else None)


def test_no_range_asked():
    assert requested_range({}, 100, VALIDATORS) is None
    assert requested_range({'if-range': VALIDATORS.etag}, 100,
                           VALIDATORS) is None


# -- end to end --------------------------------------------------------------

@pytest.fixture(scope='module')
def static_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('conditional_static')
    (root / 'small.txt').write_bytes(SMALL)
    (root / 'big.bin').write_bytes(BIG)
    with open(root / 'huge.bin', 'wb') as huge:
        huge.truncate(HUGE_SIZE - len(HUGE_TAIL))
        huge.seek(HUGE_SIZE - len(HUGE_TAIL))
        huge.write(HUGE_TAIL)
    return root


@pytest.fixture(scope='module')
def server(static_root):
    running = Server(APP, env={'STATIC_DIR': str(static_root)})
    try:
        running.start(ready_workers=1)
        yield running
    finally:
        running.stop()


FILES = [('/static/small.txt', SMALL), ('/static/big.bin', BIG)]


@pytest.mark.parametrize('path, content', FILES)
def test_validators_sent(server, path, content):
    first = ask(server.port, 'GET', path)
    again = ask(server.port, 'GET', path)
    assert first.status == 200 and first.body == content
    etag = first.headers['etag']
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert again.headers['etag'] == etag
    assert first.headers['last-modified'] == again.headers['last-modified']
    assert first.headers['accept-ranges'] == 'bytes'
    # Cache-Control is the mount's to set (its `headers`), never ours
    assert first.values('cache-control') == ['public, max-age=60']


def test_etag_changes_with_the_file(server, static_root):
    path = static_root / 'changing.txt'
    path.write_bytes(b'version 1')
    os.utime(path, ns=(1_600_000_000_000_000_000,) * 2)
    first = ask(server.port, 'GET', '/static/changing.txt')
    # same size, another modification time (set, not left to the clock)
    path.write_bytes(b'version 2')
    os.utime(path, ns=(1_600_000_000_000_000_001,) * 2)
    second = ask(server.port, 'GET', '/static/changing.txt')
    assert (first.body, second.body) == (b'version 1', b'version 2')
    assert first.headers['etag'] != second.headers['etag']
    # Last-Modified has whole seconds: it does not tell them apart
    assert first.headers['last-modified'] == \
        second.headers['last-modified'] == \
        formatdate(1_600_000_000, usegmt=True)
    answer = ask(server.port, 'GET', '/static/changing.txt',
                 (f'If-None-Match: {first.headers["etag"]}',))
    assert answer.status == 200 and answer.body == b'version 2'


def _assert_not_modified(answer, full):
    assert answer.status == 304, answer
    assert answer.body == b''
    assert answer.headers['etag'] == full.headers['etag']
    assert answer.headers['last-modified'] == full.headers['last-modified']
    assert 'content-type' not in answer.headers
    assert 'content-length' not in answer.headers
    assert answer.values('cache-control') == ['public, max-age=60']
    assert_dated(answer)


@pytest.mark.parametrize('path, content', FILES)
def test_if_none_match(server, path, content):
    full = ask(server.port, 'GET', path)
    etag = full.headers['etag']
    for field in (etag, 'W/' + etag, f'"nope", {etag}', '*'):
        for method in ('GET', 'HEAD'):
            _assert_not_modified(ask(server.port, method, path,
                                     (f'If-None-Match: {field}',)), full)
    answer = ask(server.port, 'GET', path, ('If-None-Match: "nope"',))
    assert answer.status == 200 and answer.body == content


@pytest.mark.parametrize('path, content', FILES)
def test_if_modified_since(server, path, content):
    full = ask(server.port, 'GET', path)
    modified = full.headers['last-modified']
    _assert_not_modified(ask(server.port, 'GET', path, (
        f'If-Modified-Since: {modified}',)), full)
    for since in (formatdate(0, usegmt=True), 'not a date'):
        answer = ask(server.port, 'GET', path,
                     (f'If-Modified-Since: {since}',))
        assert answer.status == 200 and answer.body == content
    # If-None-Match, present, decides alone
    answer = ask(server.port, 'GET', path, (
        'If-None-Match: "nope"', f'If-Modified-Since: {modified}'))
    assert answer.status == 200 and answer.body == content


def test_conditional_answers_close_the_opened_file(server):
    """A 304 or 416 of a streamed file closes the descriptor opened for it."""
    full = ask(server.port, 'GET', '/static/big.bin')
    descriptors = f'/proc/{server.pid}/fd'
    before = len(os.listdir(descriptors))
    for _ in range(20):
        assert ask(server.port, 'GET', '/static/big.bin', (
            f'If-None-Match: {full.headers["etag"]}',)).status == 304
        assert ask(server.port, 'GET', '/static/big.bin', (
            'Range: bytes=99999999-',)).status == 416
    wait_until(lambda: len(os.listdir(descriptors)) <= before,
               message='descriptors of static files left open')


@pytest.mark.parametrize('path, content', FILES)
@pytest.mark.parametrize('field, start, stop', [
    ('bytes=0-4', 0, 5),
    ('bytes=7-', 7, None),
    ('bytes=-6', -6, None),
    ('bytes=3-99999999', 3, None),
    ('bytes=-99999999', 0, None),
])
def test_single_range(server, path, content, field, start, stop):
    answer = ask(server.port, 'GET', path, (f'Range: {field}',))
    part = content[start:stop]
    first = start if start >= 0 else len(content) + start
    assert answer.status == 206, answer
    assert answer.body == part
    assert answer.headers['content-length'] == str(len(part))
    assert answer.headers['content-range'] == \
        f'bytes {first}-{first + len(part) - 1}/{len(content)}'
    assert answer.headers['accept-ranges'] == 'bytes'
    assert 'etag' in answer.headers and 'content-type' in answer.headers


@pytest.mark.parametrize('path, content', FILES)
def test_unsatisfiable_range(server, path, content):
    for field in (f'bytes={len(content)}-', 'bytes=-0'):
        answer = ask(server.port, 'GET', path, (f'Range: {field}',))
        assert answer.status == 416, answer
        assert answer.headers['content-range'] == f'bytes */{len(content)}'
        assert answer.values('content-length') == ['0']
        assert answer.body == b''
        assert_dated(answer)


@pytest.mark.parametrize('path, content', FILES)
@pytest.mark.parametrize('field', [
    'bytes=0-1,4-5', 'bytes=5-2', 'lines=0-1', 'bytes=x-'])
def test_range_served_whole(server, path, content, field):
    """Several ranges, or a Range that does not parse: the whole file."""
    answer = ask(server.port, 'GET', path, (f'Range: {field}',))
    assert answer.status == 200, answer
    assert answer.body == content
    assert 'content-range' not in answer.headers


@pytest.mark.parametrize('path, content', FILES)
def test_if_range(server, path, content):
    full = ask(server.port, 'GET', path)
    etag, modified = full.headers['etag'], full.headers['last-modified']
    for validator in (etag, modified):
        answer = ask(server.port, 'GET', path, (
            'Range: bytes=1-3', f'If-Range: {validator}'))
        assert answer.status == 206 and answer.body == content[1:4], answer
    for validator in ('"stale"', 'W/' + etag, formatdate(0, usegmt=True)):
        answer = ask(server.port, 'GET', path, (
            'Range: bytes=1-3', f'If-Range: {validator}'))
        assert answer.status == 200 and answer.body == content, answer


def test_range_then_next_request_on_the_same_connection(server):
    """A 206 of a streamed file sends exactly its Content-Length: the next
    answer on the connection starts right after it."""
    request = (b'GET /static/big.bin HTTP/1.1\r\nHost: t\r\n'
               b'Range: bytes=300000-400000\r\n\r\n'
               b'GET /static/small.txt HTTP/1.1\r\nHost: t\r\n'
               b'Connection: close\r\n\r\n')
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=15) as sock:
        sock.sendall(request)
        received = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status, headers, body, used = parse_response(received)
    assert (status, body) == (206, BIG[300000:400001])
    assert headers['content-range'] == f'bytes 300000-400000/{len(BIG)}'
    status, _headers, body, rest = parse_response(received[used:])
    assert (status, body) == (200, SMALL)
    assert used + rest == len(received)


def _high_water_kib(pid):
    with open(f'/proc/{pid}/status', encoding='ascii') as status:
        for line in status:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise AssertionError('no VmHWM')


def test_range_of_a_huge_file_reads_only_the_range(server):
    before = _high_water_kib(server.pid)
    answer = ask(server.port, 'GET', '/static/huge.bin', (
        f'Range: bytes=-{len(HUGE_TAIL)}',))
    assert answer.status == 206 and answer.body == HUGE_TAIL
    answer = ask(server.port, 'GET', '/static/huge.bin', (
        'Range: bytes=100000000-100999999',))
    assert answer.status == 206
    assert answer.body == bytes(1_000_000)
    # reading the 256 MiB file into memory would raise the peak by as much
    assert _high_water_kib(server.pid) - before < 64 * 1024
