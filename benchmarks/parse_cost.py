"""What does strict request parsing cost the dispatcher? A micro-benchmark.

Times, per request head, in this process and without sockets:
- uhttp-server's own parsing: `HttpConnection._read_headers()` (find the
  end of the head, split lines, parse request line, fields, URL);
- this project's: `Connection._read_head()` (http11.parse_head, then the
  same connection fields filled, URL parsed by uhttp-server's parse_url);
- `http11.parse_head()` alone.
Both connections are reset and given the head in a fresh buffer before each
parse (that part is timed too, and shown on its own line). The socket read
is replaced by a no-op on both: only parsing is measured.

Heads: the one wrk sends, and a browser-like one of 10 fields.

Run:  python benchmarks/parse_cost.py [--number 20000] [--repeat 7]
"""

import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from uhttp import server as _server  # noqa: E402
from uhttp.workers import http11  # noqa: E402
from uhttp.workers.connection import Connection  # noqa: E402

HEADS = {
    'wrk (Host only)': (
        b'GET /api/item/1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n'),
    'browser (10 fields)': (
        b'GET /static/app.js?v=3&lang=en HTTP/1.1\r\n'
        b'Host: example.com\r\n'
        b'User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) '
        b'Gecko/20100101 Firefox/128.0\r\n'
        b'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,'
        b'*/*;q=0.8\r\n'
        b'Accept-Language: en-US,en;q=0.5\r\n'
        b'Accept-Encoding: gzip, deflate, br, zstd\r\n'
        b'Connection: keep-alive\r\n'
        b'Cookie: session=0123456789abcdef; theme=dark\r\n'
        b'Upgrade-Insecure-Requests: 1\r\n'
        b'Sec-Fetch-Dest: document\r\n'
        b'Sec-Fetch-Mode: navigate\r\n'
        b'\r\n'),
}


class _NoServer:
    """What a connection asks of its server while parsing a head."""
    event_mode = False
    _trusted_proxies = None

    def remove_connection(self, connection):
        """Called when a connection is closed (here: garbage collected)."""


def _connection(cls):
    connection = cls(_NoServer(), None, ('127.0.0.1', 1))
    connection._recv_to_buffer = lambda size: None  # parsing only
    return connection


def _check(uhttp_conn, own_conn, raw):
    """Both parsers must agree on what they parsed, or timing is moot."""
    for connection, parse in ((uhttp_conn, uhttp_conn._read_headers),
                              (own_conn, own_conn._read_head)):
        connection.reset()
        connection._buffer = bytearray(raw)
        parse()
    for name in ('method', 'path', 'query', 'protocol', 'headers'):
        mine, theirs = getattr(own_conn, name), getattr(uhttp_conn, name)
        assert mine == theirs, (name, mine, theirs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--number', type=int, default=20000)
    parser.add_argument('--repeat', type=int, default=7)
    args = parser.parse_args()
    uhttp_conn = _connection(_server.HttpConnection)
    own_conn = _connection(Connection)

    def per_call(func):
        best = min(timeit.repeat(func, number=args.number,
                                 repeat=args.repeat))
        return best / args.number * 1e6

    print(f'Python {sys.version.split()[0]}, best of {args.repeat} x '
          f'{args.number} calls, µs per head\n')
    print('| head | bytes | uhttp-server 3.2 | Connection (http11) | '
          'parse_head() alone | reset + buffer only |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, raw in HEADS.items():
        _check(uhttp_conn, own_conn, raw)

        def uhttp_parse(raw=raw):
            uhttp_conn.reset()
            uhttp_conn._buffer = bytearray(raw)
            uhttp_conn._read_headers()

        def own_parse(raw=raw):
            own_conn.reset()
            own_conn._buffer = bytearray(raw)
            own_conn._read_head()

        def setup_only(raw=raw):
            own_conn.reset()
            own_conn._buffer = bytearray(raw)

        def parse_head_only(raw=raw):
            http11.parse_head(raw)

        print(f'| {name} | {len(raw)} | {per_call(uhttp_parse):.2f} | '
              f'{per_call(own_parse):.2f} | {per_call(parse_head_only):.2f} '
              f'| {per_call(setup_only):.2f} |')


if __name__ == '__main__':
    main()
