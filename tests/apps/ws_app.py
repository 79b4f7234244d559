"""Test application for WebSocket routes.

Settings from the environment: PORT, ADDRESS, WORKERS, WS_MAX_MESSAGE,
WS_SEND_BUFFER, WS_PING, WS_PONG, WS_IDLE, MAX_CONNECTIONS.

/ws/echo: echoes every message (text as text, binary as binary); the text
commands `close <code> <reason>`, `whoami`, `flood <n> <size>`, `join
<group>`, `broadcast <group> <text>` drive the other behaviours.
/rooms/chat/{room}: an ApiHandler route; joins the room, broadcasts what it
is sent to the room.
"""

import os
import sys
import time

import uhttp.workers as _workers

ENV = os.environ


class Echo(_workers.WebSocketHandler):
    def on_open(self, conn):
        conn.send(f'hello {conn.id} worker={self.worker.worker_id} '
                  f'pid={os.getpid()}')

    def on_message(self, conn, data):
        conn.state['count'] = conn.state.get('count', 0) + 1
        if isinstance(data, bytes):
            if not conn.state.get('quiet'):
                conn.send(data)
            return
        command, _, rest = data.partition(' ')
        if command == 'close':
            code, _, reason = rest.partition(' ')
            conn.close(int(code), reason)
        elif command == 'whoami':
            conn.send(f'worker={self.worker.worker_id} pid={os.getpid()} '
                      f'path={conn.path} query={conn.query} '
                      f'agent={conn.headers.get("user-agent")} '
                      f'remote={conn.remote_address}')
        elif command == 'flood':
            count, _, size = rest.partition(' ')
            block = b'x' * int(size)
            for _ in range(int(count)):
                if not conn.send(block):
                    break
        elif command == 'join':
            conn.join(rest)
            conn.send(f'joined {rest}')
        elif command == 'broadcast':
            group, _, text = rest.partition(' ')
            self.ws_broadcast(text, group or None)
        elif command == 'sleep':
            conn.state['quiet'] = True   # binary messages are only counted
            time.sleep(float(rest))
        elif command == 'count':
            conn.send(f'count {conn.state["count"]}')
        elif command == 'mine':
            conn.send(' '.join(str(i) for i in sorted(
                self.worker.ws_connections)))
        elif command == 'len':
            conn.send(str(len(rest)))
        else:
            conn.send(data)

    def on_close(self, conn, code, reason):
        self.worker.closed.append((conn.id, code, reason))
        # the tests watch closes from another connection
        self.ws_broadcast(f'closed {conn.id} {code} {reason}', 'watchers')


class Rooms(_workers.ApiHandler):
    PATTERN = '/rooms'

    @_workers.ws('/chat/{room}')
    class Chat(_workers.WebSocketHandler):
        def on_open(self, conn):
            conn.join(conn.path_params['room'])
            conn.send('welcome ' + conn.path_params['room'])

        def on_message(self, conn, data):
            self.ws_broadcast(data, conn.path_params['room'])


class WsWorker(_workers.Worker):
    HANDLERS = [Rooms]

    echo = _workers.ws('/ws/echo')(Echo)

    def setup(self):
        self.closed = []

    def do_check(self, request):
        if request.headers.get('x-worker-deny'):
            raise _workers.RejectRequest(
                data={'error': 'worker says no', 'path': request.path},
                status=401)

    @_workers.api('/api/closed', 'GET')
    def closed_list(self, request):
        return {'closed': self.closed, 'worker': self.worker_id}

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker': self.worker_id}


class WsDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        if client.headers.get('x-deny'):
            raise _workers.RejectRequest(data={'error': 'denied'},
                                         status=403)

    @_workers.sync('/status')
    def show_status(self, client, path_params):
        client.respond(self.status())


def main():
    optional = {}
    if ENV.get('WS_IDLE'):
        optional['ws_idle_timeout'] = float(ENV['WS_IDLE'])
    dispatcher = WsDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        log_level=_workers.LOG_INFO,
        shutdown_timeout=5,
        max_connections=int(ENV.get('MAX_CONNECTIONS', '10000')),
        metrics_route='/metrics',
        ws_max_message_size=int(ENV.get('WS_MAX_MESSAGE', 1024 * 1024)),
        ws_send_buffer=int(ENV.get('WS_SEND_BUFFER', 1024 * 1024)),
        ws_ping_interval=float(ENV.get('WS_PING', '20')),
        ws_pong_timeout=float(ENV.get('WS_PONG', '20')),
        pools=[_workers.WorkerPool(
            WsWorker, num_workers=int(ENV.get('WORKERS', '2')),
            routes=['/ws/**', '/rooms/**', '/api/**'],
            heartbeat_interval=0.2)],
        **optional)
    dispatcher.run()
    sys.exit(0)


if __name__ == '__main__':
    main()
