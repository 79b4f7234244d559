"""One of the processes racing Service.connect() in tests/test_service.py.

argv: PORT LOCK_PORT STARTS_FILE. Reads commands on stdin, one per line:
'go' connects (starting the service if nobody runs it) and prints one JSON
line {"pid", "owner", "server"} or {"pid", "error"}; 'exit' (or end of
input) leaves. Prints {"ready": pid} first. The service's output goes to
STARTS_FILE + '.out'.
"""

import json
import os
import sys

from uhttp.workers.service import Service, ServiceError

HERE = os.path.dirname(os.path.abspath(__file__))

SERVICE = Service(
    'racer', [sys.executable, os.path.join(HERE, 'service_server.py'),
              '--port', '{port}'],
    port=int(sys.argv[1]), lock_port=int(sys.argv[2]),
    env={'SERVICE_STARTS': sys.argv[3]}, stdout=sys.argv[3] + '.out',
    stderr='stdout', health_check_url='/health',
    health_check_interval=0.5, startup_timeout=15, restart_delay=0.2,
    shutdown_timeout=5)


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    say(ready=os.getpid())
    for line in sys.stdin:
        command = line.strip()
        if command == 'exit':
            break
        try:
            with SERVICE.connect(timeout=15) as client:
                server = client.get('/').json()['pid']
            say(pid=os.getpid(), owner=SERVICE.owned, server=server)
        except ServiceError as err:
            say(pid=os.getpid(), error=str(err))


if __name__ == '__main__':
    main()
