"""A tiny HTTP server run through uhttp.workers.SingleServer by
tests/test_singleserver_compat.py.

argv: --host HOST --port N, or --socket PATH. Routes (any method):
  /health        200 {"ok": true}
  /status/<n>    answers status n
  /slow          sleeps 5 s, then answers 200
  anything else  200 {"pid", "method", "path", "body", "content_type",
                 "argv"}, plus an "X-Echo-Method" header
"""

import http.server
import json
import os
import socket
import socketserver
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json; charset=utf-8')
        self.send_header('Content-Length', str(len(body)))
        self.send_header('X-Echo-Method', self.command)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _answer(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length).decode('utf-8', 'replace')
        if self.path == '/health':
            self._send(200, {'ok': True})
        elif self.path.startswith('/status/'):
            self._send(int(self.path.split('/')[2]), {'status': True})
        elif self.path == '/slow':
            time.sleep(5)
            self._send(200, {'slow': True})
        else:
            self._send(200, {
                'pid': os.getpid(), 'method': self.command, 'path': self.path,
                'body': body, 'argv': sys.argv[1:],
                'content_type': self.headers.get('Content-Type')})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def address_string(self):
        return 'local'

    def log_message(self, *args):  # quiet
        pass


class UnixServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self):
        if os.path.exists(self.server_address):
            os.unlink(self.server_address)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = 'localhost', 0


def main():
    options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    if '--socket' in options:
        server = UnixServer(options['--socket'], Handler)
    else:
        server = http.server.ThreadingHTTPServer(
            (options['--host'], int(options['--port'])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == '__main__':
    main()
