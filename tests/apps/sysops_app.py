"""Test application for running in production: log files and rotation,
captured worker output, privilege drop, umask and daemon mode.

Settings (environment): PORT, ADDRESS, WORKERS, LOG_FILE, LOG_ROTATE_SIZE,
LOG_ROTATE_AGE, LOG_ROTATE_BACKUPS, CAPTURE_OUTPUT ('0': off), RUN_USER,
RUN_GROUP, UMASK (octal), ALLOW_ROOT ('1'), DAEMON ('1'), PID_FILE,
START_METHOD ('fork' or 'spawn').
"""

import os
import sys

import uhttp.workers as _workers

ENV = os.environ


def _optional(name, convert=str):
    value = ENV.get(name)
    return convert(value) if value else None


def _ids():
    return {'pid': os.getpid(), 'uid': os.getuid(), 'euid': os.geteuid(),
            'gid': os.getgid(), 'egid': os.getegid(),
            'groups': os.getgroups(), 'umask': _current_umask()}


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class SysopsWorker(_workers.Worker):
    """Handlers that write to stdout/stderr and report who they run as."""

    @_workers.api('/api/print')
    def print_line(self, request):
        text = (request.query or {}).get('text', 'hello')
        print(f'printed {text}')
        return {'ok': True}

    @_workers.api('/api/fd2')
    def write_fd2(self, request):
        # what a C extension does: straight to the descriptor
        text = (request.query or {}).get('text', 'raw')
        os.write(2, f'fd2 {text}\n'.encode())
        return {'ok': True}

    @_workers.api('/api/partial')
    def partial_then_exit(self, request):
        # a last line without its newline, then the process ends
        text = (request.query or {}).get('text', 'partial')
        os.write(1, f'unfinished {text}'.encode())
        os._exit(9)

    @_workers.api('/api/long')
    def long_line(self, request):
        size = int((request.query or {}).get('size', '100000'))
        sys.stdout.write('L' * size + '\n')
        return {'ok': True}

    @_workers.api('/api/many')
    def many_lines(self, request):
        count = int((request.query or {}).get('count', '1000'))
        for number in range(count):
            print(f'line {number} of {count}')
        return {'printed': count}

    @_workers.api('/api/ids')
    def ids(self, request):
        return _ids()

    @_workers.api('/api/touch')
    def touch(self, request):
        path = request.query['path']
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write('x')
        return {'mode': os.stat(path).st_mode & 0o777}

    @_workers.api('/api/noise')
    def noise(self, request):
        count = int((request.query or {}).get('count', '10'))
        for number in range(count):
            self.log.warning('noise %d %s', number, 'n' * 200)
        return {'logged': count}


class SysopsDispatcher(_workers.Dispatcher):

    @_workers.sync('/ids')
    def ids(self, client, path_params):
        client.respond(_ids())


def _options():
    """Dispatcher keywords for the settings given (only those)."""
    options = {}
    for key, name, convert in (
            ('log_file', 'LOG_FILE', str),
            ('log_rotate_size', 'LOG_ROTATE_SIZE', int),
            ('log_rotate_age', 'LOG_ROTATE_AGE',
             lambda value: int(value) if value.isdigit() else value),
            ('log_rotate_backups', 'LOG_ROTATE_BACKUPS', int),
            ('capture_output', 'CAPTURE_OUTPUT', lambda value: value != '0'),
            ('user', 'RUN_USER', str),
            ('group', 'RUN_GROUP', str),
            ('umask', 'UMASK', lambda value: int(value, 8)),
            ('allow_root', 'ALLOW_ROOT', lambda value: value == '1'),
            ('daemon', 'DAEMON', lambda value: value == '1'),
            ('pid_file', 'PID_FILE', str)):
        value = _optional(name, convert)
        if value is not None:
            options[key] = value
    return options


def main():
    dispatcher = SysopsDispatcher(
        port=int(ENV.get('PORT', '8080')),
        address=ENV.get('ADDRESS', '127.0.0.1'),
        shutdown_timeout=5,
        pools=[_workers.WorkerPool(
            SysopsWorker, num_workers=int(ENV.get('WORKERS', '1')),
            heartbeat_interval=0.2, log_level=_workers.LOG_INFO,
            start_method=ENV.get('START_METHOD') or None,
            routes=['/api/**'])],
        **_options())
    dispatcher.run()


if __name__ == '__main__':
    main()
