"""Answers of @api handlers are framed by the worker (framing.py) and
checked before anything reaches the wire: a handler's mistake becomes a
logged 500, never a malformed or smuggled response."""

import os
import socket

import pytest

from conftest import APPS, Server, parse_response


@pytest.fixture(scope='module')
def core():
    """core_app.py with its defaults (2 CoreWorkers and two other pools)."""
    server = Server(os.path.join(APPS, 'core_app.py'))
    try:
        server.start(ready_workers=4)
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()

BAD_ANSWERS = ['colon-in-name', 'space-in-name', 'nul-in-value',
               'crlf-in-value', 'function-value', 'status-1xx', 'status-101',
               'status-700', 'status-str']


def exchange(server, raw, responses=1):
    """Send raw requests on one connection; return the parsed responses."""
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=10) as sock:
        sock.sendall(raw)
        buffer = bytearray()
        answers = []
        while len(answers) < responses:
            parsed = parse_response(buffer)
            if parsed is None:
                chunk = sock.recv(65536)
                assert chunk, f'closed after {answers}'
                buffer += chunk
                continue
            answers.append(parsed[:3])
            del buffer[:parsed[3]]
        return answers, bytes(buffer)


@pytest.mark.parametrize('kind', BAD_ANSWERS)
def test_an_answer_that_cannot_be_sent_is_a_logged_500(core, kind):
    ((status, headers, body),), _ = exchange(
        core, f'GET /api/badanswer/{kind} HTTP/1.1\r\nHost: x\r\n\r\n'
        .encode())
    assert status == 500
    assert body == b'{"error": "Internal Server Error"}'
    assert 'x-a' not in headers and 'set-cookie' not in headers
    core.wait_log(r'cannot encode the response to GET /api/badanswer/'
                  + kind)


def test_a_status_given_as_a_str_is_named_in_the_log(core):
    result = core.get('/api/badanswer/status-str')
    assert result.status == 500
    core.wait_log(r"cannot encode the response to GET "
                  r"/api/badanswer/status-str: the status '200' is a str: "
                  r"return an int, e.g. `return data, 200`")


@pytest.mark.parametrize('code', [204, 304])
def test_no_body_on_the_wire_for_204_and_304(core, code):
    # the next answer on the connection must start right after the head
    raw = (f'GET /api/status/{code} HTTP/1.1\r\nHost: x\r\n\r\n'
           'GET /api/item/5 HTTP/1.1\r\nHost: x\r\n\r\n').encode()
    with socket.create_connection(('127.0.0.1', core.port),
                                  timeout=10) as sock:
        sock.sendall(raw)
        data = b''
        while data.count(b'HTTP/1.1 ') < 2 or not data.endswith(b'}'):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    first, second = data.split(b'HTTP/1.1 200', 1)
    assert first.startswith(f'HTTP/1.1 {code} '.encode())
    assert first.endswith(b'\r\n\r\n')  # no body bytes after its head
    assert b'content-length' not in first.lower()
    assert second.endswith(b'{"id": 5}')


def test_head_on_a_pool_route_carries_the_get_length(core):
    get = core.request('GET', '/api/item/12345')
    with socket.create_connection(('127.0.0.1', core.port),
                                  timeout=10) as sock:
        sock.sendall(b'HEAD /api/item/12345 HTTP/1.1\r\nHost: x\r\n\r\n'
                     b'GET /api/item/7 HTTP/1.1\r\nHost: x\r\n\r\n')
        data = b''
        while not data.endswith(b'{"id": 7}'):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, rest = data.split(b'\r\n\r\n', 1)
    assert head.startswith(b'HTTP/1.1 200 ')
    assert f'content-length: {len(get.body)}'.encode() in head.lower()
    # no body after the HEAD answer: the next answer follows at once
    assert rest.startswith(b'HTTP/1.1 200 ')


def test_pool_answers_carry_a_date(core):
    result = core.get('/api/item/1')
    assert result.headers['date'].endswith(' GMT')
