"""Benchmark app for gunicorn (sync workers): the same endpoints as
workers_app.py as a plain WSGI application.

Run: BENCH_STATIC_DIR=DIR gunicorn -w 2 -k sync -b 127.0.0.1:18084 \
         --backlog 1024 --chdir benchmarks/apps gunicorn_app:app

GET /api/sleep/{ms} sleeps in the worker (time.sleep), holding it.

The static file is read from disk on every request (no cache), as the other
servers do. SSE and /broadcast are not served (501): a sync worker is held by
one connection for the whole life of a stream.
"""

import json
import os
import re
import time

STATIC_DIR = os.path.abspath(os.environ.get('BENCH_STATIC_DIR', 'static'))

_ITEM = re.compile(r'^/api/item/(-?\d+)$')
_WORK = re.compile(r'^/api/work/(-?\d+)$')
_SLEEP = re.compile(r'^/api/sleep/(-?\d+)$')
_JSON = 'application/json'


def burn_cpu(ms):
    """Spend `ms` milliseconds of this process's CPU time."""
    end = time.process_time() + ms / 1000.0
    x = 0
    while time.process_time() < end:
        for i in range(200):
            x += i * i
    return x


def _send(start_response, status, body, content_type=_JSON, extra=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode('utf-8')
    headers = [('Content-Type', content_type),
               ('Content-Length', str(len(body)))]
    headers.extend(extra)
    start_response(status, headers)
    return [body]


def _read_body(environ):
    try:
        length = int(environ.get('CONTENT_LENGTH') or 0)
    except ValueError:
        length = 0
    return environ['wsgi.input'].read(length) if length > 0 else b''


def _static(start_response, rest):
    root = STATIC_DIR
    path = os.path.realpath(os.path.join(root, rest))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return _send(start_response, '404 Not Found', {'error': 'Not found'})
    with open(path, 'rb') as handle:
        data = handle.read()
    return _send(start_response, '200 OK', data, 'application/octet-stream')


def app(environ, start_response):
    method = environ['REQUEST_METHOD']
    path = environ.get('PATH_INFO', '/')
    if path == '/health':
        return _send(start_response, '200 OK', {'status': 'ok'})
    if path == '/monitor':
        return _send(start_response, '200 OK',
                     {'impl': 'gunicorn', 'pending': None, 'pools': []})
    if path.startswith('/static/') and method in ('GET', 'HEAD'):
        return _static(start_response, path[len('/static/'):])
    match = _ITEM.match(path)
    if match and method == 'GET':
        return _send(start_response, '200 OK', {'id': int(match.group(1))})
    if path == '/api/echo' and method == 'POST':
        try:
            data = json.loads(_read_body(environ) or b'null')
        except ValueError:
            return _send(start_response, '400 Bad Request',
                         {'error': 'invalid JSON'})
        return _send(start_response, '200 OK', data)
    match = _WORK.match(path)
    if match and method == 'GET':
        ms = int(match.group(1))
        burn_cpu(ms)
        return _send(start_response, '200 OK', {'ms': ms})
    match = _SLEEP.match(path)
    if match and method == 'GET':
        ms = int(match.group(1))
        time.sleep(max(ms, 0) / 1000.0)
        return _send(start_response, '200 OK', {'ms': ms})
    if path in ('/api/sse', '/broadcast'):
        return _send(start_response, '501 Not Implemented',
                     {'error': 'streaming is not served by sync workers'})
    return _send(start_response, '404 Not Found', {'error': 'Not found'})
