"""Daemon mode: the launcher exits 0, the daemon named by the pid file
serves, logs to its file, and stops on SIGTERM; a bind error still reaches
the terminal."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import APPS, Server, pid_alive, wait_until

APP = os.path.join(APPS, 'sysops_app.py')
_LISTENING = re.compile(r'listening on http://\S+:(\d+) \(pid (\d+)')


def _launch(**env):
    full = dict(os.environ, ADDRESS='127.0.0.1', PORT='0', DAEMON='1',
                ALLOW_ROOT='1')
    full.update(env)
    return subprocess.run([sys.executable, APP], env=full, timeout=30,
                          capture_output=True, text=True, check=False)


def _client(port):
    """Server's HTTP helpers for a dispatcher this test did not start as
    a child (a daemon): requests only, never stop()."""
    client = Server.__new__(Server)
    client.port = port
    return client


@pytest.fixture
def daemon_files(tmp_path):
    """The log and pid file paths; the daemon (only that PID) is stopped
    at the end if a test left it running."""
    log_file, pid_file = tmp_path / 'daemon.log', tmp_path / 'daemon.pid'
    yield log_file, pid_file
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_daemon_serves_logs_and_stops_on_sigterm(daemon_files):
    log_file, pid_file = daemon_files
    result = _launch(LOG_FILE=str(log_file), PID_FILE=str(pid_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == '' and result.stderr == ''
    pid = int(pid_file.read_text())
    assert pid_alive(pid)
    match = wait_until(lambda: _LISTENING.search(log_file.read_text()), 20)
    assert int(match.group(2)) == pid
    wait_until(lambda: 'ready' in log_file.read_text(), 20)
    # a session of its own that it does not lead (it can never take a
    # terminal again), in /
    assert os.getsid(pid) not in (os.getsid(0), pid)
    assert os.readlink(f'/proc/{pid}/cwd') == '/'
    assert os.readlink(f'/proc/{pid}/fd/0') == '/dev/null'
    server = _client(int(match.group(1)))
    assert server.get('/ids').json()['pid'] == pid
    assert server.get('/api/print?text=from-daemon').status == 200
    wait_until(lambda: 'stdout: printed from-daemon' in log_file.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 20)
    wait_until(lambda: not pid_file.exists(), 5)
    assert 'stopped' in log_file.read_text()


def test_a_bind_error_reaches_the_terminal(daemon_files):
    log_file, pid_file = daemon_files
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _launch(LOG_FILE=str(log_file), PID_FILE=str(pid_file),
                         PORT=str(port))
    assert result.returncode == 1
    assert f'cannot listen on 127.0.0.1:{port}' in result.stderr
    assert not pid_file.exists()


def test_a_failure_after_detaching_reaches_the_terminal(daemon_files):
    log_file, pid_file = daemon_files
    if os.geteuid() == 0:
        pytest.skip('root may become any user: the drop cannot fail')
    result = _launch(LOG_FILE=str(log_file), PID_FILE=str(pid_file),
                     RUN_USER='root')
    assert result.returncode == 1
    assert 'cannot run as user root' in result.stderr


def test_daemon_needs_a_log_file():
    result = _launch()
    assert result.returncode != 0
    assert 'daemon=True needs log_file=' in result.stderr


@pytest.mark.skipif(os.geteuid() != 0,
                    reason='changing user needs root (CI runs as root)')
def test_daemon_as_nobody_removes_its_pid_file(tmp_path):
    try:
        nobody = pwd.getpwnam('nobody').pw_uid
    except KeyError:
        pytest.skip('no user "nobody" on this host')
    shared = tempfile.mkdtemp(prefix='uhttp-workers-')
    os.chmod(shared, 0o1777)    # like /tmp: each may remove its own files
    log_file = tmp_path / 'daemon.log'  # opened as root, in root's dir
    pid_file = os.path.join(shared, 'daemon.pid')
    pid = None
    try:
        result = _launch(LOG_FILE=str(log_file), PID_FILE=pid_file,
                         RUN_USER='nobody')
        assert result.returncode == 0, result.stderr
        with open(pid_file, encoding='ascii') as handle:
            pid = int(handle.read())
        wait_until(lambda: 'ready' in log_file.read_text(), 20)
        assert os.stat(f'/proc/{pid}').st_uid == nobody
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), 20)
        wait_until(lambda: not os.path.exists(pid_file), 5)
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(shared)


def test_sigusr2_replaces_the_daemon_without_detaching_again(daemon_files):
    log_file, pid_file = daemon_files
    result = _launch(LOG_FILE=str(log_file), PID_FILE=str(pid_file))
    assert result.returncode == 0, result.stderr
    first = int(pid_file.read_text())
    wait_until(lambda: 'ready (pid' in log_file.read_text(), 20)
    os.kill(first, signal.SIGUSR2)
    wait_until(lambda: not pid_alive(first), 30,
               message=lambda: log_file.read_text())
    second = int(pid_file.read_text())
    assert second != first and pid_alive(second)
    port = int(_LISTENING.findall(log_file.read_text())[-1][0])
    server = _client(port)
    assert server.get('/ids').json()['pid'] == second
    os.kill(second, signal.SIGTERM)
    wait_until(lambda: not pid_alive(second), 20)
    wait_until(lambda: not pid_file.exists(), 5)
