"""A TCP proxy on 127.0.0.1 that delays every chunk it forwards.

Puts a network between a remote worker host and its Redis on one machine:
`python benchmarks/latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS`
forwards connections made to 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT,
each chunk DELAY_MS later than it came, in each direction (so a round trip
takes twice DELAY_MS more), in order. Used by remote_workers.py --latency.
Runs until terminated.
"""

import asyncio
import sys
import time


async def _pump(reader, writer, delay):
    """Forward what `reader` gets to `writer`, `delay` seconds late."""
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
    sender = asyncio.ensure_future(forward())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                break
    finally:
        await sender


async def _serve(listen, target, delay):
    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection(
            '127.0.0.1', target)
        # a connection reset ends its pumps; the proxy goes on
        await asyncio.gather(
            _pump(client_reader, server_writer, delay),
            _pump(server_reader, client_writer, delay),
            return_exceptions=True)
    server = await asyncio.start_server(handle, '127.0.0.1', listen)
    async with server:
        await server.serve_forever()


def main():
    listen, target, delay_ms = sys.argv[1:4]
    asyncio.run(_serve(int(listen), int(target), float(delay_ms) / 1000))


if __name__ == '__main__':
    main()
