"""Static files served by the dispatcher, next to a small API.

Run:   python examples/static_site.py       (PORT=8080 by default)
Open:  http://127.0.0.1:8080/static/   (index.html)
       http://127.0.0.1:8080/api/time  (a worker)
"""

import os
import time

import uhttp.workers as _workers

HERE = os.path.dirname(os.path.abspath(__file__))


class TimeWorker(_workers.Worker):
    @_workers.api('/api/time', 'GET')
    def now(self, request):
        return {'time': time.time(), 'worker': self.worker_id}


class SiteDispatcher(_workers.Dispatcher):
    @_workers.sync('/', 'GET')
    def root(self, client, path_params):
        # an explicit empty body: it carries Content-Length: 0
        client.respond(b'', status=302, headers={'location': '/static/'})


def main():
    dispatcher = SiteDispatcher(
        port=int(os.environ.get('PORT', '8080')),
        address=os.environ.get('ADDRESS', '0.0.0.0'),
        static_routes={'/static/': os.path.join(HERE, 'static')},
        pools=[_workers.WorkerPool(TimeWorker, num_workers=2,
                                   routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
