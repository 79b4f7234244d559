"""WebSocket routes end to end: a real dispatcher, real workers, real
sockets (the `websockets` sync client, or a raw socket where a client must
misbehave or where hundreds are open at once)."""

import base64
import contextlib
import os
import signal
import socket
import struct
import threading

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(60)


def url(server, path):
    return f'ws://127.0.0.1:{server.port}{path}'


def hello(client):
    """Read the greeting of /ws/echo: (conn id, worker index, pid)."""
    words = client.recv(timeout=10).split()
    fields = dict(part.split('=') for part in words[2:])
    return int(words[1]), int(fields['worker']), int(fields['pid'])


def ws_status(server):
    return server.get('/status').json()['websockets']


def close_code(client):
    """The close code the server sent, once the connection closed."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=10)
    return closed.value.rcvd.code if closed.value.rcvd else None, \
        closed.value.rcvd.reason if closed.value.rcvd else None


class RawWs:
    """A bare WebSocket client on a socket: the handshake, masked frames
    out, frames in. For clients that must misbehave, and for many at once
    without a thread each."""

    def __init__(self, port, path, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(('127.0.0.1', port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f'GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n'
            f'Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n'
            'Sec-WebSocket-Version: 13\r\n\r\n'.encode())
        self.buffer = b''
        while b'\r\n\r\n' not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b'\r\n\r\n', 1)
        assert head.startswith(b'HTTP/1.1 101 '), head

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError('connection closed')
        self.buffer += data

    def _take(self, count):
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, data, opcode=None, fin=True):
        if isinstance(data, str):
            data = data.encode()
            opcode = 1 if opcode is None else opcode
        opcode = 2 if opcode is None else opcode
        mask = os.urandom(4)
        length = len(data)
        head = bytes([(0x80 if fin else 0) | opcode])
        if length < 126:
            head += bytes([0x80 | length])
        elif length < 65536:
            head += bytes([0x80 | 126]) + struct.pack('!H', length)
        else:
            head += bytes([0x80 | 127]) + struct.pack('!Q', length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def frame(self):
        """(opcode, payload) of the next frame."""
        first, second = self._take(2)
        length = second & 0x7f
        if length == 126:
            length = struct.unpack('!H', self._take(2))[0]
        elif length == 127:
            length = struct.unpack('!Q', self._take(8))[0]
        return first & 0x0f, self._take(length)

    def text(self):
        """The next text message (pings skipped)."""
        while True:
            opcode, payload = self.frame()
            if opcode == 1:
                return payload.decode()
            assert opcode == 9, (opcode, payload)

    def close(self):
        self.sock.close()


def test_text_and_binary_echo(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/ws/echo?x=1'),
                 user_agent_header='ws-test') as client:
        conn_id = hello(client)[0]
        client.send('héllo')
        assert client.recv(timeout=10) == 'héllo'
        client.send(b'\x00\xffbinary')
        assert client.recv(timeout=10) == b'\x00\xffbinary'
        client.send('mine')
        assert client.recv(timeout=10) == str(conn_id)
        client.send('whoami')
        answer = client.recv(timeout=10)
        assert "path=/ws/echo query={'x': '1'} agent=ws-test" in answer
        assert 'remote=127.0.0.1:' in answer
    # one access line when it closed: messages and bytes both ways
    server.wait_log(r'"GET /ws/echo\?x=1 HTTP/1.1" 101 \d+ .* ws:\d+ '
                    r'close=1000 in=4/\d+B out=5/\d+B')


def test_fragmented_and_large_messages(start_server):
    server = start_server('ws_app.py', ready_workers=1,
                          env={'WS_MAX_MESSAGE': str(256 * 1024)})
    with connect(url(server, '/ws/echo'), max_size=None) as client:
        hello(client)
        client.send(['frag', 'men', 'ted'])      # three frames, one message
        assert client.recv(timeout=10) == 'fragmented'
        client.send([b'\x01' * 70000, b'\x02' * 70000])
        assert client.recv(timeout=10) == b'\x01' * 70000 + b'\x02' * 70000
        big = os.urandom(256 * 1024)             # exactly the limit
        client.send(big)
        assert client.recv(timeout=10) == big
        client.send(b'x' * (256 * 1024 + 1))     # one byte too many
        assert close_code(client)[0] == 1009
    # the connection ended once, and its worker heard it
    wait_until(lambda: ws_status(server)['open'] == 0)


def test_fragments_over_the_limit_close_1009(start_server):
    server = start_server('ws_app.py', ready_workers=1,
                          env={'WS_MAX_MESSAGE': '100000'})
    client = RawWs(server.port, '/ws/echo')
    assert client.text().startswith('hello')
    client.send(b'a' * 60000, fin=False)
    client.send(b'b' * 60000, opcode=0)      # continuation, fin
    opcode, payload = client.frame()
    assert opcode == 8 and struct.unpack('!H', payload[:2])[0] == 1009
    client.close()


def test_invalid_utf8_closes_1007(start_server):
    server = start_server('ws_app.py', ready_workers=1)
    client = RawWs(server.port, '/ws/echo')
    client.text()
    client.send(b'\xff\xfe', opcode=1)
    opcode, payload = client.frame()
    assert opcode == 8 and struct.unpack('!H', payload[:2])[0] == 1007
    client.close()


def test_client_ping_gets_pong(start_server):
    server = start_server('ws_app.py', ready_workers=1)
    with connect(url(server, '/ws/echo')) as client:
        hello(client)
        pong = client.ping(b'are you there')
        assert pong.wait(10)
        client.send('still here')
        assert client.recv(timeout=10) == 'still here'


def test_server_pings_and_drops_a_dead_peer(start_server):
    server = start_server('ws_app.py', ready_workers=1,
                          env={'WS_PING': '1', 'WS_PONG': '3'})
    # the websockets client answers pings: it stays
    with connect(url(server, '/ws/echo')) as alive:
        hello(alive)
        dead = RawWs(server.port, '/ws/echo')
        assert dead.text().startswith('hello')
        opcode, _ = dead.frame()     # the server's ping; never answered
        assert opcode == 9
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                dead.frame()
        server.wait_log(r'no answer to a ping')
        wait_until(lambda: ws_status(server)['open'] == 1)
        alive.send('after')
        assert alive.recv(timeout=10) == 'after'
    dead.close()


def test_close_codes_both_ways(start_server):
    server = start_server('ws_app.py', ready_workers=1)
    with connect(url(server, '/ws/echo')) as watcher:
        hello(watcher)
        watcher.send('join watchers')
        assert watcher.recv(timeout=10) == 'joined watchers'
        # the client closes: the handler's on_close sees its code, reason
        with connect(url(server, '/ws/echo')) as client:
            conn_id = hello(client)[0]
            client.close(4000, 'bye now')
        assert watcher.recv(timeout=10) == f'closed {conn_id} 4000 bye now'
        # the handler closes with a code and reason: the client sees them
        with connect(url(server, '/ws/echo')) as client:
            conn_id = hello(client)[0]
            client.send('close 4001 done here')
            assert close_code(client) == (4001, 'done here')
        assert watcher.recv(timeout=10) == f'closed {conn_id} 4001 done here'


def test_do_check_rejects_the_upgrade(start_server):
    server = start_server('ws_app.py', ready_workers=1)
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, '/ws/echo'), additional_headers={'x-deny': '1'})
    assert refused.value.response.status_code == 403
    assert b'denied' in refused.value.response.body
    # the worker's do_check runs too, before anything is upgraded
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server, '/ws/echo'),
                additional_headers={'x-worker-deny': '1'})
    assert refused.value.response.status_code == 401
    assert b'worker says no' in refused.value.response.body
    assert ws_status(server)['open'] == 0
    assert server.get('/status').json()['pending'] == 0
    # a path without a @ws route is no WebSocket: the worker answers 404
    with pytest.raises(InvalidStatus) as missing:
        connect(url(server, '/ws/nowhere'))
    assert missing.value.response.status_code == 404


def test_api_handler_route_and_room_broadcast(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/rooms/chat/red')) as first, \
            connect(url(server, '/rooms/chat/red')) as second, \
            connect(url(server, '/rooms/chat/blue')) as other:
        for client, room in ((first, 'red'), (second, 'red'),
                             (other, 'blue')):
            assert client.recv(timeout=10) == f'welcome {room}'
        first.send('to red')
        assert first.recv(timeout=10) == 'to red'
        assert second.recv(timeout=10) == 'to red'
        other.send('to blue')
        assert other.recv(timeout=10) == 'to blue'
        with pytest.raises(TimeoutError):
            second.recv(timeout=0.3)     # blue's message never came here


def test_broadcast_to_500_connections_on_two_workers(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    clients, workers = [], set()
    try:
        for _ in range(500):
            client = RawWs(server.port, '/ws/echo')
            clients.append(client)
        for client in clients:
            words = client.text().split()
            workers.add(words[2])
            client.send('join everyone')
        for client in clients:
            assert client.text() == 'joined everyone'
        assert workers == {'worker=0', 'worker=1'}
        assert ws_status(server)['open'] == 500
        clients[0].send('broadcast everyone hello all')
        for client in clients:
            assert client.text() == 'hello all'
        metrics = server.get('/metrics').body.decode()
        assert 'uhttp_websocket_connections 500.0' in metrics
        assert 'uhttp_websocket_messages_total{direction="out"}' in metrics
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: ws_status(server)['open'] == 0, timeout=20)


def test_worker_killed_closes_its_connections_1011(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url(server, '/ws/echo')))
                   for _ in range(4)]
        pinned = [hello(client) for client in clients]
        victim_pid = pinned[0][2]
        victims = [c for c, p in zip(clients, pinned) if p[2] == victim_pid]
        others = [c for c, p in zip(clients, pinned) if p[2] != victim_pid]
        assert victims and others       # spread over both workers
        os.kill(victim_pid, signal.SIGKILL)
        for client in victims:
            assert close_code(client)[0] == 1011
        for client in others:
            client.send('unaffected')
            assert client.recv(timeout=10) == 'unaffected'
        wait_until(lambda: not pid_alive(victim_pid))
        # the pool recovers: a new worker, new connections served
        wait_until(lambda: server.count_log(r'worker .* ready') >= 3,
                   timeout=20)
        with connect(url(server, '/ws/echo')) as fresh:
            hello(fresh)
            fresh.send('fresh')
            assert fresh.recv(timeout=10) == 'fresh'


def test_a_client_that_never_reads_is_dropped(start_server):
    limit = 256 * 1024
    server = start_server('ws_app.py', ready_workers=2,
                          env={'WS_SEND_BUFFER': str(limit)})
    with connect(url(server, '/ws/echo')) as good:
        hello(good)
        slow = RawWs(server.port, '/ws/echo', rcvbuf=4096)
        assert slow.text().startswith('hello')
        # 64 MiB asked for; it never reads a byte of it
        slow.send('flood 1024 65536')
        server.wait_log(r'the client does not read .*: dropped')
        wait_until(lambda: ws_status(server)['open'] == 1)
        status = ws_status(server)
        assert status['buffered_bytes'] <= limit + 65536
        good.send('served')
        assert good.recv(timeout=10) == 'served'
    # what reached its socket before the drop, then the end
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            slow.frame()
    slow.close()


def test_graceful_shutdown_closes_1001(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url(server, '/ws/echo')))
                   for _ in range(3)]
        for client in clients:
            hello(client)
        server.signal(signal.SIGTERM)
        for client in clients:
            assert close_code(client)[0] == 1001
    assert server.wait_exit() == 0


def test_rolling_restart_closes_1012(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/ws/echo')) as client:
        hello(client)
        server.signal(signal.SIGHUP)
        assert close_code(client)[0] == 1012
    wait_until(lambda: server.count_log(r'worker .* ready') >= 4, timeout=30)
    with connect(url(server, '/ws/echo')) as client:
        hello(client)
        client.send('after restart')
        assert client.recv(timeout=10) == 'after restart'


def test_a_client_faster_than_its_handler_is_paused_not_buffered(
        start_server):
    server = start_server('ws_app.py', ready_workers=1)
    with connect(url(server, '/ws/echo'), max_queue=None) as client:
        hello(client)
        client.send('sleep 6')     # its handler is busy for a while
        block = b'z' * 65536

        def flood():
            # 24 MiB: six times what the dispatcher queues for one worker;
            # these sends block once the dispatcher stops reading
            for _ in range(384):
                client.send(block)
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        # the dispatcher stopped reading it (TCP holds the rest back)
        wait_until(lambda: ws_status(server)['paused'] == 1, timeout=20)
        sender.join(40)
        assert not sender.is_alive()
        # and it read again once the worker caught up: nothing was lost
        client.send('count')
        assert client.recv(timeout=30) == 'count 386'
        assert ws_status(server)['paused'] == 0


def test_idle_connection_is_closed(start_server):
    server = start_server('ws_app.py', ready_workers=1,
                          env={'WS_IDLE': '1'})
    with connect(url(server, '/ws/echo')) as client:
        hello(client)
        assert close_code(client) == (1000, 'idle timeout')
    wait_until(lambda: ws_status(server)['open'] == 0)


def test_collect_ws_routes_of_worker_and_handlers():
    from uhttp.workers.websocket import collect_ws_routes, ws
    import uhttp.workers as _workers

    class Handler(_workers.ApiHandler):
        PATTERN = '/h'

        @ws('/feed/{name}')
        class Feed(_workers.WebSocketHandler):
            pass

    class App(_workers.Worker):
        HANDLERS = [Handler]

        @ws('/own')
        class Own:
            pass

    class Child(App):
        Own = None     # overridden: no longer a route

    assert sorted(collect_ws_routes(App), key=str) == sorted(
        [('/own', None, 'Own'), ('/h/feed/{name}', Handler, 'Feed')],
        key=str)
    assert collect_ws_routes(Child) == [('/h/feed/{name}', Handler, 'Feed')]
    with pytest.raises(TypeError):
        ws('/x')(lambda conn: None)
    with pytest.raises(ValueError):
        ws('/bad/{1x}')


def test_close_reason_is_cut_to_fit_and_codes_are_checked():
    from uhttp.workers import messages
    from uhttp.workers.websocket import WebSocketConnection, cut_close_reason

    assert len(cut_close_reason('é' * 100).encode()) <= 123
    assert cut_close_reason('é' * 100) == 'é' * 61
    sent = []

    class FakeWorker:     # a unit test of the conn object alone
        def _ws_out(self, message):
            sent.append(message)

    conn = WebSocketConnection(FakeWorker(), 7, '/p', {}, None, None, None)
    conn.close(4000, 'x' * 200)
    assert sent[-1][:3] == (messages.WS_CLOSE, 7, 4000)
    assert len(sent[-1][3]) == 123
    for code in (999, 1005, 1006, 1015, 2999, 5000):
        with pytest.raises(ValueError):
            conn.close(code)


def test_websockets_count_against_max_connections(start_server):
    # 16 is the smallest max_connections the dispatcher runs with
    server = start_server('ws_app.py', ready_workers=2,
                          env={'MAX_CONNECTIONS': '16'})
    clients = []
    try:
        for _ in range(15):
            clients.append(RawWs(server.port, '/ws/echo'))
            assert clients[-1].text().startswith('hello')
        with pytest.raises(InvalidStatus) as refused:
            connect(url(server, '/ws/echo'))
        assert refused.value.response.status_code == 503
        assert ws_status(server)['open'] == 15
        clients.pop().close()
        wait_until(lambda: ws_status(server)['open'] == 14)
        with connect(url(server, '/ws/echo')) as client:
            hello(client)
    finally:
        for client in clients:
            client.close()


def test_broadcast_without_group_reaches_the_whole_pool(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/ws/echo')) as first, \
            connect(url(server, '/ws/echo')) as second, \
            connect(url(server, '/rooms/chat/green')) as room:
        hello(first)
        hello(second)
        assert room.recv(timeout=10) == 'welcome green'
        first.send('broadcast  to everyone')     # empty group: None
        for client in (first, second, room):
            assert client.recv(timeout=10) == 'to everyone'


def test_fast_unmasking_matches_uhttp_server():
    from uhttp import server as uhttp_server
    from uhttp.workers.ws_dispatch import _close_payload, _fast_demask

    class Buffered:
        def __init__(self, data, mask, offset):
            self._buffer = bytearray(data + b'next frame')
            self._ws_frame_mask = mask
            self._ws_frame_mask_offset = offset

    for length in (0, 1, 3, 4, 5, 126, 65535, 65536, 100003):
        for offset in range(4):
            data, mask = os.urandom(length), os.urandom(4)
            slow, fast = Buffered(data, mask, offset), \
                Buffered(data, mask, offset)
            expected = uhttp_server._WsFrameMixin._ws_demask(slow, length)
            assert _fast_demask(fast, length) == expected
            assert fast._buffer == slow._buffer == bytearray(b'next frame')
            assert fast._ws_frame_mask_offset == slow._ws_frame_mask_offset
    assert _close_payload(None) == (1005, '')
    assert _close_payload(b'\x0f\xa0bye') == (4000, 'bye')


def test_messages_keep_their_order_on_their_worker(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/ws/echo')) as client:
        pid = hello(client)[2]
        for number in range(300):       # sent without waiting for answers
            client.send(f'n{number}')
            if number % 100 == 0:
                client.send('whoami')
        answers = [client.recv(timeout=10) for _ in range(303)]
    numbers = [a for a in answers if not a.startswith('worker=')]
    assert numbers == [f'n{number}' for number in range(300)]
    pids = {a.split()[1] for a in answers if a.startswith('worker=')}
    assert pids == {f'pid={pid}'}       # pinned: one worker served all
