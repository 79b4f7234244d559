"""Another process sharing a SingleServer, for
tests/test_singleserver_compat.py; written as singleserver code is, with
only the import changed.

argv: PORT. Connects (starting the server if nobody runs it), prints one
JSON line {"owner", "server_pid"} or {"error"}, then waits for the end of
its stdin and disconnects.
"""

import json
import os
import sys

from uhttp.workers import ServerNotReady, SingleServer

HERE = os.path.dirname(os.path.abspath(__file__))

server = SingleServer(
    name='compat-peer',
    command=[sys.executable, os.path.join(HERE, 'compat_server.py'),
             '--host', '{host}', '--port', '{port}'],
    port=int(sys.argv[1]), health_check_url='/health', startup_timeout=15,
    shutdown_timeout=5)

try:
    client = server.connect()
except ServerNotReady as err:
    print(json.dumps({'error': str(err)}), flush=True)
    sys.exit(1)
print(json.dumps({'owner': server.is_owner,
                  'server_pid': client.get('/').json()['pid']}), flush=True)
sys.stdin.read()
server.disconnect()
