"""--reload: the server runs in a child process that is replaced, whole,
when a watched file changes; a file that does not compile keeps the old
child serving. Real processes, a real Unix socket, real edits on disk;
every wait polls to a deadline.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from uhttp.workers import reloader, settings

from conftest import APPS, pid_alive, wait_until

try:
    import watchfiles  # noqa: F401  pylint: disable=unused-import
    HAVE_WATCHFILES = True
except ImportError:
    HAVE_WATCHFILES = False

WATCHERS = ['poll', pytest.param('watchfiles', marks=pytest.mark.skipif(
    not HAVE_WATCHFILES, reason='watchfiles is not installed (the reload '
    'extra); the polling watcher is tested'))]


def unix_get(path, url, timeout=5.0):
    """(status, JSON body) of GET `url` over the Unix socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    connection = http.client.HTTPConnection('localhost', timeout=timeout)
    connection.sock = sock
    try:
        connection.request('GET', url)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def answer(path, url):
    """The JSON answer, or None while no server listens."""
    try:
        status, body = unix_get(path, url)
    except OSError:
        return None
    return body if status == 200 else None


class Reloading:
    """`python -m uhttp.workers --reload` on a copy of reload_app.py."""

    def __init__(self, directory, *extra):
        self.directory = directory
        self.app = directory / 'reload_app.py'
        shutil.copy(os.path.join(APPS, 'reload_app.py'), self.app)
        self.sock = str(directory / 'app.sock')
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(settings.ENV_PREFIX)}
        env['PYTHONUNBUFFERED'] = '1'
        self.log_path = directory / 'server.log'
        self._log = open(self.log_path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, '-m', 'uhttp.workers',
             'reload_app:ReloadDispatcher', '--reload', '--bind',
             f'unix:{self.sock}', *extra],
            cwd=directory, env=env, stdout=self._log,
            stderr=subprocess.STDOUT)

    @property
    def log(self):
        """What the reloader and its children printed so far."""
        return self.log_path.read_text()

    def version(self, url='/api/version'):
        """The answer of the running server, waiting for one."""
        return wait_until(lambda: answer(self.sock, url), 20,
                          message=lambda: f'no answer on {url}:\n{self.log}')

    def wait_version(self, version, url='/api/version'):
        """Poll until the server answers `version`; return the answer."""
        def found():
            body = answer(self.sock, url)
            return body if body and body['version'] == version else None
        return wait_until(found, 30, message=lambda:
                          f'{url} never answered {version!r}:\n{self.log}')

    def edit(self, old, new):
        """Replace `old` by `new` in the app file (a new mtime and size)."""
        text = self.app.read_text()
        assert old in text
        self.app.write_text(text.replace(old, new))

    def stop(self):
        """SIGTERM to the reloader; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def reloading(tmp_path):
    """Factory: reloading(*extra_args) → a running Reloading."""
    started = []

    def start(*extra):
        server = Reloading(tmp_path, *extra)
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


def _watcher_args(watcher):
    return ('--reload-poll',) if watcher == 'poll' else ()


@pytest.mark.parametrize('watcher', WATCHERS)
def test_an_edit_restarts_the_whole_server(reloading, watcher):
    server = reloading(*_watcher_args(watcher))
    first = server.version()
    first_sync = server.version('/sync/version')
    assert first['version'] == first_sync['version'] == 'one'
    name = 'watchfiles' if watcher == 'watchfiles' else 'stat polling'
    assert f'with {name}' in server.log
    server.edit("VERSION = 'one'", "VERSION = 'two'")
    second = server.wait_version('two')
    second_sync = server.wait_version('two', '/sync/version')
    # a new dispatcher and new workers: nothing of the old child is left
    assert second['pid'] != first['pid']
    assert second_sync['pid'] != first_sync['pid']
    wait_until(lambda: not pid_alive(first_sync['pid']))
    wait_until(lambda: not pid_alive(first['pid']))
    assert 'reload_app.py changed: restarting the server' in server.log


def test_a_syntax_error_keeps_the_old_server(reloading):
    server = reloading('--reload-poll')
    before = server.version('/sync/version')
    server.edit("VERSION = 'one'", "VERSION = 'one' +")
    wait_until(lambda: 'SyntaxError' in server.log, 20,
               message=lambda: server.log)
    # the old server goes on serving the old code
    assert server.version('/sync/version') == before
    # another watched file changes: still no restart, and the error is not
    # printed again (the broken file did not change)
    (server.directory / 'helper.py').write_text('X = 1\n')
    server.edit("VERSION = 'one' +", "VERSION = 'three'")
    after = server.wait_version('three', '/sync/version')
    assert after['pid'] != before['pid']
    assert server.log.count('SyntaxError') == 1, server.log
    assert server.log.count('restarting the server') == 1, server.log


def test_an_error_printed_again_once_the_broken_file_changes(reloading):
    server = reloading('--reload-poll')
    before = server.version('/sync/version')
    server.edit("VERSION = 'one'", "VERSION = 'one' +")
    wait_until(lambda: server.log.count('SyntaxError') == 1, 20,
               message=lambda: server.log)
    server.edit("VERSION = 'one' +", "VERSION = 'one' + +")
    wait_until(lambda: server.log.count('SyntaxError') == 2, 20,
               message=lambda: server.log)
    assert server.version('/sync/version') == before


def test_signals_stop_the_child(reloading):
    server = reloading('--reload-poll')
    child = server.version('/sync/version')['pid']
    worker = server.version()['pid']
    assert server.stop() == 0
    assert not pid_alive(child)
    wait_until(lambda: not pid_alive(worker))
    assert not os.path.exists(server.sock)


def test_sigint_is_forwarded_once(reloading):
    server = reloading('--reload-poll')
    child = server.version('/sync/version')['pid']
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(20) == 0
    assert not pid_alive(child)
    assert 'SIGINT' in server.log


def test_reload_include_picks_up_other_files(reloading):
    server = reloading('--reload-poll', '--reload-include', '*.txt')
    first = server.version('/sync/version')
    (server.directory / 'notes.txt').write_text('changed\n')
    wait_until(lambda: 'notes.txt changed' in server.log, 20,
               message=lambda: server.log)
    wait_until(lambda: (answer(server.sock, '/sync/version') or first)['pid']
               != first['pid'], 20, message=lambda: server.log)


def test_file_filter():
    watched = reloader.FileFilter(['*.py'], ['.*', '__pycache__', '*~'])
    assert watched('/app/main.py')
    assert watched('/app/pkg/mod.py')
    assert not watched('/app/notes.txt')
    assert not watched('/app/__pycache__/main.py')
    assert not watched('/app/.venv/lib/site.py')
    assert not watched('/app/.hidden.py')


def test_compile_error(tmp_path):
    good = tmp_path / 'good.py'
    good.write_text('x = 1\n')
    bad = tmp_path / 'bad.py'
    bad.write_text('x = (\n')
    assert reloader.compile_error(str(good)) is None
    assert reloader.compile_error(str(tmp_path / 'notes.txt')) is None
    error = reloader.compile_error(str(bad))
    assert error.startswith(f'{bad}:1: SyntaxError')


def test_polling_is_the_fallback_without_watchfiles(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'watchfiles', None)   # not importable
    stop = reloader.threading.Event()
    watcher = reloader.make_watcher(
        [str(tmp_path)], reloader.FileFilter(['*.py'], []), stop)
    assert isinstance(watcher, reloader.PollingWatcher)
    (tmp_path / 'new.py').write_text('x = 1\n')
    assert watcher.changes() == {str(tmp_path / 'new.py')}
