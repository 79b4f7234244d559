"""CPU cost of building a response: uhttp.workers.framing vs uhttp-server.

A typical JSON answer (`{"id": 1}`) with 1 header and with 8 headers is
built over and over with timeit, in one process, and the best of several
repeats is printed in microseconds per call:

- `framing.encode_response`: status line, checks, framing, Date, body.
- uhttp-server's header building, as `HttpConnection.respond()` does it
  before writing (`_prepare_response` + `encode_response_data` +
  `_build_response_header` + UTF-8 encoding), on a connection object that
  never touches its socket.
- the whole write path on a real socketpair: uhttp-server's `respond()`
  (building, send buffer, send(), keep-alive reset) against
  `encode_response` + `sock.send()` of its bytes; the peer is drained.

Run:  .venv/bin/python benchmarks/framing_cost.py [--number 20000] [--repeat 5]
"""

import argparse
import os
import socket
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position,protected-access
from uhttp import server as _server  # noqa: E402
from uhttp.workers import framing  # noqa: E402

BODY = b'{"id": 1}'
HEADERS_1 = {'content-type': 'application/json'}
HEADERS_8 = {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'x-request-id': '7f3c2a9e-52b1-4c1e-9d0a-6b1f0c8e4a21',
    'set-cookie': 'session=abc123; Path=/; HttpOnly; SameSite=Lax',
    'etag': '"5d8c72a5edda8d6a"',
    'vary': 'accept-encoding',
    'x-frame-options': 'DENY',
    'access-control-allow-origin': '*',
}


class _Server:
    """What an HttpConnection needs of its server here: nothing real."""

    _selector = None

    def remove_connection(self, connection):
        """HttpConnection.close() calls this."""


def _request_state(connection):
    """Make a connection look as if it had read an HTTP/1.1 request."""
    connection._protocol = 'HTTP/1.1'
    connection._headers = {}
    connection._response_started = False


def uhttp_builder(headers):
    """A callable doing uhttp-server's building steps of respond()."""
    connection = _server.HttpConnection(_Server(), None, ('127.0.0.1', 1))

    def build():
        _request_state(connection)
        out = connection._prepare_response(dict(headers))
        data = _server.encode_response_data(out, BODY)
        head = connection._build_response_header(200, headers=out)
        return head.encode('utf-8') + data
    return build


def framing_builder(headers):
    """A callable building the same answer with framing.encode_response."""
    def build():
        return framing.encode_response(200, headers, BODY, keep_alive=True)
    return build


class _Drain:
    """Reads what a socketpair's writer sent, every `every` calls."""

    def __init__(self, reader, every=64):
        self.reader = reader
        self.every = every
        self.count = 0

    def __call__(self):
        self.count += 1
        if self.count % self.every == 0:
            try:
                while self.reader.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass


def uhttp_respond(headers, writer, reader):
    """uhttp-server's respond() on a real socket, peer drained."""
    connection = _server.HttpConnection(_Server(), writer, ('127.0.0.1', 1))
    drain = _Drain(reader)

    def respond():
        _request_state(connection)
        connection.respond(data=BODY, status=200, headers=dict(headers))
        drain()
    return respond


def framing_send(headers, writer, reader):
    """encode_response and one send() of its bytes, peer drained."""
    drain = _Drain(reader)

    def respond():
        writer.send(framing.encode_response(
            200, headers, BODY, keep_alive=True))
        drain()
    return respond


def best_us(func, number, repeat):
    """Best time of `repeat` runs of `number` calls, in µs per call."""
    func()  # warm caches (status lines, validated names, Date)
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--number', type=int, default=20000)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    # both answers must frame the same body the same way before timing them
    for headers in (HEADERS_1, HEADERS_8):
        ours = framing_builder(headers)()
        theirs = uhttp_builder(headers)()
        assert ours.endswith(BODY) and theirs.endswith(BODY)
        assert b'content-length: 9\r\n' in ours
        assert b'content-length: 9\r\n' in theirs
    print(f'µs per call, best of {args.repeat} x {args.number} '
          f'(Python {sys.version.split()[0]})')
    print(f'{"":46}{"1 header":>10}{"8 headers":>11}')
    rows = [('uhttp-server header building (respond, no I/O)', uhttp_builder),
            ('framing.encode_response', framing_builder)]
    for label, make in rows:
        cells = [best_us(make(h), args.number, args.repeat)
                 for h in (HEADERS_1, HEADERS_8)]
        print(f'{label:46}{cells[0]:10.2f}{cells[1]:11.2f}')
    for label, make in (('uhttp-server respond() + send on socketpair',
                         uhttp_respond),
                        ('encode_response + send on socketpair',
                         framing_send)):
        cells = []
        for headers in (HEADERS_1, HEADERS_8):
            writer, reader = socket.socketpair()
            writer.setblocking(False)
            reader.setblocking(False)
            try:
                cells.append(best_us(make(headers, writer, reader),
                                     args.number, args.repeat))
            finally:
                writer.close()
                reader.close()
        print(f'{label:46}{cells[0]:10.2f}{cells[1]:11.2f}')


if __name__ == '__main__':
    main()
