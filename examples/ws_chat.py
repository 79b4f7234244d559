"""A WebSocket chat with rooms, with two workers.

A browser picks a name and a room and opens `/ws/chat/{room}?name=...`.
The worker holding that connection joins it to the group of its room; a
message it receives is broadcast to that group, and the dispatcher, which
owns every client socket, writes it to each member, whichever worker holds
them. The page is a static file served by the dispatcher.

Run:   python examples/ws_chat.py          (PORT=8080 by default)
Open:  http://127.0.0.1:8080/   in two browser windows, same room
"""

import json
import os
import re
import time

import uhttp.workers as _workers

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_MESSAGE = 500
MAX_NAME = 40
ROOM = re.compile(r'^[A-Za-z0-9_-]{1,40}$')


def room_group(room):
    """The broadcast group of a room."""
    return f'room:{room}'


def query_value(query, key, default=''):
    """One value of the query string (the first, when it is repeated)."""
    value = (query or {}).get(key, default)
    if isinstance(value, list):
        value = value[0] if value else default
    return str(value)


class ChatWorker(_workers.Worker):
    """Serves the chat's WebSocket connections."""

    @_workers.ws('/ws/chat/{room}')
    class Room(_workers.WebSocketHandler):
        """One chat room per path; a connection's name is in its query."""

        def on_open(self, conn):
            room = conn.path_params['room']
            if not ROOM.match(room):
                conn.close(1008, 'room names are letters, digits, - and _')
                return
            name = query_value(conn.query, 'name').strip()[:MAX_NAME]
            conn.state['name'] = name or 'anonymous'
            conn.state['room'] = room
            conn.join(room_group(room))
            self.announce(room, f'{conn.state["name"]} joined')

        def on_message(self, conn, data):
            if 'room' not in conn.state:
                return  # refused in on_open; its close is on the way
            if isinstance(data, bytes):
                conn.close(1003, 'text messages only')
                return
            text = data.strip()[:MAX_MESSAGE]
            if text:
                self.ws_broadcast(json.dumps({
                    'from': conn.state['name'], 'text': text,
                    'room': conn.state['room'], 'time': time.time()}),
                    group=room_group(conn.state['room']))

        def on_close(self, conn, code, reason):
            if 'room' in conn.state:
                self.announce(conn.state['room'],
                              f'{conn.state["name"]} left')

        def announce(self, room, text):
            """A message from the server to everyone in `room`."""
            self.ws_broadcast(json.dumps({
                'from': 'server', 'text': text, 'room': room,
                'time': time.time()}), group=room_group(room))


class ChatDispatcher(_workers.Dispatcher):
    """The page and the routes to the chat pool."""

    @_workers.sync('/', 'GET')
    def root(self, client, path_params):
        client.respond(b'', status=302,
                       headers={'location': '/static/ws_chat.html'})


def main():
    dispatcher = ChatDispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        static_routes={'/static/': os.path.join(HERE, 'static')},
        pools=[_workers.WorkerPool(ChatWorker, num_workers=2,
                                   routes=['/ws/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
