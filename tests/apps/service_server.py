"""A tiny HTTP server run as a managed service by tests/test_service.py.

Listens on `--port N` (127.0.0.1) or `--socket PATH`. Routes:
  GET /health   200 {"ok": true}, or 500 after POST /sicken
  GET /         {"pid": <this process>}
  POST /echo    the request body, as received
  POST /sicken  make /health fail from now on
Environment: SERVICE_STARTS (a file: a line "<pid>" is appended at each
start), SERVICE_GRANDCHILD (a file: start `sleep 300` and write its pid).
"""

import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    sick = False

    def _send(self, status, body, content_type='application/json'):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # pylint: disable=invalid-name
        if self.path == '/health':
            status = 500 if Handler.sick else 200
            self._send(status, json.dumps({'ok': not Handler.sick}).encode())
        elif self.path == '/':
            self._send(200, json.dumps({'pid': os.getpid()}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):  # pylint: disable=invalid-name
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length)
        if self.path == '/echo':
            kind = self.headers.get('Content-Type', 'text/plain')
            self._send(200, body, kind)
        elif self.path == '/sicken':
            Handler.sick = True
            self._send(200, b'{"sick": true}')
        else:
            self._send(404, b'{"error": "not found"}')

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
    kind, where = sys.argv[1], sys.argv[2]
    if kind == '--socket':
        server = UnixServer(where, Handler)
    else:
        server = http.server.ThreadingHTTPServer(('127.0.0.1', int(where)),
                                                 Handler)
    server.daemon_threads = True
    starts = os.environ.get('SERVICE_STARTS')
    if starts:
        with open(starts, 'a', encoding='ascii') as handle:
            handle.write(f'{os.getpid()}\n')
    grandchild = os.environ.get('SERVICE_GRANDCHILD')
    if grandchild:
        # pylint: disable-next=consider-using-with
        child = subprocess.Popen(['sleep', '300'])
        with open(grandchild, 'w', encoding='ascii') as handle:
            handle.write(f'{child.pid}\n')
    print(f'service_server {os.getpid()} listening', flush=True)
    server.serve_forever()


if __name__ == '__main__':
    main()
