"""Benchmark app for the ASGI peers (uvicorn, granian): the same endpoints as
workers_app.py as a raw ASGI 3 application, no framework.

Run: BENCH_STATIC_DIR=DIR uvicorn asgi_app:app --app-dir benchmarks/apps \\
         --workers 2 --backlog 1024
     BENCH_STATIC_DIR=DIR granian --interface asgi --workers 2 \\
         --backlog 1024 --working-dir benchmarks/apps asgi_app:app

Routes:
  GET  /health               {"status": "ok"}
  GET  /monitor              {"pending": null}: no pending table to show
  GET  /static/file4k.bin    read from disk on every request (no cache), as
                             the gunicorn app does
  GET  /api/item/{id}        {"id": id}
  POST /api/echo             the JSON body back
  GET  /api/work/{ms}        burn ms milliseconds of CPU time (blocks this
                             worker's event loop, as a sync handler would)
  GET  /api/sleep/{ms}       await asyncio.sleep(ms): the natural way to wait
                             in an async app (the worker keeps serving)
  GET  /api/sse, POST /broadcast   501: a broadcast to the subscribers of
                             every worker process needs a channel between
                             the workers that these servers do not have

BENCH_READY_DIR=dir: each worker process writes an empty file named after
its PID in dir when the ASGI lifespan startup runs, so the harness can tell
when every worker is up (a request to the shared port reaches one worker).
"""

import asyncio
import json
import os
import re
import time

STATIC_DIR = os.path.abspath(os.environ.get('BENCH_STATIC_DIR', 'static'))
READY_DIR = os.environ.get('BENCH_READY_DIR')

_ITEM = re.compile(r'^/api/item/(-?\d+)$')
_WORK = re.compile(r'^/api/work/(-?\d+)$')
_SLEEP = re.compile(r'^/api/sleep/(-?\d+)$')
_JSON = b'application/json'


def burn_cpu(ms):
    """Spend `ms` milliseconds of this process's CPU time."""
    end = time.process_time() + ms / 1000.0
    x = 0
    while time.process_time() < end:
        for i in range(200):
            x += i * i
    return x


async def _send(send, status, body, content_type=_JSON):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode('utf-8')
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-type', content_type),
                            (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})


async def _read_body(receive):
    """The whole request body, or None when the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message['type'] == 'http.disconnect':
            return None
        chunks.append(message.get('body', b''))
        if not message.get('more_body'):
            return b''.join(chunks)


def _read_static(rest):
    root = STATIC_DIR
    path = os.path.realpath(os.path.join(root, rest))
    if os.path.commonpath([root, path]) != root or not os.path.isfile(path):
        return None
    with open(path, 'rb') as handle:
        return handle.read()


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message['type'] == 'lifespan.startup':
            if READY_DIR:
                path = os.path.join(READY_DIR, str(os.getpid()))
                with open(path, 'wb'):
                    pass
            await send({'type': 'lifespan.startup.complete'})
        elif message['type'] == 'lifespan.shutdown':
            await send({'type': 'lifespan.shutdown.complete'})
            return


async def _http(scope, receive, send):
    method = scope['method']
    path = scope['path']
    if path == '/health':
        return await _send(send, 200, {'status': 'ok'})
    if path == '/monitor':
        return await _send(send, 200, {'impl': 'asgi', 'pending': None,
                                       'pools': []})
    if path.startswith('/static/') and method in ('GET', 'HEAD'):
        data = _read_static(path[len('/static/'):])
        if data is None:
            return await _send(send, 404, {'error': 'Not found'})
        return await _send(send, 200, data, b'application/octet-stream')
    match = _ITEM.match(path)
    if match and method == 'GET':
        return await _send(send, 200, {'id': int(match.group(1))})
    if path == '/api/echo' and method == 'POST':
        body = await _read_body(receive)
        if body is None:
            return None
        try:
            data = json.loads(body or b'null')
        except ValueError:
            return await _send(send, 400, {'error': 'invalid JSON'})
        return await _send(send, 200, data)
    match = _WORK.match(path)
    if match and method == 'GET':
        ms = int(match.group(1))
        burn_cpu(ms)
        return await _send(send, 200, {'ms': ms})
    match = _SLEEP.match(path)
    if match and method == 'GET':
        ms = int(match.group(1))
        await asyncio.sleep(max(ms, 0) / 1000.0)
        return await _send(send, 200, {'ms': ms})
    if path in ('/api/sse', '/broadcast'):
        return await _send(send, 501, {'error': 'no broadcast across the '
                                       'worker processes'})
    return await _send(send, 404, {'error': 'Not found'})


async def app(scope, receive, send):
    """The ASGI 3 entry point."""
    if scope['type'] == 'lifespan':
        await _lifespan(receive, send)
    elif scope['type'] == 'http':
        await _http(scope, receive, send)
    # websocket scopes are not served: returning closes them
