"""What one access log line costs the dispatcher, per format (micro).

Times `AccessLog.finished()` on a connection-like object, three ways:
`format` (the line only, handed to a no-op), `default` (the whole default
path: the LogOutput line sink, buffering lines and writing them to
/dev/null 256 at a time) and
`stdlib` (a logging.StreamHandler on /dev/null configured by the
application). Prints microseconds per line, the best of several repeats.

Run:  python benchmarks/access_log_cost.py [--lines 20000] [--repeat 5]
"""

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=wrong-import-position
from uhttp.workers.access_log import ACCESS_LOGGER, AccessLog  # noqa: E402
from uhttp.workers.log import LogOutput, LogRouter  # noqa: E402

FORMATS = ('common', 'combined', 'json',
           '{remote} {method} {path} {status} {bytes} {duration_ms}')


class Connection:
    """The fields of a served connection the access log reads."""
    # pylint: disable=too-few-public-methods
    _method = 'GET'
    _url = '/api/item/1?full=1'
    _protocol = 'HTTP/1.1'
    _socket_ip = '127.0.0.1'
    _headers = {'host': 'localhost', 'user-agent': 'wrk/4.2',
                'referer': 'http://localhost/'}
    access_by = 'BenchWorker[0]'
    access_id = 123456

    def __init__(self):
        self._request_start = time.time()


def per_line(log, lines, repeat):
    """Best microseconds per finished() call over `repeat` runs."""
    connection = Connection()
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(lines):
            log.finished(connection, 200, 27)
        best = min(best, time.perf_counter() - start)
    return best / lines * 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--lines', type=int, default=20000)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    with open(os.devnull, 'w', encoding='utf-8') as null:
        output = LogOutput(null, style='plain')
        default = LogRouter(output.write, line_sink=output.line_sink)
        logger = logging.getLogger('bench.access')
        logger.propagate = False
        handler = logging.StreamHandler(null)
        handler.setFormatter(logging.Formatter(
            '%(asctime)s %(levelname)s %(name)s %(message)s'))
        logger.addHandler(handler)
        stdlib = LogRouter(output.write)
        stdlib._loggers[ACCESS_LOGGER] = logger  # pylint: disable=protected-access
        paths = {
            'format': lambda: lambda line: None,
            'default': lambda: default.sink(ACCESS_LOGGER, 'access', 20),
            'stdlib': lambda: stdlib.sink(ACCESS_LOGGER, 'access', 20),
        }
        print(f'{"format":<58} ' + ' '.join(f'{p:>9}' for p in paths)
              + '   (us per line)')
        for fmt in FORMATS:
            cells = [per_line(AccessLog(fmt, resolve), args.lines,
                              args.repeat) for resolve in paths.values()]
            print(f'{fmt:<58} ' + ' '.join(f'{c:9.2f}' for c in cells))


if __name__ == '__main__':
    main()
