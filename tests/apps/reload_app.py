"""Test application for --reload: tests copy it into a directory of their
own and edit VERSION (or break the file) while the server runs.

`GET /api/version` answers from a worker, `GET /sync/version` from the
dispatcher (an @sync route): both must show an edit after a restart.
"""

import os

import uhttp.workers as _workers

VERSION = 'one'


class VersionWorker(_workers.Worker):
    @_workers.api('/api/version', 'GET')
    def version(self, request):
        return {'version': VERSION, 'pid': os.getpid()}


class ReloadDispatcher(_workers.Dispatcher):
    def __init__(self, shutdown_timeout=3, **options):
        super().__init__(
            pools=[_workers.WorkerPool(VersionWorker, routes=['/api/**'],
                                       heartbeat_interval=0.2)],
            shutdown_timeout=shutdown_timeout, **options)

    @_workers.sync('/sync/version')
    def sync_version(self, client, path_params):
        client.respond({'version': VERSION, 'pid': os.getpid()})
