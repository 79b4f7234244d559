"""A chat room over Server-Sent Events, with two workers.

Each worker holds the streams of the browsers connected to it; a message
posted to any worker is broadcast to every worker, which sends it to its own
streams. The page is a static file served by the dispatcher.

Run:   python examples/sse_chat.py          (PORT=8080 by default)
Open:  http://127.0.0.1:8080/static/chat.html   in two browser windows
"""

import os
import time

import uhttp.workers as _workers

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_MESSAGE = 500
STREAMS_PER_WORKER = 1000


class ChatWorker(_workers.Worker):
    def setup(self):
        self.listeners = {}
        self.next_event_id = 0

    @_workers.api('/chat/events', 'GET')
    def events(self, request):
        request.response_stream()
        request.send_event({'text': 'connected', 'from': 'server'},
                           event='system', retry=2000)
        self.listeners[request.request_id] = request
        if len(self.listeners) >= STREAMS_PER_WORKER:
            self.pause()  # let the other workers take new listeners
        return _workers.DEFERRED

    def on_disconnect(self, request_id):
        self.listeners.pop(request_id, None)
        if len(self.listeners) < STREAMS_PER_WORKER:
            self.resume()

    @_workers.api('/chat/send', 'POST')
    def send(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        text = str(data.get('text', '')).strip()[:MAX_MESSAGE]
        if not text:
            return {'error': 'empty message'}, 400
        name = str(data.get('from', 'anonymous'))[:40]
        self.broadcast('/chat/internal/publish',
                       {'text': text, 'from': name, 'time': time.time()})
        return {'sent': True}

    @_workers.api('/chat/internal/publish', 'POST')
    def publish(self, request):
        self.next_event_id += 1
        for listener in list(self.listeners.values()):
            listener.send_event(request.data, event='message',
                                event_id=self.next_event_id)
        return None


class ChatDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        # workers broadcast to this path themselves; clients may not
        if client.path.startswith('/chat/internal/'):
            raise _workers.RejectRequest(status=404,
                                         data={'error': 'Not Found'})

    @_workers.sync('/', 'GET')
    def root(self, client, path_params):
        client.respond(b'', status=302,
                       headers={'location': '/static/chat.html'})


def main():
    dispatcher = ChatDispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        static_routes={'/static/': os.path.join(HERE, 'static')},
        pools=[_workers.WorkerPool(ChatWorker, num_workers=2,
                                   routes=['/chat/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
