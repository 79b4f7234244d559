"""WebSocket benchmark app for uhttp.workers (this checkout).

The same endpoints as ws_asgi_app.py, with the project's default options
(only `shutdown_timeout` is set, 5 s as every benchmark server gets):

  GET /health          @sync: {"status": "ok"}
  GET /monitor         @sync: pending count and pool statuses (readiness)
  GET /api/item/{id}   pool: {"id": id} (the harness's readiness probe)
  WS  /ws/echo         every message is sent back as it came (text or bytes)
  WS  /ws/fan          a listener: greeted with {"worker": pid}, joined to
                       the group "fan"
  WS  /ws/fire         greeted with {"worker": pid}; each message it sends is
                       broadcast to the group "fan": one message to the
                       dispatcher, which writes it to every listener,
                       whichever worker holds it

Run: python ws_workers_app.py --port 18090 --workers 2
"""

import argparse
import json
import os

import uhttp.workers as _workers

FAN_GROUP = 'fan'


def greet(conn):
    """Tell the client which worker process holds its connection."""
    conn.send(json.dumps({'worker': os.getpid()}))


class WsBenchWorker(_workers.Worker):
    """The pool route and the three WebSocket routes."""

    @_workers.api('/api/item/{id:int}', 'GET')
    def item(self, request):
        return {'id': request.path_params['id']}

    @_workers.ws('/ws/echo')
    class Echo(_workers.WebSocketHandler):
        """Sends each message back."""

        def on_message(self, conn, data):
            conn.send(data)

    @_workers.ws('/ws/fan')
    class Fan(_workers.WebSocketHandler):
        """A listener of the broadcasts."""

        def on_open(self, conn):
            greet(conn)
            conn.join(FAN_GROUP)

    @_workers.ws('/ws/fire')
    class Fire(_workers.WebSocketHandler):
        """Broadcasts each message it receives to the listeners."""

        def on_open(self, conn):
            greet(conn)

        def on_message(self, conn, data):
            self.ws_broadcast(data, group=FAN_GROUP)


class WsBenchDispatcher(_workers.Dispatcher):
    """/health and /monitor in the dispatcher."""

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond({'pending': len(self._pending),
                        'pools': [pool.status() for pool in self._pools]})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, default=18090)
    parser.add_argument('--address', default='127.0.0.1')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--shutdown-timeout', type=float, default=5)
    args = parser.parse_args()
    WsBenchDispatcher(
        port=args.port, address=args.address,
        pools=[_workers.WorkerPool(WsBenchWorker, num_workers=args.workers,
                                   routes=['/api/**', '/ws/**'])],
        shutdown_timeout=args.shutdown_timeout).run()


if __name__ == '__main__':
    main()
