"""The helper server of examples/singleton_service.py: a quote service.

Standard library only. Run by the example as
`python helper_server.py --port N`; answers
  GET /health   {"ok": true}
  GET /quote    {"quote": ..., "helper_pid": ..., "served": n}
"""

import http.server
import itertools
import json
import os
import sys
import threading

QUOTES = [
    'Simple is better than complex.',
    'Errors should never pass silently.',
    'In the face of ambiguity, refuse the temptation to guess.',
    'Now is better than never.',
]


class QuoteHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    counter = itertools.count(1)
    lock = threading.Lock()

    def do_GET(self):  # pylint: disable=invalid-name
        if self.path == '/health':
            self._send(200, {'ok': True})
        elif self.path == '/quote':
            with self.lock:
                served = next(self.counter)
            self._send(200, {'quote': QUOTES[served % len(QUOTES)],
                             'helper_pid': os.getpid(), 'served': served})
        else:
            self._send(404, {'error': 'not found'})

    def _send(self, status, data):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[sys.argv.index('--port') + 1])
    server = http.server.ThreadingHTTPServer(('127.0.0.1', port), QuoteHandler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == '__main__':
    main()
