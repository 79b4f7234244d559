"""Test application for stdlib logging in workers and the access log.

Settings: PORT, ADDRESS; ACCESS_LOG ('off' disables it, 'logger:<name>'
names a stdlib logger); ACCESS_LOG_FORMAT ('common', 'combined', 'json' or a
template); CAPTURE=1 installs a stdlib handler in the dispatcher that prints
each record as `CAPTURED {json}` (name, level, message, exc_text and the
worker fields); STATIC_DIR serves /static/. The pool leaves log_level unset:
its workers log at the dispatcher's level (INFO).
"""

import json
import logging
import os
import sys

import uhttp.workers as _workers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logging_helper  # noqa: E402  pylint: disable=wrong-import-position

ENV = os.environ


class CaptureHandler(logging.Handler):
    """Prints every record it gets as one JSON line."""

    def emit(self, record):
        fields = {'name': record.name, 'level': record.levelname,
                  'message': record.getMessage(), 'exc_text': record.exc_text}
        for key in ('worker_logger', 'worker_id', 'pool', 'process',
                    'lineno', 'funcName'):
            fields[key] = getattr(record, key, None)
        sys.stderr.write('CAPTURED ' + json.dumps(fields) + '\n')
        sys.stderr.flush()


class LogWorker(_workers.Worker):

    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        self.log.info('hello from %s', 'handler')
        return {'pid': os.getpid()}

    @_workers.api('/api/module', 'GET')
    def module(self, request):
        logging_helper.warn_about(request.query.get('what', 'x')
                                  if request.query else 'x')
        return {'ok': True}

    @_workers.api('/api/fail', 'GET')
    def fail(self, request):
        logging_helper.fail_and_log()
        try:
            raise KeyError('inner')
        except KeyError:
            self.log.error('self.log caught it', exc_info=True)
        return {'ok': True}

    @_workers.api('/api/item/{id:int}', 'GET')
    def item(self, request):
        return {'id': request.path_params['id'], 'name': 'thing'}

    @_workers.api('/api/stream', 'GET')
    def stream(self, request):
        request.response_stream(content_type='text/plain')
        for part in range(3):
            request.send_chunk(f'part {part}\n'.encode())
        request.response_stream_end()


class LogDispatcher(_workers.Dispatcher):

    @_workers.sync('/health')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})

    @_workers.sync('/sync-boom')
    def sync_boom(self, client, path_params):
        raise RuntimeError('sync went wrong')


def _access_log_option():
    value = ENV.get('ACCESS_LOG', 'on')
    if value == 'off':
        return False
    if value.startswith('logger:'):
        # a logger of the application's own, set to show INFO
        name = value.split(':', 1)[1]
        logging.getLogger(name).setLevel(logging.INFO)
        return name
    return True


def main():
    if ENV.get('CAPTURE') == '1':
        logging.getLogger().addHandler(CaptureHandler())
    static_dir = ENV.get('STATIC_DIR')
    LogDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=5,
        static_routes={'/static/': static_dir} if static_dir else None,
        access_log=_access_log_option(),
        access_log_format=ENV.get('ACCESS_LOG_FORMAT', 'common'),
        pools=[_workers.WorkerPool(
            LogWorker, name='Items', num_workers=2, heartbeat_interval=0.2,
            routes=['/api/**'])],
    ).run()


if __name__ == '__main__':
    main()
