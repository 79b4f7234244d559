"""WebSocket benchmark app for uvicorn: raw ASGI 3, no framework.

The same endpoints as ws_workers_app.py:

  GET /health          {"status": "ok"}
  GET /api/item/{id}   {"id": id} (the harness's readiness probe)
  WS  /ws/echo         every message is sent back as it came (text or bytes)
  WS  /ws/fan          a listener: greeted with {"worker": pid}, then receives
                       every broadcast of its worker process
  WS  /ws/fire         greeted with {"worker": pid}; each message it sends is
                       broadcast to the /ws/fan listeners of this process

A worker process knows only its own connections: there is no channel between
uvicorn's workers, so a broadcast reaches the listeners of one process. The
benchmark driver therefore sends its trigger over one /ws/fire connection per
worker process (it tells them apart by the greeting) — the fan-out of the
other processes is done by the driver, which this app cannot do.

BENCH_READY_DIR=dir: each worker writes an empty file named after its PID
in dir at lifespan startup (as apps/asgi_app.py does).

Run: uvicorn ws_asgi_app:app --app-dir benchmarks/apps --workers 2
"""

import json
import os
import re

READY_DIR = os.environ.get('BENCH_READY_DIR')
_ITEM = re.compile(r'^/api/item/(-?\d+)$')
_LISTENERS = set()   # the send callables of this process's /ws/fan sockets


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message['type'] == 'lifespan.startup':
            if READY_DIR:
                with open(os.path.join(READY_DIR, str(os.getpid())), 'wb'):
                    pass
            await send({'type': 'lifespan.startup.complete'})
        elif message['type'] == 'lifespan.shutdown':
            await send({'type': 'lifespan.shutdown.complete'})
            return


async def _http(scope, send):
    path = scope['path']
    match = _ITEM.match(path)
    if path == '/health':
        status, body = 200, {'status': 'ok'}
    elif match:
        status, body = 200, {'id': int(match.group(1))}
    else:
        status, body = 404, {'error': 'Not found'}
    data = json.dumps(body).encode()
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-type', b'application/json'),
                            (b'content-length', str(len(data)).encode())]})
    await send({'type': 'http.response.body', 'body': data})


def _frame(message):
    """The send event carrying the payload of a websocket.receive event."""
    if message.get('text') is not None:
        return {'type': 'websocket.send', 'text': message['text']}
    return {'type': 'websocket.send', 'bytes': message.get('bytes') or b''}


async def _broadcast(event):
    # a listener that went away between two broadcasts is dropped by its
    # own disconnect; its send raising here must not stop the others
    for listener in list(_LISTENERS):
        try:
            await listener(event)
        except OSError:
            _LISTENERS.discard(listener)


async def _websocket(scope, receive, send):
    path = scope['path']
    if path not in ('/ws/echo', '/ws/fan', '/ws/fire'):
        await send({'type': 'websocket.close', 'code': 1008})
        return
    if (await receive())['type'] != 'websocket.connect':
        return
    await send({'type': 'websocket.accept'})
    if path != '/ws/echo':
        await send({'type': 'websocket.send',
                    'text': json.dumps({'worker': os.getpid()})})
    if path == '/ws/fan':
        _LISTENERS.add(send)
    try:
        while True:
            message = await receive()
            if message['type'] == 'websocket.disconnect':
                return
            if path == '/ws/echo':
                await send(_frame(message))
            elif path == '/ws/fire':
                await _broadcast(_frame(message))
    finally:
        _LISTENERS.discard(send)


async def app(scope, receive, send):
    """The ASGI 3 entry point."""
    if scope['type'] == 'lifespan':
        await _lifespan(receive, send)
    elif scope['type'] == 'http':
        await _http(scope, send)
    elif scope['type'] == 'websocket':
        await _websocket(scope, receive, send)
