"""Test application for deferred answers, streams, pause/resume, custom fds,
forwarding and broadcasts. Settings: PORT, ADDRESS, WORKERS, TIMEOUT."""

import os
import time

import uhttp.workers as _workers

ENV = os.environ


class StreamWorker(_workers.Worker):
    def setup(self):
        self.subscribers = {}
        self.disconnected = []
        self.deferred = {}
        self.kept = {}
        self.watched = {}
        self.inbox = []
        self.bulk_done = []
        self.loops_ended = []

    # -- streams ---------------------------------------------------------

    @_workers.api('/sse', 'GET')
    def sse(self, request):
        request.response_stream(headers={'X-Stream': 'yes'})
        self.subscribers[request.request_id] = request
        request.send_event('first line\nsecond line', event='greet',
                           event_id=1, retry=500)
        request.send_event({'json': True})
        request.send_chunk(': comment\n\n')
        return _workers.DEFERRED

    @_workers.api('/ndjson', 'GET')
    def ndjson(self, request):
        request.response_ndjson()
        for number in range(3):
            request.send_ndjson({'n': number})
        request.response_stream_end()
        return None

    @_workers.api('/stream-loop/{count:int}', 'GET')
    def stream_loop(self, request):
        """Stream `count` events from the handler itself, with small sleeps;
        after the first, wait (bounded) for the file named by ?flag= to
        exist: the client creates it once it has received that event."""
        request.response_stream()
        request.send_event({'n': 0})
        flag = request.query['flag']
        deadline = time.monotonic() + 20
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.005)
        request.send_event({'flag_seen': os.path.exists(flag)}, event='flag')
        for number in range(1, request.path_params['count']):
            request.send_event({'n': number})
            time.sleep(0.0002)
        request.response_stream_end()

    @_workers.api('/stream-until-gone', 'GET')
    def stream_until_gone(self, request):
        """Stream from the handler until a send fails (at most 20 s)."""
        request.response_stream()
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and request.send_event({'n': sent}):
            sent += 1
            time.sleep(0.01)
        self.loops_ended.append(request.request_id)
        return None

    @_workers.api('/stream-bulk/{mib:int}', 'GET')
    def stream_bulk(self, request):
        """Stream `mib` MiB in 64 KiB chunks from the handler, then end."""
        request.response_stream(content_type='application/octet-stream')
        block = b'x' * 65536
        for _ in range(request.path_params['mib'] * 16):
            request.send_chunk(block)
        request.response_stream_end()
        self.bulk_done.append(request.request_id)

    @_workers.api('/publish', 'POST')
    def publish(self, request):
        """Fan one event out to the subscribers of every worker."""
        self.broadcast('/internal/publish', request.data)
        return {'published': True}

    @_workers.api('/internal/publish', 'POST')
    def publish_here(self, request):
        self.log.info('broadcast %s reached worker %d', request.data,
                      self.worker_id)
        for subscriber in list(self.subscribers.values()):
            subscriber.send_event(request.data, event='news')
        return {'sent': len(self.subscribers)}

    @_workers.api('/flood/{count:int}', 'POST')
    def flood(self, request):
        """Send `count` 8 KiB events to every local subscriber, at once."""
        block = 'x' * 8192
        results = []
        for subscriber in list(self.subscribers.values()):
            sent = sum(1 for _ in range(request.path_params['count'])
                       if subscriber.send_event(block) is not False)
            results.append(sent)
        return {'sent': results}

    @_workers.api('/end-all', 'POST')
    def end_all(self, request):
        ended = len(self.subscribers)
        for subscriber in list(self.subscribers.values()):
            subscriber.response_stream_end()
        self.subscribers.clear()
        return {'ended': ended}

    @_workers.api('/state', 'GET')
    def state(self, request):
        return {'pid': os.getpid(), 'subscribers': sorted(self.subscribers),
                'disconnected': self.disconnected, 'inbox': self.inbox,
                'accepting': self._accepting, 'bulk_done': self.bulk_done,
                'loops_ended': self.loops_ended}

    def on_disconnect(self, request_id):
        self.disconnected.append(request_id)
        gone = self.subscribers.pop(request_id, None)
        if gone is not None:
            # sending to a stream that is gone is harmless
            gone.send_event('too late')
        self.deferred.pop(request_id, None)
        self.kept.pop(request_id, None)

    # -- deferred answers ------------------------------------------------

    @_workers.api('/defer/{seconds:float}', 'GET')
    def defer(self, request):
        self.deferred[request.request_id] = (
            request, time.monotonic() + request.path_params['seconds'])
        return _workers.DEFERRED

    @_workers.api('/defer-kept/{seconds:float}', 'GET')
    def defer_kept(self, request):
        """Deferred past the pool timeout, kept alive from on_idle."""
        self.kept[request.request_id] = (
            request, time.monotonic() + request.path_params['seconds'])
        return _workers.DEFERRED

    @_workers.api('/answer-twice', 'GET')
    def answer_twice(self, request):
        request.respond({'first': True})
        request.respond({'second': True})
        return {'third': True}

    def on_idle(self):
        now = time.monotonic()
        for request_id, (request, due) in list(self.deferred.items()):
            if now >= due:
                del self.deferred[request_id]
                request.respond({'deferred': request_id, 'pid': os.getpid()})
        for request_id, (request, due) in list(self.kept.items()):
            if now >= due:
                del self.kept[request_id]
                request.respond({'kept': request_id})
            else:
                self.keep_alive(request_id)

    # -- flow control ----------------------------------------------------

    @_workers.api('/pause', 'POST')
    def do_pause(self, request):
        self.pause()
        return {'paused': os.getpid()}

    @_workers.api('/whoami', 'GET')
    def whoami(self, request):
        return {'pid': os.getpid()}

    def on_config(self, config):
        if config.get('resume_all'):
            self.resume()

    # -- custom descriptors ----------------------------------------------

    @_workers.api('/watch', 'POST')
    def watch(self, request):
        """Answer when the FIFO named in the body is written to."""
        fd = os.open(request.data['fifo'], os.O_RDONLY | os.O_NONBLOCK)
        self.watched[fd] = request
        self.register_reader(fd, self.on_fifo)
        return _workers.DEFERRED

    def on_fifo(self, fd):
        data = os.read(fd, 4096)
        self.unregister_reader(fd)
        os.close(fd)
        self.watched.pop(fd).respond({'read': data.decode()})

    # -- forwarding --------------------------------------------------------

    @_workers.api('/forward', 'POST')
    def forward_it(self, request):
        self.forward('/other/inbox', request.data)
        return {'forwarded': True}


class OtherWorker(_workers.Worker):
    def setup(self):
        self.inbox = []

    @_workers.api('/other/inbox', 'POST')
    def inbox_post(self, request):
        self.inbox.append(request.data)
        return {'stored': len(self.inbox)}

    @_workers.api('/other/inbox', 'GET')
    def inbox_get(self, request):
        return {'inbox': self.inbox}


class StreamDispatcher(_workers.Dispatcher):
    @_workers.sync('/status')
    def show_status(self, client, path_params):
        client.respond(self.status())

    @_workers.sync('/dispatcher-watch', 'POST')
    def dispatcher_watch(self, client, path_params):
        fd = os.open(client.data['fifo'], os.O_RDONLY | os.O_NONBLOCK)
        self.register_reader(fd, self.on_fifo)
        client.respond({'watching': fd})

    def on_fifo(self, fd):
        self.fifo_data = os.read(fd, 4096).decode()
        self.unregister_reader(fd)
        os.close(fd)

    @_workers.sync('/dispatcher-read')
    def dispatcher_read(self, client, path_params):
        client.respond({'read': getattr(self, 'fifo_data', None)})

    @_workers.sync('/resume-all', 'POST')
    def resume_all(self, client, path_params):
        self._pools[0].send_config({'resume_all': True})
        client.respond({'ok': True})


def main():
    dispatcher = StreamDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        max_pending=int(ENV.get('MAX_PENDING', '1000')),
        max_connections=int(ENV.get('MAX_CONNECTIONS', '10000')),
        pools=[
            _workers.WorkerPool(
                StreamWorker, num_workers=int(ENV.get('WORKERS', '2')),
                timeout=float(ENV.get('TIMEOUT', '30')),
                heartbeat_interval=0.1, log_level=_workers.LOG_INFO,
                routes=['/sse', '/ndjson', '/stream-loop/**',
                        '/stream-until-gone',
                        '/stream-bulk/**', '/publish', '/internal/**',
                        '/flood/**', '/end-all', '/state', '/defer/**',
                        '/defer-kept/**', '/answer-twice', '/pause',
                        '/whoami', '/watch', '/forward']),
            _workers.WorkerPool(OtherWorker, routes=['/other/**']),
        ],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
