"""Unit tests of uhttp.workers.framing: the bytes of complete answers.

Pure functions, so no processes; the round trips read the produced bytes
back with http.client over a real socketpair, and with a strict parser of
this file that refuses any line an RFC 9112 recipient would not accept.
"""

import email.utils
import http.client
import re
import socket
import time
from http import HTTPStatus

import pytest

from uhttp.workers import framing
from uhttp.workers.framing import (
    ResponseError, encode_response, encode_stream_head, frame_response,
    reason_phrase, with_close)

JSON = {'content-type': 'application/json'}
TOKEN_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ ]?(.*)")
STATUS_LINE = re.compile(r'HTTP/1\.1 ([0-9]{3}) (.*)')
IMF_FIXDATE = re.compile(
    r'(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|'
    r'Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT')


def parse_answers(data, head_only=()):
    """Every answer in `data`, strictly: [(status, reason, fields, body)].

    fields: list of (lowercase name, value) in order. The body length
    follows RFC 9112 §6.3: none for 204/304 and for the answers whose
    index is in `head_only`, else exactly one Content-Length. Leftover
    bytes fail the test.
    """
    answers = []
    while data:
        end = data.index(b'\r\n\r\n')
        lines = data[:end].decode('utf-8').split('\r\n')
        status_line = STATUS_LINE.fullmatch(lines[0])
        assert status_line, lines[0]
        fields = []
        for line in lines[1:]:
            match = TOKEN_LINE.fullmatch(line)
            assert match, f'bad field line {line!r}'
            assert not re.search('[\x00-\x08\x0a-\x1f\x7f]', match.group(2))
            fields.append((match.group(1).lower(), match.group(2)))
        status = int(status_line.group(1))
        lengths = [value for name, value in fields if name == 'content-length']
        data = data[end + 4:]
        if status in (204, 304) or len(answers) in head_only:
            if status in (204, 304):
                assert not lengths, f'{status} with a content-length'
            body = b''
        else:
            assert len(lengths) == 1, f'content-length fields: {lengths}'
            body, data = data[:int(lengths[0])], data[int(lengths[0]):]
        answers.append((status, status_line.group(2), fields, body))
    return answers


def parse_one(data, head_only=False):
    """The only answer in `data`: (status, reason, fields dict, body)."""
    [(status, reason, fields, body)] = parse_answers(
        data, head_only=(0,) if head_only else ())
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), f'repeated fields: {names}'
    return status, reason, dict(fields), body


def read_with_http_client(data, method='GET'):
    """Send `data` over a socketpair and read it back with http.client."""
    server, client = socket.socketpair()
    try:
        server.sendall(data)
        server.close()
        response = http.client.HTTPResponse(client, method=method)
        response.begin()
        return response, response.read()
    finally:
        client.close()


# -- status ------------------------------------------------------------------

@pytest.mark.parametrize('status, reason', [
    (200, 'OK'), (201, 'Created'), (204, 'No Content'), (301,
     'Moved Permanently'), (404, 'Not Found'), (418, "I'm a Teapot"),
    (425, 'Too Early'), (500, 'Internal Server Error'),
    (503, 'Service Unavailable'), (599, '')])
def test_status_line_and_reason_phrase(status, reason):
    data = encode_response(status, None, b'', keep_alive=True)
    assert data.startswith(f'HTTP/1.1 {status} {reason}\r\n'.encode())
    assert reason_phrase(status) == reason


def test_status_without_known_phrase_keeps_the_space():
    data = encode_response(299, None, b'x', keep_alive=True)
    assert data.startswith(b'HTTP/1.1 299 \r\n')
    response, body = read_with_http_client(data)
    assert (response.status, body) == (299, b'x')


def test_an_int_enum_status_is_sent_as_its_value():
    data = encode_response(HTTPStatus.NOT_FOUND, None, b'', keep_alive=True)
    assert data.startswith(b'HTTP/1.1 404 Not Found\r\n')


@pytest.mark.parametrize('status', [True, False, 200.0, '200', None, b'200'])
def test_status_that_is_not_an_int_is_refused(status):
    with pytest.raises(ResponseError, match='status must be an int'):
        encode_response(status, None, b'', keep_alive=True)
    with pytest.raises(ResponseError, match='status must be an int'):
        encode_stream_head(status, None)


@pytest.mark.parametrize('status', [100, 102, 103, 150, 199])
def test_interim_statuses_are_not_final_answers(status):
    with pytest.raises(ResponseError, match=f'status {status} is an interim'):
        encode_response(status, None, b'', keep_alive=True)
    with pytest.raises(ResponseError, match='interim'):
        encode_stream_head(status, None)


@pytest.mark.parametrize('headers', [
    None, {'upgrade': 'websocket', 'connection': 'upgrade'}])
def test_101_is_refused_with_or_without_an_upgrade(headers):
    with pytest.raises(ResponseError, match='101 .Switching Protocols'):
        encode_response(101, headers, b'', keep_alive=True)


@pytest.mark.parametrize('status', [-1, 0, 99, 600, 1000, 2 ** 70])
def test_status_outside_100_599_is_refused(status):
    with pytest.raises(ResponseError, match=f'status {status} is outside'):
        encode_response(status, None, b'', keep_alive=True)


def test_response_error_is_a_value_error():
    assert issubclass(ResponseError, ValueError)


# -- answers without content ---------------------------------------------------

@pytest.mark.parametrize('status', [204, 304])
def test_204_and_304_drop_the_body_and_send_no_length(status):
    headers = {'content-length': '4', 'etag': '"v1"'}
    data = encode_response(status, headers, b'junk', keep_alive=True)
    assert data.endswith(b'\r\n\r\n')
    assert b'junk' not in data
    assert b'content-length' not in data.lower()
    got_status, _, fields, body = parse_one(data)
    assert (got_status, body, fields['etag']) == (status, b'', '"v1"')


def test_205_drops_the_body_and_says_length_0():
    data = encode_response(205, None, b'junk', keep_alive=True)
    assert b'junk' not in data
    status, _, fields, body = parse_one(data)
    assert (status, fields['content-length'], body) == (205, '0', b'')


def test_a_dropped_body_does_not_reach_the_next_answer():
    """A 204 whose body leaked would be read as the next response."""
    data = b''.join([
        encode_response(204, None, b'HTTP/1.1 200 OK\r\n\r\n',
                        keep_alive=True),
        encode_response(304, None, b'old', keep_alive=True),
        encode_response(200, JSON, b'{"id": 1}', keep_alive=True)])
    answers = parse_answers(data)
    assert [(status, body) for status, _, _, body in answers] == [
        (204, b''), (304, b''), (200, b'{"id": 1}')]


def test_head_sends_the_get_length_without_the_body():
    data = encode_response(200, JSON, b'{"id": 1}', keep_alive=True,
                           head_only=True)
    assert data.endswith(b'content-length: 9\r\n\r\n')
    status, _, fields, body = parse_one(data, head_only=True)
    assert (status, fields['content-length'], body) == (200, '9', b'')
    response, body = read_with_http_client(data, method='HEAD')
    assert (response.status, response.getheader('content-length'), body) \
        == (200, '9', b'')


def test_head_of_a_204_sends_no_length():
    data = encode_response(204, None, b'', keep_alive=True, head_only=True)
    assert b'content-length' not in data


def test_an_empty_body_says_length_0():
    status, _, fields, body = parse_one(
        encode_response(200, None, b'', keep_alive=True))
    assert (status, fields['content-length'], body) == (200, '0', b'')


# -- body ------------------------------------------------------------------------

@pytest.mark.parametrize('body', [bytearray(b'abc'), memoryview(b'abc')])
def test_bytes_like_bodies_are_sent(body):
    assert encode_response(200, None, body, keep_alive=True).endswith(
        b'content-length: 3\r\n\r\nabc')


@pytest.mark.parametrize('body', ['abc', None, 3, {'a': 1}])
def test_a_body_that_is_not_bytes_is_refused(body):
    with pytest.raises(ResponseError, match='body must be bytes'):
        encode_response(200, None, body, keep_alive=True)


# -- header names -----------------------------------------------------------------

@pytest.mark.parametrize('name', [
    'bad name', 'a:b', ':a', '', 'x\r\ny', 'x\ny', 'x\x00', 'caf\u00e9',
    'a\tb', '(x)', 'a/b', 'a"b', 'a=b', ' x', 'x ', 'a\x7fb', 'a{b}'])
def test_a_name_that_is_not_a_token_is_refused(name):
    with pytest.raises(ResponseError, match='is not a token'):
        encode_response(200, {name: 'v'}, b'', keep_alive=True)
    with pytest.raises(ResponseError, match='is not a token'):
        encode_stream_head(200, {name: 'v'})


def test_a_refused_name_stays_refused():
    """A bad name must not be remembered as checked."""
    for _ in range(2):
        with pytest.raises(ResponseError, match='not a token'):
            encode_response(200, {'x y': 'v'}, b'', keep_alive=True)


@pytest.mark.parametrize('name', [1, 2.5, None, b'x-a', ('x',)])
def test_a_name_that_is_not_a_str_is_refused(name):
    with pytest.raises(ResponseError, match='header name must be a str'):
        encode_response(200, {name: 'v'}, b'', keep_alive=True)


def test_every_tchar_is_accepted_and_names_keep_their_case():
    name = "x-!#$%&'*+.^_`|~09azAZ"
    data = encode_response(200, {name: 'v', 'X-Mixed': 'w'}, b'',
                           keep_alive=True)
    assert f'\r\n{name}: v\r\n'.encode() in data
    assert b'\r\nX-Mixed: w\r\n' in data


def test_name_cache_is_bounded_and_names_are_still_checked(monkeypatch):
    monkeypatch.setattr(framing, '_NAME_KINDS', {})
    monkeypatch.setattr(framing, '_NAME_CACHE_MAX', 16)
    for index in range(40):
        encode_response(200, {f'x-name-{index}': 'v'}, b'', keep_alive=True)
    assert len(framing._NAME_KINDS) == 16  # pylint: disable=protected-access
    with pytest.raises(ResponseError, match='not a token'):
        encode_response(200, {'x name': 'v'}, b'', keep_alive=True)
    # a framing name learned after the cache is full is still handled
    data = encode_response(200, {'Content-Length': '99'}, b'ab',
                           keep_alive=True)
    assert parse_one(data)[2]['content-length'] == '2'


# -- header values ----------------------------------------------------------------

@pytest.mark.parametrize('value', [
    'a\r\nx-injected: 1', 'a\rb', 'a\nb', '\r\n', 'a\x00b', 'a\x7fb',
    'a\x1bb', '\x0b', '\x0c', 'a\x1fb'])
def test_a_value_with_a_control_character_is_refused(value):
    with pytest.raises(ResponseError, match="header 'x-a': value .* "
                                            'contains the control character'):
        encode_response(200, {'x-a': value}, b'', keep_alive=True)
    with pytest.raises(ResponseError, match='control character'):
        encode_stream_head(200, {'x-a': value})


@pytest.mark.parametrize('name', ['date', 'connection', 'content-length'])
def test_values_of_framing_fields_are_checked_too(name):
    with pytest.raises(ResponseError, match='control character'):
        encode_response(200, {name: 'a\r\nb'}, b'', keep_alive=True)


def test_htab_inside_a_value_and_an_empty_value_are_sent():
    data = encode_response(200, {'x-a': 'a\tb', 'x-b': ''}, b'',
                           keep_alive=True)
    assert b'\r\nx-a: a\tb\r\n' in data
    assert b'\r\nx-b: \r\n' in data
    assert parse_one(data)[2]['x-a'] == 'a\tb'


def test_non_ascii_values_are_sent_as_utf8():
    value = 'attachment; filename="caf\u00e9 \u00a0\u2028.txt"'
    data = encode_response(200, {'content-disposition': value}, b'',
                           keep_alive=True)
    assert parse_one(data)[2]['content-disposition'] == value


@pytest.mark.parametrize('value, text', [
    (5, '5'), (0, '0'), (-3, '-3'), (1.5, '1.5'), (HTTPStatus.OK, '200')])
def test_numbers_are_sent_as_text(value, text):
    data = encode_response(200, {'x-n': value}, b'', keep_alive=True)
    assert f'\r\nx-n: {text}\r\n'.encode() in data


@pytest.mark.parametrize('value', [
    None, True, False, b'bytes', len, object(), {'a': 1}, {1}, [['nested']],
    ['ok', None], ['ok', 'a\r\nb']])
def test_other_value_types_are_refused(value):
    with pytest.raises(ResponseError, match="header 'x-a'"):
        encode_response(200, {'x-a': value}, b'', keep_alive=True)


def test_a_list_or_tuple_value_sends_one_line_each():
    headers = {'set-cookie': ['a=1; Path=/', 'b=2'], 'vary': ('accept',),
               'x-none': []}
    data = encode_response(200, headers, b'', keep_alive=True)
    [(_, _, fields, _)] = parse_answers(data)
    assert [value for name, value in fields if name == 'set-cookie'] == \
        ['a=1; Path=/', 'b=2']
    assert ('vary', 'accept') in fields
    assert 'x-none' not in dict(fields)
    response, _ = read_with_http_client(data)
    assert response.headers.get_all('set-cookie') == ['a=1; Path=/', 'b=2']


# -- framing fields ----------------------------------------------------------------

@pytest.mark.parametrize('name', ['content-length', 'Content-Length',
                                  'CONTENT-LENGTH'])
@pytest.mark.parametrize('value', ['999', '0', 1, ['1', '2']])
def test_a_handler_content_length_is_replaced_by_the_real_one(name, value):
    data = encode_response(200, {name: value}, b'abc', keep_alive=True)
    status, _, fields, body = parse_one(data)
    assert (status, fields['content-length'], body) == (200, '3', b'abc')


@pytest.mark.parametrize('name', ['transfer-encoding', 'Transfer-Encoding'])
def test_transfer_encoding_is_refused(name):
    with pytest.raises(ResponseError, match='framing is set by the encoder'):
        encode_response(200, {name: 'chunked'}, b'3\r\nabc\r\n0\r\n\r\n',
                        keep_alive=True)
    with pytest.raises(ResponseError, match='framing is set by the encoder'):
        encode_stream_head(200, {name: 'chunked'})


@pytest.mark.parametrize('keep_alive, line', [
    (True, b'connection: keep-alive'), (False, b'connection: close')])
def test_connection_follows_keep_alive(keep_alive, line):
    data, stays_open = frame_response(200, JSON, b'{}', keep_alive=keep_alive)
    assert stays_open is keep_alive
    assert data.split(b'\r\n')[1] == line


@pytest.mark.parametrize('value', [
    'close', 'Close', ' CLOSE ', 'keep-alive, close', 'foo,close',
    ['x-a', 'close']])
def test_a_handler_close_wins_and_is_reported(value):
    data, stays_open = frame_response(200, {'Connection': value}, b'x',
                                      keep_alive=True)
    assert stays_open is False
    fields = parse_one(data)[2]
    assert fields['connection'] == 'close'
    assert encode_response(200, {'connection': value}, b'x',
                           keep_alive=True) == data.replace(
        b'\r\nConnection', b'\r\nconnection')


@pytest.mark.parametrize('keep_alive', [True, False])
@pytest.mark.parametrize('value', ['keep-alive', 'upgrade', 'x-a', 'closed'])
def test_other_handler_connection_tokens_leave_the_decision(keep_alive, value):
    data, stays_open = frame_response(200, {'connection': value}, b'x',
                                      keep_alive=keep_alive)
    assert stays_open is keep_alive
    assert parse_one(data)[2]['connection'] == \
        ('keep-alive' if keep_alive else 'close')


def test_connection_is_the_first_field():
    data = encode_response(200, {'x-a': '1', 'connection': 'close'}, b'',
                           keep_alive=True)
    assert data.split(b'\r\n')[1:3] == [b'connection: close', b'x-a: 1']


# -- Date --------------------------------------------------------------------------

def test_a_date_is_added_as_imf_fixdate_of_now():
    before = int(time.time())
    data = encode_response(200, None, b'', keep_alive=True)
    after = time.time()
    value = parse_one(data)[2]['date']
    assert IMF_FIXDATE.fullmatch(value), value
    assert before <= email.utils.parsedate_to_datetime(value).timestamp() \
        <= after


def test_the_date_is_computed_once_per_second(monkeypatch):
    clock = [1_700_000_000.2]
    made = []

    def formatdate(second, usegmt):
        made.append(second)
        return email.utils.formatdate(second, usegmt=usegmt)
    monkeypatch.setattr(framing, '_now', lambda: clock[0])
    monkeypatch.setattr(framing, 'formatdate', formatdate)
    monkeypatch.setattr(framing, '_date_expires', 0.0)

    def date():
        return parse_one(encode_response(200, None, b'', keep_alive=True)
                         )[2]['date']
    first = date()
    clock[0] = 1_700_000_000.9
    assert date() == first == 'Tue, 14 Nov 2023 22:13:20 GMT'
    clock[0] = 1_700_000_001.0
    assert date() == 'Tue, 14 Nov 2023 22:13:21 GMT'
    assert made == [1_700_000_000, 1_700_000_001]


@pytest.mark.parametrize('name', ['date', 'Date'])
def test_a_handler_date_is_kept_and_not_doubled(name):
    value = 'Sun, 06 Nov 1994 08:49:37 GMT'
    data = encode_response(200, {name: value}, b'', keep_alive=True)
    [(_, _, fields, _)] = parse_answers(data)
    assert [v for n, v in fields if n == 'date'] == [value]
    head = encode_stream_head(200, {name: value})
    assert head.lower().count(b'\r\ndate: ') == 1


# -- with_close ---------------------------------------------------------------------

def test_with_close_turns_a_keep_alive_answer_into_a_closing_one():
    data = encode_response(200, JSON, b'{"id": 1}', keep_alive=True)
    closed = with_close(data)
    status, _, fields, body = parse_one(closed)
    assert (status, fields['connection'], body) == (200, 'close', b'{"id": 1}')
    assert closed.replace(b'connection: close', b'connection: keep-alive') \
        == data
    assert with_close(closed) == closed


def test_with_close_refuses_foreign_bytes():
    with pytest.raises(ValueError, match='not an answer built by'):
        with_close(b'HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n')


# -- streaming answers --------------------------------------------------------------

def test_stream_head_has_no_length_and_closes():
    head = encode_stream_head(
        200, {'content-length': '5', 'connection': 'keep-alive', 'x-a': '1'})
    assert head.endswith(b'\r\n\r\n')
    lines = head[:-4].decode().split('\r\n')
    assert lines[:2] == ['HTTP/1.1 200 OK', 'connection: close']
    fields = dict(TOKEN_LINE.fullmatch(line).groups() for line in lines[1:])
    assert 'content-length' not in fields
    assert fields['content-type'] == 'text/event-stream'
    assert fields['cache-control'] == 'no-cache'
    assert fields['x-a'] == '1'
    assert IMF_FIXDATE.fullmatch(fields['date'])


def test_stream_head_keeps_the_handler_content_type_in_any_case():
    head = encode_stream_head(200, {'Content-Type': 'application/x-ndjson',
                                    'Cache-Control': 'no-store'})
    assert head.lower().count(b'content-type:') == 1
    assert head.lower().count(b'cache-control:') == 1
    assert b'Content-Type: application/x-ndjson' in head


def test_stream_round_trip_reads_until_close():
    head = encode_stream_head(201, {'content-type': 'application/x-ndjson'},
                              cookies={'sid': 'abc; Path=/', 'old': None})
    response, body = read_with_http_client(head + b'{"a": 1}\n{"a": 2}\n')
    assert response.status == 201
    assert response.getheader('content-type') == 'application/x-ndjson'
    assert response.headers.get_all('set-cookie') == [
        'sid=abc; Path=/', 'old=; Max-Age=0']
    assert body == b'{"a": 1}\n{"a": 2}\n'


@pytest.mark.parametrize('status', [204, 205, 304])
def test_stream_head_refuses_a_status_without_content(status):
    with pytest.raises(ResponseError, match=f'status {status} carries no'):
        encode_stream_head(status, None)


@pytest.mark.parametrize('name', ['a b', 'a=b', 'a;b', '', 'a\r\nb', 1, None])
def test_stream_head_refuses_a_cookie_name_that_is_not_a_token(name):
    with pytest.raises(ResponseError, match='cookie name .* is not a token'):
        encode_stream_head(200, None, cookies={name: 'v'})


@pytest.mark.parametrize('value', ['a\r\nx-injected: 1', 'a\x00', b'v', True])
def test_stream_head_refuses_a_bad_cookie_value(value):
    with pytest.raises(ResponseError, match="header 'set-cookie: sid'"):
        encode_stream_head(200, None, cookies={'sid': value})


# -- round trips ----------------------------------------------------------------------

def test_round_trip_of_a_json_answer_with_eight_headers():
    headers = {
        'content-type': 'application/json',
        'cache-control': 'no-store',
        'x-request-id': '7f3c2a9e-52b1',
        'set-cookie': ['session=abc123; Path=/; HttpOnly', 'theme=dark'],
        'etag': '"5d8c72a5"',
        'vary': 'accept-encoding',
        'x-count': 42,
        'access-control-allow-origin': '*',
    }
    data = encode_response(200, headers, b'{"id": 1}', keep_alive=True)
    response, body = read_with_http_client(data)
    assert (response.status, response.reason, body) == (200, 'OK',
                                                        b'{"id": 1}')
    got = response.headers
    for name, value in headers.items():
        expected = value if isinstance(value, list) else [str(value)]
        assert got.get_all(name) == expected, name
    assert got['content-length'] == '9'
    assert got['connection'] == 'keep-alive'
    assert IMF_FIXDATE.fullmatch(got['date'])
    # 9 lines of the 8 fields (set-cookie twice), connection, date, length
    assert len(got) == 12


def test_round_trip_of_several_answers_on_one_connection():
    answers = [
        (200, JSON, b'{"id": 1}', False),
        (404, {'content-type': 'text/plain'}, b'not here', False),
        (200, JSON, b'{"id": 2}', True),
        (204, None, b'dropped', False),
        (503, {'retry-after': 1}, b'busy', False),
    ]
    data = b''.join(
        encode_response(status, headers, body, keep_alive=True,
                        head_only=head)
        for status, headers, body, head in answers)
    parsed = parse_answers(data, head_only=(2,))
    assert [(status, body) for status, _, _, body in parsed] == [
        (200, b'{"id": 1}'), (404, b'not here'), (200, b''), (204, b''),
        (503, b'busy')]
    assert dict(parsed[2][2])['content-length'] == '9'
    assert dict(parsed[4][2])['retry-after'] == '1'
