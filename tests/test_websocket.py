"""WebSocket routes end to end: a real dispatcher, real workers, real
sockets (the `websockets` sync client, or a raw socket where a client must
misbehave)."""

import base64
import os
import signal
import socket
import struct

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import pid_alive, wait_until

pytestmark = pytest.mark.timeout(60)


def url(server, path):
    return f'ws://127.0.0.1:{server.port}{path}'


def hello(client):
    """Read the greeting of /ws/echo: (conn id, worker index, pid)."""
    words = dict(part.split('=') for part in
                 client.recv(timeout=10).split()[2:])
    return int(words['worker']), int(words['pid'])


def ws_status(server):
    return server.get('/status').json()['websockets']


def test_text_and_binary_echo(start_server):
    server = start_server('ws_app.py', ready_workers=2)
    with connect(url(server, '/ws/echo?x=1'),
                 user_agent_header='ws-test') as client:
        hello(client)
        client.send('héllo')
        assert client.recv(timeout=10) == 'héllo'
        client.send(b'\x00\xffbinary')
        assert client.recv(timeout=10) == b'\x00\xffbinary'
        client.send('whoami')
        answer = client.recv(timeout=10)
        assert "path=/ws/echo query={'x': '1'} agent=ws-test" in answer
        assert 'remote=127.0.0.1:' in answer
    # one access line when it closed: messages and bytes both ways
    server.wait_log(r'"GET /ws/echo\?x=1 HTTP/1.1" 101 \d+ .* ws:\d+ '
                    r'close=1000 in=3/\d+B out=4/\d+B')
