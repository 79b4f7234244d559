"""Unit tests of uhttp.workers.http11: the request grammar, attack by attack.

Pure functions on bytes, no sockets. Each rule is checked on the whole
message and on every prefix of it (bytes arrive in pieces): a prefix is
either "incomplete" or refused with the same status, never a different
request. The anchors are RFC 9112 / RFC 9110, and the strict behaviour of
llhttp, h11 and gunicorn >= 22 where the RFCs allow a choice.
"""

import pytest

from uhttp.workers.http11 import (
    FRAMING_ALLOWANCE, MAX_CHUNK_LINE, MAX_EMPTY_LINES, MAX_FIELDS,
    MAX_HEAD_SIZE, ChunkedDecoder, ProtocolError, parse_head)

WRK_HEAD = b'GET /api/item/1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n'
BROWSER_HEAD = (
    b'GET /static/app.js?v=3 HTTP/1.1\r\n'
    b'Host: example.com\r\n'
    b'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 '
    b'Firefox/128.0\r\n'
    b'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'
    b'\r\n'
    b'Accept-Language: en-US,en;q=0.5\r\n'
    b'Accept-Encoding: gzip, deflate, br\r\n'
    b'Connection: keep-alive\r\n'
    b'Cookie: session=abc123; theme=dark\r\n'
    b'Upgrade-Insecure-Requests: 1\r\n'
    b'Sec-Fetch-Dest: document\r\n'
    b'Sec-Fetch-Mode: navigate\r\n'
    b'\r\n')


def head_of(raw, **kwargs):
    """The RequestHead of a complete head (fails if incomplete)."""
    head, end = parse_head(raw, **kwargs)
    assert head is not None, raw
    return head, end


def refusal(raw, **kwargs):
    """The ProtocolError a complete message gets."""
    with pytest.raises(ProtocolError) as info:
        parse_head(raw, **kwargs)
    return info.value


def first_result(raw, **kwargs):
    """Feed `raw` one byte more at a time, as a slow client would send it:
    ('head', head, end) at the first prefix that parses, ('error', status)
    at the first that is refused, ('incomplete',) if none."""
    for size in range(1, len(raw) + 1):
        try:
            head, end = parse_head(raw[:size], **kwargs)
        except ProtocolError as err:
            return ('error', err.status)
        if head is not None:
            return ('head', head, end)
    return ('incomplete',)


def request(fields=b'Host: x\r\n', line=b'GET / HTTP/1.1'):
    return line + b'\r\n' + fields + b'\r\n'


# -- valid heads --------------------------------------------------------------

def test_wrk_head():
    head, end = head_of(WRK_HEAD + b'GET /next')
    assert end == len(WRK_HEAD)
    assert (head.method, head.target, head.url, head.version) == (
        'GET', '/api/item/1', '/api/item/1', 'HTTP/1.1')
    assert head.headers == {'host': '127.0.0.1:8080'}
    assert head.repeated is None
    assert head.content_length is None and not head.chunked
    assert not head.has_body and not head.expect_continue


def test_browser_head():
    head, end = head_of(BROWSER_HEAD)
    assert end == len(BROWSER_HEAD)
    assert head.url == '/static/app.js?v=3'
    assert len(head.headers) == 10
    assert head.headers['accept-encoding'] == 'gzip, deflate, br'
    assert head.headers['cookie'] == 'session=abc123; theme=dark'
    assert all(key == key.lower() for key in head.headers)


def test_every_prefix_of_a_valid_head_is_incomplete():
    for raw in (WRK_HEAD, BROWSER_HEAD, request(b'Host: x\r\nX-Empty:\r\n')):
        for size in range(len(raw)):
            assert parse_head(raw[:size])[0] is None, raw[:size]
        assert first_result(raw)[0] == 'head'


def test_head_at_an_offset():
    raw = b'previous body' + WRK_HEAD
    head, end = head_of(raw, start=13)
    assert head.url == '/api/item/1' and end == len(raw)


def test_http_1_0_needs_no_host():
    head, _ = head_of(b'GET / HTTP/1.0\r\n\r\n')
    assert head.version == 'HTTP/1.0' and head.headers == {}


def test_field_values_lose_only_outer_spaces_and_tabs():
    head, _ = head_of(request(
        b'Host: x\r\nX-A: \t a  b \t \r\nX-Empty:\r\nX-Spaces:   \r\n'
        b'X-Tight:v\r\n'))
    assert head.headers['x-a'] == 'a  b'
    assert head.headers['x-empty'] == ''
    assert head.headers['x-spaces'] == ''
    assert head.headers['x-tight'] == 'v'


def test_obs_text_is_accepted_and_decoded_as_latin_1():
    head, _ = head_of(request(
        b'Host: x\r\nX-Name: caf\xc3\xa9\r\nX-Raw: \xff\x80 end\r\n'))
    assert head.headers['x-name'] == 'caf\xc3\xa9'
    assert head.headers['x-name'].encode('latin-1').decode('utf-8') == 'café'
    assert head.headers['x-raw'].encode('latin-1') == b'\xff\x80 end'


def test_repeated_fields_are_combined_as_uhttp_server_does():
    head, _ = head_of(request(
        b'Host: x\r\nAccept: a\r\nX-Other: 1\r\naccept: b\r\n'
        b'Cookie: s=1\r\nCOOKIE: t=2\r\n'))
    assert head.headers['accept'] == 'a, b'
    assert head.headers['cookie'] == 's=1; t=2'
    assert head.repeated == {'accept': ['a', 'b'], 'cookie': ['s=1', 't=2']}


def test_field_names_may_use_every_tchar():
    name = b"!#$%&'*+-.^_`|~09azAZ"
    head, _ = head_of(request(b'Host: x\r\n' + name + b': v\r\n'))
    assert head.headers[name.decode().lower()] == 'v'


# -- 1. bare CR ---------------------------------------------------------------

@pytest.mark.parametrize('raw', [
    # the smuggling attempt: one line for a proxy, two for a lax server
    b'POST / HTTP/1.1\r\nHost: x\r\nX-Note: a\rContent-Length: 7\r\n\r\n',
    b'GET / HTTP/1.1\rHost: x\r\n\r\n',
    b'GET / HTTP/1.1\r\nHost: x\r\r\n\r\n',
    b'GET / HTTP/1.1\r\nHost: x\r\nX:\r\r\n\r\n',
    b'GET / HTTP/1.1\r\nHost\r: x\r\n\r\n',
])
def test_bare_cr_is_refused(raw):
    assert refusal(raw).status == 400
    assert first_result(raw) == ('error', 400)


def test_bare_cr_is_refused_before_the_head_ends():
    # no empty line yet: waiting would only end in a 408
    assert refusal(b'GET / HTTP/1.1\r\nX: a\rb').status == 400


def test_cr_at_the_end_of_the_buffer_waits_for_its_lf():
    assert parse_head(b'GET / HTTP/1.1\r\nHost: x\r')[0] is None
    assert parse_head(b'GET / HTTP/1.1\r')[0] is None


# -- 2. bare LF ---------------------------------------------------------------

@pytest.mark.parametrize('raw', [
    b'GET / HTTP/1.1\nHost: x\n\n',
    b'GET / HTTP/1.1\r\nHost: x\n\r\n',
    b'GET / HTTP/1.1\r\nHost: x\r\n\n',
    b'GET / HTTP/1.1\nHost: x\r\n\r\n',
    # a bare-LF head, then a body holding LF CR LF and a hidden request:
    # searched over the whole buffer, "\n\r\n" would end the head there
    b'POST / HTTP/1.1\nHost: x\nContent-Length: 40\n\n'
    b'x\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n',
    # a bare-LF head, then a CRLF request in the same segment
    b'GET /one HTTP/1.1\nHost: x\n\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n',
])
def test_bare_lf_is_refused_and_nothing_inside_is_parsed(raw):
    assert refusal(raw).status == 400
    assert first_result(raw) == ('error', 400)


def test_bare_lf_is_refused_before_the_head_ends():
    assert refusal(b'GET / HTTP/1.1\nHost: x\n').status == 400
    assert refusal(b'\nGET / HTTP/1.1\r\n').status == 400


def test_head_ends_at_the_first_empty_line_never_in_the_body():
    body = b'\r\n\r\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n'
    raw = (b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n'
           % len(body)) + body
    head, end = head_of(raw)
    assert head.url == '/' and head.content_length == len(body)
    assert raw[end:] == body


# -- empty lines before a request line (RFC 9112 §2.2) ------------------------

def test_leading_empty_lines_are_skipped():
    for count in (1, 2, MAX_EMPTY_LINES):
        raw = b'\r\n' * count + WRK_HEAD
        head, end = head_of(raw)
        assert head.url == '/api/item/1' and end == len(raw)
    assert parse_head(b'\r\n\r\n') == (None, 4)
    assert parse_head(b'\r\n\r') == (None, 2)


def test_too_many_leading_empty_lines_are_refused():
    assert refusal(b'\r\n' * (MAX_EMPTY_LINES + 1) + WRK_HEAD).status == 400


# -- 3. field syntax ----------------------------------------------------------

@pytest.mark.parametrize('field', [
    b'Content-Length : 3',        # space before the colon
    b'Content-Length\t: 3',
    b'Host : x',
    b' X-Leading: 1',             # obs-fold / leading whitespace
    b'X-Fold: a\r\n b',           # obs-fold
    b'X-Fold: a\r\n\tb',
    b'X Space: 1',
    b': no-name',
    b'no-colon',
    b'X(paren): 1', b'X@at: 1', b'X"quote: 1', b'X/slash: 1', b'X{b: 1',
    b'X[b: 1', b'X=b: 1', b'X,b: 1', b'X;b: 1', b'X?b: 1', b'X\\b: 1',
    b'X\x00: 1', b'X\x07: 1', b'X\x7f: 1', b'X\xe9: 1',
    b'X-Nul: a\x00b', b'X-Bel: \x07', b'X-Del: a\x7f', b'X-Esc: \x1b[1m',
    b'X-Vt: a\x0bb', b'X-Ff: a\x0cb', b'X-Us: \x1f',
    b'Content-Length: \x0b3', b'Content-Length: 3\x0c',
    b'Content-Length: \x0c3\x0b',
    b'Transfer-Encoding: \x0bchunked',
])
def test_invalid_field_lines_are_refused(field):
    raw = request(b'Host: x\r\n' + field + b'\r\n')
    assert refusal(raw).status == 400
    assert first_result(raw) == ('error', 400)


def test_more_than_the_maximum_of_fields_is_431():
    fields = b'Host: x\r\n' + b''.join(
        b'X-%d: v\r\n' % index for index in range(MAX_FIELDS - 1))
    head, _ = head_of(request(fields))
    assert len(head.headers) == MAX_FIELDS
    assert refusal(request(fields + b'X-Last: v\r\n')).status == 431
    # repeated names count too
    assert refusal(request(b'Host: x\r\n' + b'A: 1\r\n' * MAX_FIELDS)
                   ).status == 431
    assert refusal(request(b'Host: x\r\nA: 1\r\nB: 2\r\n'),
                   max_fields=2).status == 431


def test_a_head_over_the_size_limit_is_431():
    base = request(b'Host: x\r\nX-Pad: \r\n')
    pad = MAX_HEAD_SIZE - len(base)
    exact = request(b'Host: x\r\nX-Pad: ' + b'p' * pad + b'\r\n')
    assert len(exact) == MAX_HEAD_SIZE
    head_of(exact)
    over = request(b'Host: x\r\nX-Pad: ' + b'p' * (pad + 1) + b'\r\n')
    assert refusal(over).status == 431
    # incomplete but already too long: refused without waiting for the end
    assert refusal(over[:MAX_HEAD_SIZE + 10]).status == 431
    assert refusal(b'GET / HTTP/1.1\r\nX: ' + b'a' * 100,
                   max_size=64).status == 431


def test_leading_empty_lines_count_towards_the_size_limit():
    raw = b'\r\n' * 4 + WRK_HEAD
    assert refusal(raw, max_size=len(raw) - 1).status == 431
    head_of(raw, max_size=len(raw))


# -- Content-Length -----------------------------------------------------------

@pytest.mark.parametrize('value, expected', [
    (b'0', 0), (b'3', 3), (b'007', 7), (b'1048576', 1048576),
])
def test_valid_content_length(value, expected):
    head, _ = head_of(request(b'Host: x\r\nContent-Length: ' + value + b'\r\n',
                              b'POST / HTTP/1.1'))
    assert head.content_length == expected
    assert head.has_body == bool(expected)


@pytest.mark.parametrize('value', [
    b'+3', b'-3', b'0x3', b'3.0', b'3e2', b'3 3', b'3,3', b'3, 3', b'',
    b'\xb2', b'\xb9', b'three', b'3a', b'1_000',
])
def test_invalid_content_length_is_400(value):
    raw = request(b'Host: x\r\nContent-Length: ' + value + b'\r\n',
                  b'POST / HTTP/1.1')
    assert refusal(raw).status == 400


def test_huge_content_length_is_413():
    raw = request(b'Host: x\r\nContent-Length: ' + b'9' * 40 + b'\r\n',
                  b'POST / HTTP/1.1')
    assert refusal(raw).status == 413


@pytest.mark.parametrize('fields', [
    b'Content-Length: 3\r\nContent-Length: 4\r\n',
    b'Content-Length: 3\r\nContent-Length: 3\r\n',   # identical: refused too
    b'Content-Type: a/b\r\nContent-Type: c/d\r\n',
    b'Content-Type: a/b\r\ncontent-type: a/b\r\n',
    b'Host: y\r\n',
])
def test_repeated_singleton_fields_are_400(fields):
    assert refusal(request(b'Host: x\r\n' + fields, b'POST / HTTP/1.1')
                   ).status == 400


# -- Host ---------------------------------------------------------------------

@pytest.mark.parametrize('value', [
    b'example.com', b'example.com:8080', b'127.0.0.1', b'127.0.0.1:80',
    b'[::1]', b'[::1]:8080', b'[2001:db8::7]', b'[::ffff:192.0.2.1]:1',
    b'[v1.fe80::a+en1]', b'my_host', b'xn--caf-dma.example', b'%41.com',
    b'localhost:', b'',
])
def test_valid_host(value):
    head, _ = head_of(request(b'Host: ' + value + b'\r\n'))
    assert head.headers['host'] == value.decode()


@pytest.mark.parametrize('value', [
    b'a b', b'a/b', b'user@host', b'user:pw@host', b'[::1', b'::1',
    b'[zz::1]', b'[1.2.3]', b'host:port', b'host:123456', b'h:1:2',
    b'ex\xe4mple.com', b'a%zz', b'a%4', b'a\\b', b'a"b', b'<a>',
])
def test_invalid_host_is_400(value):
    assert refusal(request(b'Host: ' + value + b'\r\n')).status == 400


def test_host_is_required_once_in_http_1_1():
    assert refusal(request(b'')).status == 400
    assert refusal(request(b'X: 1\r\n')).status == 400
    assert refusal(request(b'Host: x\r\nHost: x\r\n')).status == 400
    assert refusal(request(b'Host: x\r\nHost: y\r\n',
                           b'GET / HTTP/1.0')).status == 400


# -- request line -------------------------------------------------------------

@pytest.mark.parametrize('line', [
    b'GET  / HTTP/1.1', b'GET /  HTTP/1.1', b'GET / HTTP/1.1 ',
    b' GET / HTTP/1.1', b'GET\t/ HTTP/1.1', b'GET /\tHTTP/1.1',
    b'GET / ', b'GET /', b'GET', b'GARBAGE', b'GET / HTTP/1.1 extra',
    b'G(T / HTTP/1.1', b'GE\x00T / HTTP/1.1', b'G\xc9T / HTTP/1.1',
    b'GET / http/1.1', b'GET / HTTP/1.10', b'GET / HTTP/11',
    b'GET / HTTP/1', b'GET / HTTP/1.1.1', b'GET / HTTPS/1.1',
    b'GET / HTTP/a.b', b'GET / HTTP/\xb9.1',
])
def test_malformed_request_line_is_400(line):
    raw = request(line=line)
    assert refusal(raw).status == 400
    assert first_result(raw) == ('error', 400)


@pytest.mark.parametrize('version', [b'HTTP/2.0', b'HTTP/0.9', b'HTTP/1.2',
                                     b'HTTP/3.0', b'HTTP/9.9'])
def test_other_http_versions_are_505(version):
    assert refusal(request(line=b'GET / ' + version)).status == 505


@pytest.mark.parametrize('method', [b'FOO', b'get', b'Get', b'PROPFIND',
                                    b'M-SEARCH', b'BREW'])
def test_unknown_token_methods_are_501(method):
    assert refusal(request(line=method + b' / HTTP/1.1')).status == 501


@pytest.mark.parametrize('method', [b'GET', b'HEAD', b'POST', b'PUT',
                                    b'DELETE', b'PATCH', b'OPTIONS', b'TRACE'])
def test_known_methods(method):
    head, _ = head_of(request(line=method + b' /x HTTP/1.1'))
    assert head.method == method.decode()


def test_connect_is_501():
    assert refusal(request(line=b'CONNECT example.com:443 HTTP/1.1')
                   ).status == 501
    assert refusal(request(line=b'CONNECT / HTTP/1.1')).status == 501


# -- 4. request targets -------------------------------------------------------

@pytest.mark.parametrize('target, url', [
    (b'/', '/'), (b'/a/b?c=d&e', '/a/b?c=d&e'), (b'//double', '//double'),
    (b'/a%20b', '/a%20b'), (b"/!$&'()*+,;=:@-._~", "/!$&'()*+,;=:@-._~"),
    (b'/q?{x}|^`[]<>"\\', '/q?{x}|^`[]<>"\\'),
])
def test_origin_form(target, url):
    head, _ = head_of(request(line=b'GET ' + target + b' HTTP/1.1'))
    assert head.url == url and head.target == target.decode()


@pytest.mark.parametrize('target, url, host', [
    (b'http://example.com/p?q=1', '/p?q=1', 'example.com'),
    (b'http://example.com', '/', 'example.com'),
    (b'https://example.com:8443?x', '/?x', 'example.com:8443'),
    (b'HTTP://Example.COM/A', '/A', 'Example.COM'),
    (b'http://[::1]:80/v6', '/v6', '[::1]:80'),
])
def test_absolute_form_serves_its_path_and_replaces_host(target, url, host):
    head, _ = head_of(request(b'Host: other\r\n',
                              b'GET ' + target + b' HTTP/1.1'))
    assert head.url == url
    assert head.headers['host'] == host


@pytest.mark.parametrize('target', [
    b'*', b'example.com:80', b'example.com', b'foo/bar', b'foo', b'?q',
    b'ftp://example.com/', b'http:/example.com/', b'http://', b'http:///p',
    b'http://user@example.com/', b'http://:80/', b'http://a b/',
    b'http://ex%zz/', b'/a#frag', b'/#', b'/%zz', b'/%4', b'/%', b'/a%g0',
    b'/caf\xc3\xa9', b'/\x7f', b'/a\x00',
])
def test_invalid_targets_are_400(target):
    raw = request(line=b'GET ' + target + b' HTTP/1.1')
    assert refusal(raw).status == 400


def test_asterisk_form_is_for_options_only():
    head, _ = head_of(request(line=b'OPTIONS * HTTP/1.1'))
    assert head.url == '*'
    assert refusal(request(line=b'GET * HTTP/1.1')).status == 400
    assert refusal(request(line=b'POST * HTTP/1.1')).status == 400
    assert refusal(request(line=b'OPTIONS ** HTTP/1.1')).status == 400


# -- 5. Transfer-Encoding -----------------------------------------------------

@pytest.mark.parametrize('value', [b'chunked', b'Chunked', b'CHUNKED',
                                   b' chunked ', b', chunked', b'chunked,'])
def test_chunked_transfer_encoding(value):
    head, _ = head_of(request(b'Host: x\r\nTransfer-Encoding: ' + value
                              + b'\r\n', b'POST / HTTP/1.1'))
    assert head.chunked and head.content_length is None and head.has_body


@pytest.mark.parametrize('fields, status', [
    (b'Transfer-Encoding: gzip, chunked\r\n', 501),
    (b'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n', 501),
    (b'Transfer-Encoding: x-custom, chunked\r\n', 501),
    (b'Transfer-Encoding: chunked, gzip\r\n', 400),
    (b'Transfer-Encoding: gzip\r\n', 400),
    (b'Transfer-Encoding: identity\r\n', 400),
    (b'Transfer-Encoding: \r\n', 400),
    (b'Transfer-Encoding: chunked, chunked\r\n', 400),
    (b'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n', 400),
    (b'Transfer-Encoding: chunked;q=1\r\n', 400),
    (b'Transfer-Encoding: "chunked"\r\n', 400),
    (b'Transfer-Encoding: chunked\r\nContent-Length: 3\r\n', 400),
    (b'Content-Length: 3\r\nTransfer-Encoding: chunked\r\n', 400),
    (b'Content-Length: 0\r\nTransfer-Encoding: chunked\r\n', 400),
])
def test_transfer_encoding_rules(fields, status):
    raw = request(b'Host: x\r\n' + fields, b'POST / HTTP/1.1')
    assert refusal(raw).status == status


def test_transfer_encoding_in_http_1_0_is_400():
    raw = request(b'Transfer-Encoding: chunked\r\n', b'POST / HTTP/1.0')
    assert refusal(raw).status == 400


# -- Expect -------------------------------------------------------------------

def test_expect_100_continue():
    head, _ = head_of(request(
        b'Host: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n',
        b'POST / HTTP/1.1'))
    assert head.expect_continue
    head, _ = head_of(request(
        b'Expect: 100-continue\r\nContent-Length: 3\r\n', b'POST / HTTP/1.0'))
    assert not head.expect_continue      # RFC 9110 §10.1.1: ignored in 1.0
    head, _ = head_of(request(b'Host: x\r\nExpect: something\r\n'))
    assert not head.expect_continue


# -- chunked bodies -----------------------------------------------------------

def decode(raw, max_size=1000, step=None):
    """Decode a whole chunked body, fed all at once or `step` bytes at a
    time (the buffer is trimmed as a connection does); returns
    (body, leftover bytes)."""
    decoder = ChunkedDecoder(max_size)
    buffer = bytearray()
    pieces = [raw] if step is None else [
        raw[index:index + step] for index in range(0, len(raw), step)]
    for index, piece in enumerate(pieces):
        buffer += piece
        used = decoder.feed(buffer)
        del buffer[:used]
        if decoder.done:
            break
    assert decoder.done, (raw, bytes(decoder.body))
    return bytes(decoder.body), bytes(buffer) + b''.join(pieces[index + 1:])


def decode_error(raw, max_size=1000):
    """The status a chunked body is refused with, fed whole and byte by
    byte (the same either way)."""
    statuses = set()
    for step in (None, 1):
        decoder = ChunkedDecoder(max_size)
        buffer = bytearray()
        pieces = [raw] if step is None else [bytes([b]) for b in raw]
        with pytest.raises(ProtocolError) as info:
            for piece in pieces:
                buffer += piece
                del buffer[:decoder.feed(buffer)]
                assert not decoder.done
        statuses.add(info.value.status)
    assert len(statuses) == 1, statuses
    return statuses.pop()


@pytest.mark.parametrize('step', [None, 1, 2, 3, 7])
def test_chunked_body_decodes_whole_or_in_pieces(step):
    raw = b'5\r\nhello\r\n1\r\n \r\nA\r\nworld!!!!!\r\n0\r\n\r\nGET /next'
    body, rest = decode(raw, step=step)
    assert body == b'hello world!!!!!'
    assert rest == b'GET /next'


@pytest.mark.parametrize('raw, body', [
    (b'0\r\n\r\n', b''),
    (b'000\r\n\r\n', b''),
    (b'a\r\n0123456789\r\n0\r\n\r\n', b'0123456789'),
    (b'A\r\n0123456789\r\n0\r\n\r\n', b'0123456789'),
    (b'00003\r\nabc\r\n0\r\n\r\n', b'abc'),
    (b'3;name\r\nabc\r\n0\r\n\r\n', b'abc'),
    (b'3;name=value;other=x\r\nabc\r\n0;last\r\n\r\n', b'abc'),
    (b'3;n="quoted; \\"str\\" \xe9"\r\nabc\r\n0\r\n\r\n', b'abc'),
    (b'3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: caf\xc3\xa9\r\n\r\n',
     b'abc'),
    (b'3\r\n\r\n\r\r\n0\r\n\r\n', b'\r\n\r'),       # data looking like lines
])
def test_chunked_grammar(raw, body):
    assert decode(raw) == (body, b'')
    assert decode(raw, step=1) == (body, b'')


def test_chunked_waits_for_the_final_empty_line():
    decoder = ChunkedDecoder(100)
    raw = b'3\r\nabc\r\n0\r\n'
    assert decoder.feed(raw) == len(raw) and not decoder.done
    assert decoder.feed(b'X-T: 1\r\n') == 8 and not decoder.done
    assert decoder.feed(b'\r\nrest') == 2 and decoder.done
    assert decoder.feed(b'more') == 0


@pytest.mark.parametrize('line', [
    b'', b'-1', b'+1', b'0x1', b' 1', b'1 ', b'1\t', b'\t1', b'g', b'1g',
    b'1_0', b'1.0', b'1' * 17, b'\xb9', b'1;', b'1;=v', b'1;a=', b'1;a b',
    b'1 ;a', b'1; a', b'1;a =b', b'1;a= b', b'1;a="open', b'1;a="x"y',
    b'1;a=b\x00', b'1;a="\x00"', b'1;a="\x7f"', b'1;a,b', b'1;a=b=c',
    b'1;a="\\\x01"',
])
def test_invalid_chunk_size_lines_are_400(line):
    assert decode_error(line + b'\r\nx\r\n0\r\n\r\n') == 400


@pytest.mark.parametrize('raw', [
    b'3\r\nabcX\r\n0\r\n\r\n',          # data longer than its size
    b'3\r\nabc\n0\r\n\r\n',             # bare LF after data
    b'3\r\nabc\r0\r\n\r\n',             # bare CR after data
    b'3\nabc\r\n0\r\n\r\n',             # bare LF after the size
    b'3\rabc\r\n0\r\n\r\n',             # bare CR after the size
    b'3;a\nb\r\nabc\r\n0\r\n\r\n',     # LF inside an extension
    b'3;a\rb\r\nabc\r\n0\r\n\r\n',     # CR inside an extension
    b'3\r\nabc\r\n0\r\n\n',             # bare LF as the last line
    b'3\r\nabc\r\n0\n\r\n',
    b'3\r\nabc\r\n0\r\nX: 1\n\r\n',    # bare LF in a trailer
    b'3\r\nabc\r\n0\r\nX : 1\r\n\r\n',  # trailer field syntax
    b'3\r\nabc\r\n0\r\n X: 1\r\n\r\n',
    b'3\r\nabc\r\n0\r\nX: \x01\r\n\r\n',
    b'3\r\nabc\r\n0\r\nno-colon\r\n\r\n',
    b'3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n',   # framing in trailer
    b'3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n',
    b'3\r\nabc\r\n0\r\nHost: y\r\n\r\n',
])
def test_chunk_framing_errors_are_400(raw):
    assert decode_error(raw) == 400


def test_chunked_body_over_the_limit_is_413():
    # the declared size is enough: no need to receive the data
    decoder = ChunkedDecoder(10)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b'b\r\n')
    assert info.value.status == 413
    assert decode_error(b'5\r\n12345\r\n6\r\n123456\r\n0\r\n\r\n',
                        max_size=10) == 413
    assert decode(b'5\r\n12345\r\n5\r\n12345\r\n0\r\n\r\n', max_size=10) == (
        b'1234512345', b'')
    assert decode_error(b'f' * 16 + b'\r\n', max_size=10) == 413


def test_chunk_size_line_is_bounded():
    extension = b';a=' + b'b' * MAX_CHUNK_LINE
    assert decode_error(b'1' + extension + b'\r\nx\r\n0\r\n\r\n') == 400
    decoder = ChunkedDecoder(100)
    with pytest.raises(ProtocolError):   # refused before the line ends
        decoder.feed(b'1' + extension)


def test_tiny_chunks_cannot_outgrow_their_data():
    # 5 bytes of framing per byte of data
    raw = b'1\r\nx\r\n' * (FRAMING_ALLOWANCE // 4 + 10) + b'0\r\n\r\n'
    assert decode_error(raw, max_size=10 ** 6) == 400
    # small but sensible chunks pass
    raw = b'14\r\n' + b'y' * 20 + b'\r\n'
    body, _ = decode(raw * 5000 + b'0\r\n\r\n', max_size=10 ** 6)
    assert body == b'y' * 100_000


def test_trailer_limits():
    many = b''.join(b'X-%d: v\r\n' % index for index in range(MAX_FIELDS + 1))
    assert decode_error(b'0\r\n' + many + b'\r\n') == 431
    big = b'X-Big: ' + b'b' * MAX_HEAD_SIZE + b'\r\n'
    assert decode_error(b'0\r\n' + big + b'\r\n') == 431
