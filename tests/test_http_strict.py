"""End-to-end tests of strict HTTP/1.1 request parsing in the dispatcher.

A real dispatcher runs tests/apps/strict_app.py; raw sockets send each
attack the way a proxy would forward it (line by line, with short pauses
between the pieces) and in one segment. Every test checks the status AND
that no hidden request reached a handler: the hidden requests target
routes that count their calls (in the one worker, and in the dispatcher),
and the counts are asked afterwards on a fresh connection.
"""

import http.client
import json
import os
import re
import socket
import time
import uuid

import pytest

from conftest import APPS, Server, parse_response

STRICT_APP = os.path.join(APPS, 'strict_app.py')
MAX_CONTENT_LENGTH = 1000
PAUSE = 0.02


@pytest.fixture(scope='module')
def strict():
    server = Server(STRICT_APP,
                    env={'MAX_CONTENT_LENGTH': str(MAX_CONTENT_LENGTH)})
    try:
        server.start(ready_workers=1)
        yield server
    finally:
        server.stop()


def key():
    return uuid.uuid4().hex[:12]


def line_pieces(raw):
    """The message cut after every CR and every LF: the delicate bytes
    arrive last in a segment, the way a proxy may forward them."""
    return re.findall(rb'[^\r\n]*[\r\n]|[^\r\n]+', raw)


def converse(port, pieces, pause=PAUSE, timeout=10.0):
    """Send `pieces` on one connection with a pause between them; stop
    sending once the server announced it closes (a refusal). Read until
    the server closes; return the list of (status, headers, body) it
    sent."""
    with socket.create_connection(('127.0.0.1', port),
                                  timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(pause)
                if b'\r\nconnection: close\r\n' in peek(sock).lower():
                    break   # refused: what follows would meet a closed socket
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_until_closed(sock)


def peek(sock):
    """What the server sent so far, left unread."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return b''
    finally:
        sock.settimeout(timeout)


def read_until_closed(sock):
    buffer = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b''
        if not chunk:
            break
        buffer += chunk
    responses = []
    while buffer:
        parsed = parse_response(buffer)
        assert parsed is not None, f'incomplete response: {bytes(buffer)!r}'
        responses.append(parsed[:3])
        del buffer[:parsed[3]]
    return responses


def send(server, raw, mode):
    """`raw` in one segment or in line pieces."""
    pieces = [raw] if mode == 'one segment' else line_pieces(raw)
    return converse(server.port, pieces)


def statuses(responses):
    return [response[0] for response in responses]


def hits(server, name):
    """How often /api/hit/{name} and /sync/hit/{name} ran, together."""
    return (server.get(f'/api/hits/{name}').json()['hits']
            + server.get(f'/sync/hits/{name}').json()['hits'])


def assert_refused(responses, status):
    """One answer, the refusal, and the connection closed after it."""
    assert statuses(responses) == [status], responses
    assert responses[0][1]['connection'] == 'close'


MODES = ['one segment', 'line pieces']


# -- 1. bare CR ---------------------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
def test_bare_cr_smuggling_is_400(strict, mode):
    outer, hidden = key(), key()
    smuggled = b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n' % hidden.encode()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'X-Note: a\rContent-Length: %d\r\n\r\n' % (outer.encode(),
                                                      len(smuggled))
           + smuggled)
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0


# -- 2. bare LF ---------------------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
def test_bare_lf_head_with_lf_cr_lf_in_its_body_is_400(strict, mode):
    outer, hidden = key(), key()
    body = (b'x\n\r\nGET /sync/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n'
            % hidden.encode())
    raw = (b'POST /api/hit/%s HTTP/1.1\nHost: x\nContent-Length: %d\n\n'
           % (outer.encode(), len(body)) + body)
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0


@pytest.mark.parametrize('mode', MODES)
def test_bare_lf_head_then_crlf_request_is_400(strict, mode):
    first, second = key(), key()
    raw = (b'GET /api/hit/%s HTTP/1.1\nHost: x\n\n'
           b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n'
           % (first.encode(), second.encode()))
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, first) == 0 and hits(strict, second) == 0


# -- 3. field syntax ----------------------------------------------------------

@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('field', [
    b'Content-Length : 5', b'Content-Length: \x0b5', b'Content-Length: 5\x0c',
    b'Content-Length: +5', b'X-Nul: a\x00b', b'X-Bel: \x07', b'X-Del: \x7f',
    b'X\x01Name: v', b'X-Fold: a\r\n b', b'Host: second', b'Host: ',
    b'Transfer-Encoding : chunked', b'Content-Type: a/b\r\nContent-Type: c/d',
    b'Content-Length: 5\r\nContent-Length: 6',
    b'Content-Length: 5\r\nContent-Length: 5',
])
def test_invalid_fields_are_400_and_the_body_is_never_a_request(
        strict, mode, field):
    outer, hidden = key(), key()
    body = b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n' % hidden.encode()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n'
           % (outer.encode(), field) + body)
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0


def test_invalid_host_is_400(strict):
    for host in (b'a b', b'a/b', b'user@host', b'[::1', b'h:123456'):
        raw = b'GET /api/echo HTTP/1.1\r\nHost: %s\r\n\r\n' % host
        assert_refused(converse(strict.port, [raw]), 400)
    raw = b'GET /api/echo HTTP/1.1\r\nAccept: */*\r\n\r\n'
    assert_refused(converse(strict.port, [raw]), 400)


def test_header_count_and_head_size_limits_are_431(strict):
    fields = b''.join(b'X-%d: v\r\n' % index for index in range(100))
    raw = b'GET /api/echo HTTP/1.1\r\nHost: x\r\n' + fields + b'\r\n'
    assert_refused(converse(strict.port, [raw]), 431)
    raw = (b'GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Big: '
           + b'b' * 9000 + b'\r\n\r\n')
    assert_refused(converse(strict.port, [raw]), 431)
    # 100 fields and a 7 KiB head pass
    fields = b''.join(b'X-%d: v\r\n' % index for index in range(97))
    raw = (b'GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'b' * 6000
           + b'\r\n' + fields + b'Connection: close\r\n\r\n')
    responses = converse(strict.port, [raw])
    assert statuses(responses) == [200]
    assert json.loads(responses[0][2])['headers']['x-96'] == 'v'


@pytest.mark.parametrize('mode', MODES)
def test_obs_text_reaches_the_handler_as_latin_1(strict, mode):
    raw = (b'GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Name: caf\xc3\xa9\r\n'
           b'X-Raw: \xff\r\nConnection: close\r\n\r\n')
    responses = send(strict, raw, mode)
    assert statuses(responses) == [200]
    headers = json.loads(responses[0][2])['headers']
    assert headers['x-name'].encode('latin-1').decode('utf-8') == 'café'
    assert headers['x-raw'] == '\xff'


# -- request line -------------------------------------------------------------

@pytest.mark.parametrize('line, status', [
    (b'GET * HTTP/1.1', 400),
    (b'GET example.com:80 HTTP/1.1', 400),
    (b'GET foo/bar HTTP/1.1', 400),
    (b'GET /a#b HTTP/1.1', 400),
    (b'GET /%zz HTTP/1.1', 400),
    (b'GET  / HTTP/1.1', 400),
    (b'GET / HTTP/1.1 ', 400),
    (b'GET / HTTP/2.0', 505),
    (b'GET / HTTP/1.2', 505),
    (b'GET / HTTP/1.10', 400),
    (b'CONNECT example.com:443 HTTP/1.1', 501),
    (b'FOO / HTTP/1.1', 501),
    (b'get / HTTP/1.1', 501),
])
def test_request_line_rules(strict, line, status):
    raw = line + b'\r\nHost: x\r\n\r\n'
    assert_refused(converse(strict.port, [raw]), status)


def test_absolute_form_serves_its_path_with_its_host(strict):
    name = key()
    raw = (b'POST http://example.com/api/hit/%s?x=1 HTTP/1.1\r\n'
           b'Host: other\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
           % name.encode())
    responses = converse(strict.port, [raw])
    assert statuses(responses) == [200]
    seen = json.loads(responses[0][2])
    assert seen['path'] == f'/api/hit/{name}' and seen['query'] == {'x': '1'}
    assert seen['headers']['host'] == 'example.com'
    assert hits(strict, name) == 1


def test_options_asterisk_is_not_refused(strict):
    raw = b'OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
    responses = converse(strict.port, [raw])
    assert len(responses) == 1 and responses[0][0] not in (400, 500)


def test_refusing_a_head_request_sends_no_body(strict):
    raw = b'HEAD / HTTP/1.1\r\nHost: x\r\nX : y\r\n\r\n'
    responses = converse(strict.port, [raw])
    assert_refused(responses, 400)
    assert responses[0][2] == b''


# -- 5. chunked request bodies ------------------------------------------------

def post_chunked(server, path, pieces, content_type):
    connection = http.client.HTTPConnection('127.0.0.1', server.port,
                                            timeout=10)
    try:
        connection.request('POST', path, body=iter(pieces), headers={
            'Content-Type': content_type, 'Transfer-Encoding': 'chunked'},
            encode_chunked=True)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_chunked_json_upload_with_http_client(strict):
    status, body = post_chunked(strict, '/api/echo',
                                [b'{"a": [1,', b' 2], ', b'"b": "c"}'],
                                'application/json')
    assert status == 200
    seen = json.loads(body)
    assert seen['data'] == {'a': [1, 2], 'b': 'c'}
    assert seen['data_type'] == 'dict'
    # described as the Content-Length body it became
    assert seen['headers']['content-length'] == str(len(
        b'{"a": [1, 2], "b": "c"}'))
    assert 'transfer-encoding' not in seen['headers']


def test_chunked_binary_and_form_uploads_with_http_client(strict):
    payload = bytes(range(256)) * 3
    status, body = post_chunked(strict, '/api/echo',
                                [payload[:100], payload[100:]],
                                'application/octet-stream')
    assert status == 200
    seen = json.loads(body)
    assert seen['data'] == {'bytes': payload.decode('latin-1')}
    assert seen['data_type'] == 'bytes'
    status, body = post_chunked(strict, '/api/echo', [b'a=1&', b'b=x%20y'],
                                'application/x-www-form-urlencoded')
    assert json.loads(body)['data'] == {'a': '1', 'b': 'x y'}


def test_chunked_body_equals_the_same_content_length_body(strict):
    payload = b'{"same": [1, 2, 3]}'
    by_length = strict.request('POST', '/api/echo', body=payload, headers={
        'Content-Type': 'application/json'}).json()
    status, body = post_chunked(strict, '/api/echo', [payload[:5],
                                                     payload[5:]],
                                'application/json')
    by_chunks = json.loads(body)
    assert status == 200
    assert by_chunks['data'] == by_length['data']
    assert by_chunks['data_type'] == by_length['data_type']
    assert by_chunks['headers']['content-length'] == \
        by_length['headers']['content-length']


def test_empty_chunked_body_is_none_like_an_empty_body(strict):
    raw = (b'POST /api/echo HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n'
           b'Connection: close\r\n\r\n0\r\n\r\n')
    responses = converse(strict.port, [raw])
    assert statuses(responses) == [200]
    seen = json.loads(responses[0][2])
    assert seen['data'] is None and seen['headers']['content-length'] == '0'


@pytest.mark.parametrize('mode', MODES)
def test_raw_chunked_with_extensions_and_trailers(strict, mode):
    raw = (b'POST /api/echo HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\nConnection: close\r\n'
           b'Content-Type: text/plain\r\n\r\n'
           b'5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n')
    responses = send(strict, raw, mode)
    assert statuses(responses) == [200]
    seen = json.loads(responses[0][2])
    assert seen['data'] == {'bytes': 'hello world'}
    assert 'x-trailer' not in seen['headers']


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('size_line', [
    b'-1', b'+5', b'0x5', b' 5', b'5 ', b'5;', b'5;a b', b'5 ;a',
    b'1' * 17, b'5\n', b'zz',
])
def test_invalid_chunk_sizes_are_400_and_nothing_runs(strict, mode,
                                                      size_line):
    outer, hidden = key(), key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n%s\r\nhello\r\n0\r\n\r\n'
           b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n'
           % (outer.encode(), size_line, hidden.encode()))
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0


@pytest.mark.parametrize('coding, status', [
    (b'gzip, chunked', 501), (b'chunked, gzip', 400), (b'gzip', 400),
    (b'chunked, chunked', 400), (b'identity', 400),
])
def test_transfer_codings(strict, coding, status):
    outer = key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s'
           b'\r\n\r\n5\r\nhello\r\n0\r\n\r\n' % (outer.encode(), coding))
    assert_refused(converse(strict.port, [raw]), status)
    assert hits(strict, outer) == 0


@pytest.mark.parametrize('mode', MODES)
def test_content_length_with_transfer_encoding_is_400(strict, mode):
    # CL.TE / TE.CL: whichever a proxy believes, the other hides a request
    outer, hidden = key(), key()
    smuggled = b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n' % hidden.encode()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
           % outer.encode() + smuggled)
    assert_refused(send(strict, raw, mode), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0


def test_transfer_encoding_in_http_1_0_is_400(strict):
    outer = key()
    raw = (b'POST /api/hit/%s HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n'
           b'0\r\n\r\n' % outer.encode())
    assert_refused(converse(strict.port, [raw]), 400)
    assert hits(strict, outer) == 0


def test_chunked_body_over_the_limit_is_413(strict):
    outer = key()
    # declared: refused before the data is sent
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n%x\r\n'
           % (outer.encode(), MAX_CONTENT_LENGTH + 1))
    assert_refused(converse(strict.port, [raw]), 413)
    # accumulated over several chunks
    chunk = b'%x\r\n%s\r\n' % (400, b'c' * 400)
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n' % outer.encode()
           + chunk * 3 + b'0\r\n\r\n')
    assert_refused(converse(strict.port, [raw[:60], raw[60:]]), 413)
    assert hits(strict, outer) == 0
    # exactly the limit passes
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n' % outer.encode()
           + chunk * 2 + b'%x\r\n%s\r\n0\r\n\r\n' % (200, b'd' * 200))
    assert statuses(converse(strict.port, [raw])) == [200]
    assert hits(strict, outer) == 1


def test_unfinished_chunked_body_gets_408_at_the_request_time_limit(
        start_server):
    server = start_server(STRICT_APP, env={'REQUEST_TIMEOUT': '1'},
                          ready_workers=1)
    outer = key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n5\r\nhel' % outer.encode())
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=15) as sock:
        sock.sendall(raw)
        # everyone else is served meanwhile
        assert server.get('/sync/hits/x').status == 200
        responses = read_until_closed(sock)
    assert statuses(responses) == [408]
    assert hits(server, outer) == 0


# -- 6. pipelining after a body -----------------------------------------------

@pytest.mark.parametrize('mode', MODES)
def test_post_and_get_pipelined_in_one_segment(strict, mode):
    first, second = key(), key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n'
           b'Content-Type: text/plain\r\n\r\nhello'
           b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
           % (first.encode(), second.encode()))
    responses = send(strict, raw, mode)
    assert statuses(responses) == [200, 200]
    assert json.loads(responses[0][2])['data'] == {'bytes': 'hello'}
    assert json.loads(responses[1][2])['method'] == 'GET'
    assert hits(strict, first) == 1 and hits(strict, second) == 1


def test_chunked_post_and_get_pipelined_in_one_segment(strict):
    first, second = key(), key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
           b'Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
           b'GET /sync/hit/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
           b'\r\n' % (first.encode(), second.encode()))
    responses = converse(strict.port, [raw])
    assert statuses(responses) == [200, 200]
    assert hits(strict, first) == 1 and hits(strict, second) == 1


@pytest.mark.parametrize('mode', MODES)
def test_crlf_after_a_body_is_ignored(strict, mode):
    first, second = key(), key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n'
           b'\r\nok\r\n' % first.encode())
    then = (b'\r\nPOST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
            b'Content-Length: 0\r\nConnection: close\r\n\r\n'
            % second.encode())
    responses = send(strict, raw + then, mode)
    assert statuses(responses) == [200, 200]
    assert hits(strict, first) == 1 and hits(strict, second) == 1


def test_crlf_after_a_body_then_the_next_request_later(strict):
    first, second = key(), key()
    with socket.create_connection(('127.0.0.1', strict.port),
                                  timeout=10) as sock:
        sock.sendall(b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
                     b'Content-Length: 2\r\n\r\nok\r\n' % first.encode())
        buffer = bytearray()
        while parse_response(buffer) is None:
            chunk = sock.recv(65536)
            assert chunk, 'closed after the first request'
            buffer += chunk
        assert parse_response(buffer)[0] == 200
        time.sleep(0.2)
        sock.sendall(b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
                     b'Connection: close\r\n\r\n' % second.encode())
        responses = read_until_closed(sock)
    assert statuses(responses) == [200]
    assert hits(strict, first) == 1 and hits(strict, second) == 1


# -- 7. Expect: 100-continue --------------------------------------------------

def test_100_continue_over_the_limit_is_413_without_100(strict):
    outer = key()
    raw = (b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n'
           b'Content-Length: %d\r\n\r\n' % (outer.encode(),
                                            MAX_CONTENT_LENGTH + 1))
    with socket.create_connection(('127.0.0.1', strict.port),
                                  timeout=10) as sock:
        sock.sendall(raw)
        responses = read_until_closed(sock)   # the body is never sent
    assert_refused(responses, 413)
    assert hits(strict, outer) == 0


def test_100_continue_within_the_limit(strict):
    outer = key()
    with socket.create_connection(('127.0.0.1', strict.port),
                                  timeout=10) as sock:
        sock.sendall(b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
                     b'Expect: 100-continue\r\nContent-Length: 5\r\n'
                     b'Connection: close\r\n\r\n' % outer.encode())
        interim = b''
        while not interim.endswith(b'\r\n\r\n'):
            chunk = sock.recv(1)
            assert chunk, 'closed before 100 Continue'
            interim += chunk
        assert interim == b'HTTP/1.1 100 Continue\r\n\r\n'
        sock.sendall(b'hello')
        responses = read_until_closed(sock)
    assert statuses(responses) == [200]
    assert hits(strict, outer) == 1


def test_100_continue_for_a_chunked_body(strict):
    outer = key()
    with socket.create_connection(('127.0.0.1', strict.port),
                                  timeout=10) as sock:
        sock.sendall(b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
                     b'Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n'
                     b'Connection: close\r\n\r\n' % outer.encode())
        interim = sock.recv(len(b'HTTP/1.1 100 Continue\r\n\r\n'))
        assert interim.startswith(b'HTTP/1.1 100 Continue')
        sock.sendall(b'2\r\nok\r\n0\r\n\r\n')
        responses = read_until_closed(sock)
    assert statuses(responses) == [200]
    assert hits(strict, outer) == 1


# -- the dispatcher serves everyone else --------------------------------------

def test_a_slow_attack_does_not_hold_up_other_clients(strict):
    outer, hidden = key(), key()
    with socket.create_connection(('127.0.0.1', strict.port),
                                  timeout=10) as attacker:
        attacker.sendall(b'POST /api/hit/%s HTTP/1.1\r\nHost: x\r\n'
                         b'Transfer-Encoding: chunked\r\n\r\n5\r\nhel'
                         % outer.encode())
        for _ in range(3):
            assert strict.get('/api/echo').status == 200
        attacker.sendall(b'lo\r\n0x1\r\nz\r\n0\r\n\r\n'
                         b'GET /api/hit/%s HTTP/1.1\r\nHost: x\r\n\r\n'
                         % hidden.encode())
        assert_refused(read_until_closed(attacker), 400)
    assert hits(strict, outer) == 0 and hits(strict, hidden) == 0
    assert strict.proc.poll() is None
