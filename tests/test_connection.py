"""Tests of uhttp.workers.connection in this process, on real sockets.

A `Server` listens on 127.0.0.1 with a selector the test drives by hand
(as the dispatcher does); clients are plain sockets. This checks what the
dispatcher relies on: a non-blocking listener, a request loaded only when
whole, bytes after a request kept for the next one, a refusal that closes.
"""

import selectors
import socket

import pytest

from conftest import parse_response, wait_until

from uhttp.workers.connection import Connection, Server


@pytest.fixture
def server():
    selector = selectors.DefaultSelector()
    instance = Server(address='127.0.0.1', port=0, selector=selector,
                      max_content_length=100, max_waiting_clients=64,
                      listen=64)
    yield instance
    instance.close()
    selector.close()


def connect(server):
    client = socket.create_connection(
        ('127.0.0.1', server.socket.getsockname()[1]), timeout=5)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def accept(server):
    """Run the listener's event once; return the connections."""
    wait_until(lambda: server.selector.select(0.1), 5)
    server.handle_event(server.socket, selectors.EVENT_READ)
    return list(server._waiting_connections)


def load(connection, timeout=5.0):
    """Drive process_request() until it loads a request (True) or
    refuses (None)."""
    results = []

    def step():
        result = connection.process_request()
        results.append(result)
        return result is not False
    wait_until(step, timeout, interval=0.01)
    return results[-1]


def receive(client):
    buffer = bytearray()
    while parse_response(buffer) is None:
        chunk = client.recv(65536)
        assert chunk, f'closed after {bytes(buffer)!r}'
        buffer += chunk
    return parse_response(buffer)


def test_event_mode_is_refused():
    with pytest.raises(ValueError):
        Server(address='127.0.0.1', port=0, event_mode=True)


def test_listener_is_non_blocking_one_accept_per_wake_up(server):
    assert server.socket.gettimeout() == 0.0
    # nothing pending (a connection another process took): no wait
    server.handle_event(server.socket, selectors.EVENT_READ)
    assert server._waiting_connections == []
    clients = [connect(server) for _ in range(3)]
    try:
        for count in (1, 2, 3):
            server.handle_event(server.socket, selectors.EVENT_READ)
            assert len(server._waiting_connections) == count
        assert all(type(c) is Connection for c in server._waiting_connections)
        server.handle_event(server.socket, selectors.EVENT_READ)
        assert len(server._waiting_connections) == 3
    finally:
        for client in clients:
            client.close()


def test_oldest_connection_makes_room_above_the_limit():
    selector = selectors.DefaultSelector()
    server = Server(address='127.0.0.1', port=0, selector=selector,
                    max_waiting_clients=2, listen=8)
    clients = [connect(server) for _ in range(3)]
    try:
        first = accept(server)[0]
        accept(server)
        accept(server)
        assert len(server._waiting_connections) == 2
        assert first not in server._waiting_connections
        assert receive(clients[0])[0] == 408
    finally:
        for client in clients:
            client.close()
        server.close()
        selector.close()


def test_request_is_loaded_only_when_its_body_is_whole(server):
    client = connect(server)
    try:
        (connection,) = accept(server)
        client.sendall(b'POST /a?x=1 HTTP/1.1\r\nHost: h\r\n'
                       b'Content-Type: application/json\r\n'
                       b'Content-Length: 8\r\n\r\n{"a":')
        wait_until(lambda: connection.process_request() is False
                   and connection.method == 'POST', 5)
        assert not connection.is_loaded
        client.sendall(b' 1}')
        assert load(connection) is True
        assert connection.is_loaded
        assert (connection.path, connection.query) == ('/a', {'x': '1'})
        assert connection.headers == {'host': 'h', 'content-length': '8',
                                      'content-type': 'application/json'}
        assert connection.data == {'a': 1}
    finally:
        client.close()


def test_bytes_after_a_request_stay_for_the_next_one(server):
    client = connect(server)
    try:
        (connection,) = accept(server)
        client.sendall(b'POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 3'
                       b'\r\n\r\nabc\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n')
        assert load(connection) is True
        assert connection.data == b'abc'
        assert bytes(connection._buffer) == \
            b'\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n'
        connection.respond(b'first')
        assert receive(client)[0] == 200
        # answered: the connection was reset for the buffered request
        assert connection.method is None
        assert connection.process_request() is True
        assert (connection.method, connection.path) == ('GET', '/two')
        assert connection.data is None and not connection._buffer
    finally:
        client.close()


def test_chunked_body_in_pieces(server):
    client = connect(server)
    try:
        (connection,) = accept(server)
        pieces = [b'POST /c HTTP/1.1\r\nHost: h\r\n', b'Transfer-Encoding: ',
                  b'chunked\r\n\r\n4\r', b'\nwiki\r\n5\r\npedia\r\n0\r\n',
                  b'\r\n']
        for piece in pieces[:-1]:
            client.sendall(piece)
            wait_until(lambda: connection.process_request() is False
                       and not client_pending(client), 5)
        client.sendall(pieces[-1])
        assert load(connection) is True
        assert connection.data == b'wikipedia'
        assert connection.headers['content-length'] == '9'
        assert 'transfer-encoding' not in connection.headers
    finally:
        client.close()


def client_pending(client):
    """True if the server already wrote something (it must not have)."""
    client.setblocking(False)
    try:
        return bool(client.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        client.settimeout(5)


def test_refusal_answers_closes_and_drops_what_followed(server):
    client = connect(server)
    try:
        (connection,) = accept(server)
        client.sendall(b'GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n'
                       b'GET /hidden HTTP/1.1\r\nHost: h\r\n\r\n')
        assert load(connection) is None
        status, headers, body, _ = receive(client)
        assert status == 400 and headers['connection'] == 'close'
        assert b'Bare CR' in body
        assert client.recv(65536) == b''          # closed by the server
        assert connection.socket is None and not connection._buffer
        assert connection not in server._waiting_connections
    finally:
        client.close()


def test_content_length_over_the_limit_is_refused_before_100_continue(server):
    client = connect(server)
    try:
        (connection,) = accept(server)
        client.sendall(b'POST / HTTP/1.1\r\nHost: h\r\n'
                       b'Expect: 100-continue\r\nContent-Length: 101\r\n\r\n')
        assert load(connection) is None
        assert receive(client)[0] == 413
    finally:
        client.close()
