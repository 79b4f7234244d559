"""Worker stdout/stderr captured into the dispatcher's log, tagged with
the worker; and log files with rotation, end to end."""

import os
import re

import pytest

from uhttp.workers import output_capture
from uhttp.workers.output_capture import MAX_LINE

from conftest import APPS, Server, wait_until

APP = 'sysops_app.py'
_LISTENING = re.compile(r'listening on http://\S+:(\d+) \(pid (\d+)')


@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_print_and_fd2_are_logged_tagged(start_server, method):
    server = start_server(APP, env={'START_METHOD': method},
                          ready_workers=1)
    assert server.get('/api/print?text=alpha').status == 200
    assert server.get('/api/fd2?text=beta').status == 200
    server.wait_log(r'INFO +\[SysopsWorker\[0\]\] stdout: printed alpha$')
    server.wait_log(r'WARNING +\[SysopsWorker\[0\]\] stderr: fd2 beta$')


def test_unfinished_line_is_logged_when_the_worker_exits(start_server):
    server = start_server(APP, ready_workers=1)
    assert server.get('/api/partial?text=tail').status == 502
    server.wait_log(r'\[SysopsWorker\[0\]\] stdout: unfinished tail$')


def test_a_long_line_is_logged_in_bounded_pieces(start_server):
    server = start_server(APP, ready_workers=1)
    size = 2 * MAX_LINE + 100
    assert server.get(f'/api/long?size={size}').status == 200
    server.wait_log(r'stdout: L{100}$')
    pieces = [line.split('stdout: ', 1)[1] for line in server.lines
              if 'stdout: L' in line]
    assert [len(piece) for piece in pieces] == [MAX_LINE, MAX_LINE, 100]


def test_without_capture_the_output_is_inherited(start_server):
    server = start_server(APP, env={'CAPTURE_OUTPUT': '0'}, ready_workers=1)
    assert server.get('/api/print?text=gamma').status == 200
    server.wait_log(r'^printed gamma$')
    assert server.count_log('stdout: printed gamma') == 0


def _start_logging_to(path, **env):
    """A server logging to the file `path`; its port is read from there."""
    server = Server(os.path.join(APPS, APP),
                    env={'LOG_FILE': str(path), **env})

    def listening():
        if server.proc.poll() is not None:
            raise AssertionError(f'server exited:\n{server.log}')
        text = path.read_text() if path.exists() else ''
        return _LISTENING.search(text) and 'ready' in text and text
    server.port = int(_LISTENING.search(
        wait_until(listening, 20)).group(1))
    return server


def test_worker_output_goes_to_the_log_file(tmp_path):
    log_file = tmp_path / 'service.log'
    server = _start_logging_to(log_file)
    try:
        assert server.get('/api/print?text=delta').status == 200
        wait_until(lambda: 'stdout: printed delta' in log_file.read_text())
        assert 'printed delta' not in server.log
    finally:
        server.stop()


def test_the_log_file_rotates_by_size(tmp_path):
    log_file = tmp_path / 'service.log'
    server = _start_logging_to(log_file, LOG_ROTATE_SIZE='4000',
                               LOG_ROTATE_BACKUPS='2')
    try:
        for _ in range(3):
            assert server.get('/api/noise?count=20').status == 200
        assert server.get('/api/print?text=last').status == 200
        wait_until(lambda: 'printed last' in log_file.read_text())
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ['service.log', 'service.log.1', 'service.log.2']
        for name in names:
            assert (tmp_path / name).stat().st_size <= 4000
        assert 'noise' in (tmp_path / 'service.log.1').read_text()
    finally:
        server.stop()


def test_captured_stream_splits_cuts_and_flushes():
    """The dispatcher's reading side alone, on a real pipe."""
    # pylint: disable=protected-access
    records = []
    capture = output_capture.OutputCapture(
        lambda name, level, message: records.append((name, level, message)))
    output = capture.open('Pool[1]')
    stdout, stderr = output.worker_ends
    os.write(stdout.fileno(), b'one\r\ntwo\nthr')
    stream = output._streams[0]
    assert stream.read()
    assert [r[2] for r in records] == ['stdout: one', 'stdout: two']
    stream._take(b'ee' + b'x' * MAX_LINE)
    assert records[-1][2] == 'stdout: three' + 'x' * (MAX_LINE - 5)
    stdout.close()
    stderr.close()
    output.worker_ends = []
    assert not stream.read()                  # end of file: the rest goes
    assert records[-1] == ('Pool[1]', 20, 'stdout: xxxxx')
    output.close()
