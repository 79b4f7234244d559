"""A Worker for remote pools: `uhttp-workers worker remote_app:RemoteApp
--redis URL`, and the worker class of a dispatcher's RemotePool in tests.

Routes (names are stable: tests of both sides of remote pools use them):

- `GET /echo`: {"pid", "worker_id", "pool", "path", "query"} of the worker
  process that ran it.
- `POST /body`: {"body": ...} the request body as the handler got it
  (decoded JSON, or bytes as text), and its "type" ("json" or "bytes").
- `GET /slow?s=SECONDS`: sleeps that long (at most 30 s), then
  {"slept": seconds, "pid"}.
- `GET /wait?flag=PATH`: waits until the file PATH exists (at most 30 s),
  then {"flag_seen": bool, "pid"}: a request that runs exactly as long as
  its test wants, with no timing guess.
- `GET /crash`: the worker process exits at once (os._exit(1)), in the
  middle of the request.
- `GET /stream?n=N`: a streamed answer of N NDJSON lines {"n": i}.

When REMOTE_APP_MARKS names a directory, each worker process writes
`setup-<pid>` there in setup() and `teardown-<pid>` in teardown(). With
REMOTE_APP_FAIL_SETUP=1, setup() raises (no worker ever gets ready).
"""

import os
import time

import uhttp.workers as _workers

LONGEST_WAIT = 30.0


class RemoteApp(_workers.Worker):
    """The worker class of the remote pool tests."""

    def setup(self):
        if os.environ.get('REMOTE_APP_FAIL_SETUP') == '1':
            raise RuntimeError('setup fails on purpose')
        self._mark('setup')

    def teardown(self):
        self._mark('teardown')

    @staticmethod
    def _mark(what):
        directory = os.environ.get('REMOTE_APP_MARKS')
        if directory:
            path = os.path.join(directory, f'{what}-{os.getpid()}')
            with open(path, 'w', encoding='utf-8') as mark:
                mark.write(str(time.time()))

    @_workers.api('/echo', 'GET')
    def echo(self, request):
        return {'pid': os.getpid(), 'worker_id': self.worker_id,
                'pool': self.pool_name, 'path': request.path,
                'query': request.query}

    @_workers.api('/body', 'POST')
    def body(self, request):
        data = request.data
        if isinstance(data, bytes):
            return {'body': data.decode('utf-8', 'replace'), 'type': 'bytes'}
        return {'body': data, 'type': 'json'}

    @_workers.api('/slow', 'GET')
    def slow(self, request):
        seconds = min(float(request.query.get('s', '1')), LONGEST_WAIT)
        time.sleep(seconds)
        return {'slept': seconds, 'pid': os.getpid()}

    @_workers.api('/wait', 'GET')
    def wait(self, request):
        flag = request.query['flag']
        deadline = time.monotonic() + LONGEST_WAIT
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {'flag_seen': os.path.exists(flag), 'pid': os.getpid()}

    @_workers.api('/crash', 'GET')
    def crash(self, request):
        self.log.warning('exiting in the middle of request %s',
                         request.request_id)
        os._exit(1)

    @_workers.api('/stream', 'GET')
    def stream(self, request):
        request.response_ndjson()
        for number in range(int(request.query.get('n', '3'))):
            request.send_ndjson({'n': number})
        request.response_stream_end()
