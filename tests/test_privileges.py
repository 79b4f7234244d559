"""Running as another user: user=, group=, umask=, and the root warning.

The end-to-end tests change user for real, so they need root (CI runs as
root); elsewhere they are skipped.
"""

import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from uhttp.workers.privileges import (
    PrivilegeError, Privileges, parse_umask)

from conftest import APPS, Server, wait_until

APP = 'sysops_app.py'
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason='changing user needs root (CI runs as root)')


def _nobody():
    try:
        return pwd.getpwnam('nobody')
    except KeyError:
        pytest.skip('no user "nobody" on this host')


def _ids_in_status(pid):
    """(real uid, real gid) of a process from /proc/<pid>/status."""
    fields = {}
    with open(f'/proc/{pid}/status', encoding='ascii') as status:
        for line in status:
            name, _, value = line.partition(':')
            fields[name] = value.split()
    return int(fields['Uid'][0]), int(fields['Gid'][0]), fields


@pytest.fixture
def shared_dir():
    """A directory any user may write in (tmp_path is root's only)."""
    path = tempfile.mkdtemp(prefix='uhttp-workers-')
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize('value, expected', [
    (0o027, 0o027), ('027', 0o027), ('0o077', 0o077), (0, 0)])
def test_parse_umask(value, expected):
    assert parse_umask(value) == expected


@pytest.mark.parametrize('value', ['8', 'rw', 0o1000, -1, True])
def test_bad_umask_is_refused(value):
    with pytest.raises(ValueError, match='umask='):
        parse_umask(value)


def test_unknown_names_are_refused():
    with pytest.raises(PrivilegeError, match="unknown user 'no-such-user-x'"):
        Privileges(user='no-such-user-x').resolve()
    with pytest.raises(PrivilegeError, match="unknown group 'no-such-grp-x'"):
        Privileges(group='no-such-grp-x').resolve()


def test_user_without_group_takes_its_primary_group():
    entry = _nobody()
    privileges = Privileges(user='nobody')
    privileges.resolve()
    assert (privileges.uid, privileges.gid) == (entry.pw_uid, entry.pw_gid)
    numeric = Privileges(user=str(entry.pw_uid), group=entry.pw_gid)
    numeric.resolve()
    assert (numeric.uid, numeric.gid) == (entry.pw_uid, entry.pw_gid)


def test_unknown_user_is_a_one_line_error_and_exit_1():
    env = dict(os.environ, PORT='0', ADDRESS='127.0.0.1',
               RUN_USER='no-such-user-x')
    result = subprocess.run(
        [sys.executable, os.path.join(APPS, APP)], env=env, timeout=30,
        capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "unknown user 'no-such-user-x'"]
    assert 'listening on' not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() == 0,
                    reason='root may become any user: the drop cannot fail')
def test_a_refused_drop_is_an_error_and_exit_1():
    env = dict(os.environ, PORT='0', ADDRESS='127.0.0.1', RUN_USER='root')
    result = subprocess.run(
        [sys.executable, os.path.join(APPS, APP)], env=env, timeout=30,
        capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert 'cannot run as user root' in result.stderr


@ROOT_ONLY
def test_dispatcher_and_workers_run_as_nobody(start_server, shared_dir):
    entry = _nobody()
    server = start_server(APP, env={'RUN_USER': 'nobody', 'UMASK': '027',
                                    'WORKERS': '2'}, ready_workers=2)
    server.wait_log(r'running as user nobody')
    worker = server.get('/api/ids').json()
    dispatcher = server.get('/ids').json()
    assert dispatcher['pid'] == server.pid
    for pid in (server.pid, worker['pid']):
        uid, gid, fields = _ids_in_status(pid)
        assert (uid, gid) == (entry.pw_uid, entry.pw_gid)
        assert set(map(int, fields['Uid'])) == {entry.pw_uid}   # saved too
        assert 0 not in map(int, fields['Groups'])
    assert worker['groups'] and 0 not in worker['groups']
    assert server.count_log('running as root') == 0
    # the umask applies to what a handler creates
    created = server.get(f'/api/touch?path={shared_dir}/made').json()
    assert created['mode'] == 0o640
    assert os.stat(f'{shared_dir}/made').st_uid == entry.pw_uid


@ROOT_ONLY
def test_the_log_file_opened_as_root_keeps_working(tmp_path):
    _nobody()
    log_dir = tmp_path / 'logs'     # only root may enter it
    log_dir.mkdir(mode=0o700)
    log_file = log_dir / 'service.log'
    server = Server(os.path.join(APPS, APP), env={
        'RUN_USER': 'nobody', 'LOG_FILE': str(log_file)})
    try:
        wait_until(lambda: log_file.exists() and 'ready' in
                   log_file.read_text(), 20)
        text = log_file.read_text()
        server.port = int(text.split('listening on http://')[1]
                          .split(':')[1].split()[0])
        assert server.get('/api/print?text=after-drop').status == 200
        wait_until(lambda: 'stdout: printed after-drop' in
                   log_file.read_text())
        assert os.stat(log_file).st_uid == pwd.getpwnam('nobody').pw_uid
    finally:
        server.stop()


@ROOT_ONLY
def test_root_without_user_is_warned_once(start_server):
    server = start_server(APP, env={'UHTTP_WORKERS_ALLOW_ROOT': ''},
                          ready_workers=1)
    assert server.count_log(r'WARNING .*running as root: give user=') == 1
    quiet = start_server(APP, env={'ALLOW_ROOT': '1'}, ready_workers=1)
    assert quiet.count_log('running as root') == 0
