"""Test application for operations: rolling restarts, resizing, recycling,
pid and log files, systemd notifications and metrics.

The worker class lives in `versioned.py` inside APP_DIR (written by the
test), so a test can change the code on disk and roll it out with SIGHUP.
Settings: PORT, ADDRESS, APP_DIR, WORKERS, MAX_REQUESTS, PID_FILE, LOG_FILE,
METRICS (a route), TIMEOUT.
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ
sys.path.insert(0, ENV['APP_DIR'])

import versioned  # noqa: E402  pylint: disable=wrong-import-position


class OpsDispatcher(_workers.Dispatcher):
    reloads = 0

    def on_reload(self):
        self.reloads += 1
        return {'reload': self.reloads}

    @_workers.sync('/monitor')
    def monitor(self, client, path_params):
        client.respond(self.status())


def main():
    dispatcher = OpsDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        pid_file=ENV.get('PID_FILE') or None,
        log_file=ENV.get('LOG_FILE') or None,
        metrics_route=ENV.get('METRICS') or None,
        shutdown_timeout=5,
        pools=[_workers.WorkerPool(
            versioned.VersionWorker,
            num_workers=int(ENV.get('WORKERS', '2')),
            timeout=float(ENV.get('TIMEOUT', '10')),
            max_requests=int(ENV.get('MAX_REQUESTS', '0')),
            max_memory=int(ENV.get('MAX_MEMORY', '0')),
            heartbeat_interval=0.2, log_level=_workers.LOG_INFO,
            routes=['/api/**'])],
    )
    dispatcher.run()


if __name__ == '__main__':
    main()
