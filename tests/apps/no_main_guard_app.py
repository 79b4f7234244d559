"""A script that starts its dispatcher on import (no `__main__` guard),
with workers started by spawn: every worker re-imports it. Environment:
PORT, ADDRESS."""

import os

import uhttp.workers as _workers


class Spawned(_workers.Worker):
    @_workers.api('/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid()}


_workers.Dispatcher(
    port=int(os.environ.get('PORT', '8080')),
    address=os.environ.get('ADDRESS', '127.0.0.1'),
    pools=[_workers.WorkerPool(Spawned, num_workers=2,
                               start_method='spawn')]).run()
