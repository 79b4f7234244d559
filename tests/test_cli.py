"""The command line: `python -m uhttp.workers` / `uhttp-workers`.

Real processes on real sockets: every --bind form (a request over AF_UNIX
included), the sources of options and their precedence, --check-config,
--workers, --pid and the target forms. Unit tests check that settings.py
declares every constructor keyword and that docs/configuration.md is the
generated reference.
"""

import http.client
import inspect
import json
import os
import socket
import subprocess
import sys

import pytest

import uhttp.workers as _workers
from uhttp.workers import settings
from uhttp.workers.settings import parse_bind

from conftest import APPS, ROOT, Server, pid_alive, wait_until

APP = 'cli_app:CliDispatcher'
LOCAL = ('--bind', '127.0.0.1:0')


def cli_env(extra=None):
    """The environment of a CLI process: no UHTTP_WORKERS_* of ours."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(settings.ENV_PREFIX)}
    env.update(extra or {})
    return env


class CliServer(Server):
    """A dispatcher started by `python -m uhttp.workers ARGS` in tests/apps."""

    def __init__(self, *args, env=None, cwd=APPS):
        super().__init__('-m', env=env, cwd=cwd,
                         args=('uhttp.workers', *args))
        self.proc_env = env


@pytest.fixture
def cli():
    """Factory: cli(*args, env=..., ready_workers=N) → a started server."""
    servers = []

    def start(*args, env=None, ready_workers=0, listening=True):
        server = CliServer(*args, env=cli_env(env))
        servers.append(server)
        if listening:
            server.start(ready_workers)
        return server

    yield start
    for server in servers:
        server.stop()


def run_cli(*args, env=None, cwd=APPS):
    """Run the command line to its end; (exit status, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, '-m', 'uhttp.workers', *args], cwd=cwd,
        env=cli_env(env), capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout, result.stderr


def unix_get(path, url, timeout=10.0):
    """GET `url` over the Unix-domain socket at `path`: (status, body)."""
    connection = http.client.HTTPConnection('localhost', timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    connection.sock = sock
    try:
        connection.request('GET', url)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ipv6_loopback():
    """True when a socket can be bound on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(('::1', 0))
    except OSError:
        return False
    return True


# -- settings.py: one declaration, no drift ------------------------------------

def _keywords(function):
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name != 'self']


@pytest.mark.parametrize('owner', ['Dispatcher', 'WorkerPool'])
def test_every_constructor_keyword_is_declared(owner):
    cls = getattr(_workers, owner)
    declared = {s.name for s in settings.SETTINGS
                if s.target == 'dispatcher'} if owner == 'Dispatcher' \
        else set()
    left_out = set(settings.NOT_CLI[owner])
    missing = [name for name in _keywords(cls.__init__)
               if name not in declared | left_out]
    assert not missing, (
        f'{owner}.__init__ keywords neither declared in settings.SETTINGS '
        f'nor listed in settings.NOT_CLI[{owner!r}]: {missing}')


def test_declared_defaults_are_the_dispatchers():
    parameters = inspect.signature(_workers.Dispatcher.__init__).parameters
    for setting in settings.SETTINGS:
        if setting.target == 'dispatcher' and setting.name in parameters:
            assert parameters[setting.name].default == setting.default, \
                setting.name


def test_configuration_reference_is_generated():
    with open(os.path.join(ROOT, 'docs', 'configuration.md'),
              encoding='utf-8') as handle:
        committed = handle.read()
    assert committed == settings.markdown(), (
        'docs/configuration.md is stale: run python -m uhttp.workers.settings'
        ' --markdown --output docs/configuration.md')


def test_reference_lists_every_option():
    text = settings.markdown()
    for setting in settings.SETTINGS:
        assert f'`{setting.cli_flag}' in text
        if setting.env_name:
            assert f'`{setting.env_name}`' in text


def test_reference_command():
    code, out, _ = run_cli('--help')
    assert code == 0 and '--bind ADDRESS' in out and '--reload' in out
    result = subprocess.run(
        [sys.executable, '-m', 'uhttp.workers.settings', '--markdown'],
        capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout == settings.markdown()


@pytest.mark.parametrize('text, expected', [
    ('127.0.0.1:8000', ('127.0.0.1', 8000)),
    ('[::]:8000', ('::', 8000)),
    ('[::1]:0', ('::1', 0)),
    (':9000', ('0.0.0.0', 9000)),
    ('localhost:80', ('localhost', 80)),
    ('unix:/run/app.sock', ('unix:/run/app.sock', None)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize('text', [
    '127.0.0.1', '::1:80', '[::1]80', 'host:http', ':70000', 'unix:'])
def test_parse_bind_refuses(text):
    with pytest.raises(ValueError):
        parse_bind(text)


def test_env_near_miss_is_refused_and_unrelated_names_ignored():
    with pytest.raises(settings.SettingError, match='did you mean '
                       'UHTTP_WORKERS_MAX_PENDING'):
        settings.from_environ({'UHTTP_WORKERS_MAX_PENDNG': '5'})
    assert settings.from_environ({
        'UHTTP_WORKERS_SOMETHING_ELSE_ENTIRELY': 'x',
        'UHTTP_WORKERS_LISTEN_FD': '3',
        'UHTTP_WORKERS_MAX_PENDING': '5'}) == {'max_pending': 5}


def test_toml_values_are_typed():
    values = settings.from_toml(
        {'workers': 3, 'keep_alive_timeout': 2, 'log_level': 'debug',
         'trusted_proxies': ['10.0.0.1'], 'access_log': True}, 'x.toml')
    assert values == {'workers': 3, 'keep_alive_timeout': 2.0,
                      'log_level': 10, 'trusted_proxies': ['10.0.0.1'],
                      'access_log': True}
    with pytest.raises(settings.SettingError, match='workers'):
        settings.from_toml({'workers': 'three'}, 'x.toml')
    with pytest.raises(settings.SettingError, match='workers'):
        settings.from_toml({'workers': True}, 'x.toml')


# -- --bind ------------------------------------------------------------------------

def test_bind_host_port(cli):
    server = cli(APP, *LOCAL, ready_workers=2)
    assert server.get('/api/hello').json()['hello'] == 'world'
    assert server.get('/settings').json()['address'] == '127.0.0.1'


def test_bind_port_only_listens_on_every_ipv4_interface(cli):
    server = cli(APP, '--bind', ':0', ready_workers=2)
    assert server.get('/settings').json()['address'] == '0.0.0.0'
    assert server.get('/api/hello').status == 200


def test_bind_ipv6(cli):
    if not ipv6_loopback():
        pytest.skip('IPv6 is not available on the loopback interface')
    server = cli(APP, '--bind', '[::1]:0', ready_workers=2)
    assert 'listening on http://[::1]:' in server.log
    connection = http.client.HTTPConnection('::1', server.port, timeout=10)
    try:
        connection.request('GET', '/api/hello')
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    assert b'"hello": "world"' in body


def test_bind_unix_replaces_a_stale_file_and_removes_it_at_exit(cli, tmp_path):
    path = str(tmp_path / 'app.sock')
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)    # a socket file nobody listens on any more
    stale.close()
    server = cli(APP, '--bind', f'unix:{path}', listening=False)
    server.wait_log(r'listening on unix:' + path)
    wait_until(lambda: server.count_log(r'worker .* ready') >= 2,
               message=lambda: server.log)
    status, body = unix_get(path, '/api/hello')
    assert status == 200, body
    assert b'"remote": ""' in body   # a Unix peer has no address
    status, body = unix_get(path, '/settings')
    assert f'"address": "unix:{path}"'.encode() in body
    status, body = unix_get(path, '/static/hello.txt')
    assert (status, body) == (200, b'hello\n')
    server.signal(15)
    assert server.wait_exit() == 0
    assert not os.path.exists(path)


def test_bind_unix_refuses_a_socket_in_use(tmp_path):
    path = str(tmp_path / 'busy.sock')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        code, _, err = run_cli(APP, '--bind', f'unix:{path}')
        assert os.path.exists(path)     # left to its owner
    assert code == 1
    assert f'cannot listen on unix:{path}: address already in use' in err


def test_bind_unix_refuses_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / 'plain'
    path.write_text('data')
    code, _, err = run_cli(APP, '--bind', f'unix:{path}')
    assert code == 1 and 'is not a socket' in err
    assert path.read_text() == 'data'


# -- sources and precedence -----------------------------------------------------------

def test_the_applications_own_values_stand_when_nothing_is_given(cli):
    server = cli(APP, *LOCAL)
    got = server.get('/settings').json()
    assert got['shutdown_timeout'] == 7      # CliDispatcher's own default
    assert got['max_pending'] == 1000        # Dispatcher's default
    assert got['workers'] == {'main': 1, 'fixed': 1}


def test_precedence_cli_over_env_over_toml_over_app(cli, tmp_path):
    config = tmp_path / 'app.toml'
    config.write_text('shutdown_timeout = 3\nrequest_timeout = 4\n'
                      'max_pending = 60\nkeep_alive_timeout = 9\n'
                      'log_level = "warning"\n')
    server = cli(APP, *LOCAL, '--config', str(config), '--max-pending', '70',
                 env={'UHTTP_WORKERS_REQUEST_TIMEOUT': '5',
                      'UHTTP_WORKERS_MAX_PENDING': '65',
                      'UHTTP_WORKERS_LOG_LEVEL': 'info'})
    got = server.get('/settings').json()
    assert got['shutdown_timeout'] == 3     # TOML over the app's 7
    assert got['request_timeout'] == 5      # env over TOML
    assert got['max_pending'] == 70         # CLI over env and TOML
    assert got['keep_alive_timeout'] == 9   # TOML over the default
    assert got['log_level'] == _workers.LOG_INFO


def test_bind_from_env_and_config_file_from_env(cli, tmp_path):
    config = tmp_path / 'app.toml'
    config.write_text('bind = "127.0.0.2:0"\nshutdown_timeout = 2\n')
    server = cli(APP, env={'UHTTP_WORKERS_CONFIG': str(config),
                           'UHTTP_WORKERS_BIND': '127.0.0.1:0'})
    got = server.get('/settings').json()
    assert got['address'] == '127.0.0.1' and got['shutdown_timeout'] == 2


def test_toml_unknown_key_says_did_you_mean(tmp_path):
    config = tmp_path / 'app.toml'
    config.write_text('shutdown_timout = 3\n')
    code, _, err = run_cli(APP, '--config', str(config), '--check-config')
    assert code == 1
    assert "unknown key 'shutdown_timout'; did you mean 'shutdown_timeout'?" \
        in err
    config.write_text('colour = "blue"\n')
    code, _, err = run_cli(APP, '--config', str(config), '--check-config')
    assert code == 1 and "unknown key 'colour'" in err


def test_env_near_miss_exits_with_did_you_mean():
    code, _, err = run_cli(APP, '--check-config',
                           env={'UHTTP_WORKERS_WORKER': '3'})
    assert code == 1
    assert err.strip() == ('uhttp-workers: error: unknown environment '
                           'variable UHTTP_WORKERS_WORKER; did you mean '
                           'UHTTP_WORKERS_WORKERS?')


def test_bad_values_name_their_source(tmp_path):
    code, _, err = run_cli(APP, '--check-config',
                           env={'UHTTP_WORKERS_MAX_PENDING': 'many'})
    assert code == 1 and 'UHTTP_WORKERS_MAX_PENDING' in err
    code, _, err = run_cli(APP, '--check-config', '--workers', 'x')
    assert code == 2 and '--workers' in err
    config = tmp_path / 'bad.toml'
    config.write_text('workers = [1\n')
    code, _, err = run_cli(APP, '--check-config', '--config', str(config))
    assert code == 1 and str(config) in err


# -- --check-config ----------------------------------------------------------------

def test_check_config_prints_every_route(tmp_path):
    code, out, err = run_cli(APP, '--check-config', '--workers', '3',
                             '--bind', 'unix:' + str(tmp_path / 's.sock'))
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert ['KIND', 'POOL', 'PREFIX', 'PATTERN', 'METHODS', 'HANDLER',
            'WORKERS'] in lines
    assert ['api', 'main', '/api/**', '/api/hello', 'GET',
            'HelloWorker.hello', 'HelloWorker', 'x3'] in lines
    assert ['api', 'fixed', '/fixed/**', '/fixed/pid', 'GET,POST',
            'FixedWorker.pid', 'FixedWorker', 'x1'] in lines
    assert ['sync', '(dispatcher)', '/settings', 'ANY',
            'CliDispatcher.report_settings'] in lines
    assert ['static', '(dispatcher)', '/static/', '/static/*', 'GET,HEAD',
            os.path.join(APPS, 'static_cli')] in lines
    assert out.rstrip().endswith('configuration OK')
    assert not os.path.exists(tmp_path / 's.sock')   # nothing was bound


def test_check_config_error_is_one_line():
    code, out, err = run_cli('cli_app:broken', '--factory', '--check-config')
    assert code == 1 and out == ''
    assert err.strip() == ("uhttp-workers: error: ValueError: pools 'a' and "
                           "'b' both claim route '/api/**'; 'b' would never "
                           'serve it')


@pytest.mark.parametrize('target, message', [
    ('cli_app:not_a_dispatcher', 'is a int, not a Dispatcher'),
    ('cli_app:make', 'with --factory it is called'),
    ('cli_app:nothing', "module 'cli_app' has no attribute 'nothing'"),
    ('no_such_module:App', "cannot import 'no_such_module'"),
    ('cli_app', "APP must be 'module:name'"),
])
def test_bad_targets(target, message):
    code, _, err = run_cli(target, '--check-config')
    assert code == 1 and message in err, err


def test_app_dir_is_put_on_sys_path(tmp_path):
    code, out, err = run_cli(APP, '--check-config', '--app-dir', APPS,
                             cwd=str(tmp_path))
    assert code == 0 and 'configuration OK' in out, err


# -- target forms ---------------------------------------------------------------------

def test_instance_gets_the_options_that_can_change(cli):
    server = cli('cli_app:instance', *LOCAL,
                 env={'UHTTP_WORKERS_SHUTDOWN_TIMEOUT': '4'})
    got = server.get('/settings').json()
    assert got['shutdown_timeout'] == 4
    assert got['max_pending'] == 50      # the instance's own value


def test_instance_refuses_an_option_fixed_at_construction():
    code, _, err = run_cli('cli_app:instance', '--max-pending', '10',
                           '--check-config')
    assert code == 1
    assert '--max-pending: max_pending cannot be changed on a Dispatcher ' \
        'instance (cli_app:instance)' in err


def test_factory(cli):
    server = cli('cli_app:make', '--factory', *LOCAL, '--workers', '2',
                 ready_workers=3)
    got = server.get('/settings').json()
    assert got['shutdown_timeout'] == 5
    assert got['workers'] == {'main': 2, 'fixed': 1}


def test_console_script_runs_the_same_command_line():
    script = os.path.join(os.path.dirname(sys.executable), 'uhttp-workers')
    if not os.path.exists(script):
        pytest.skip('the package is not installed with its console script')
    result = subprocess.run([script, APP, '--check-config'], cwd=APPS,
                            env=cli_env(), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'HelloWorker.hello' in result.stdout


# -- --workers, --pid, access log ---------------------------------------------------

def test_workers_sets_pools_that_leave_it_unset(cli):
    server = cli(APP, *LOCAL, '--workers', '3', ready_workers=4)
    got = server.get('/settings').json()
    assert got['workers'] == {'main': 3, 'fixed': 1}
    wait_until(lambda: server.get('/settings').json()['live'] ==
               {'main': 3, 'fixed': 1})


def test_workers_must_be_positive():
    code, _, err = run_cli(APP, '--workers', '0', '--check-config')
    assert code == 1 and 'workers must be at least 1' in err


def test_pid_file_written_and_removed(cli, tmp_path):
    path = tmp_path / 'app.pid'
    server = cli(APP, *LOCAL, '--pid', str(path))
    pid = server.get('/settings').json()['pid']
    assert pid == server.pid
    assert path.read_text().strip() == str(pid)
    server.signal(15)
    assert server.wait_exit() == 0
    assert not path.exists()


def test_access_log_options_reach_the_dispatcher(cli):
    server = cli(APP, *LOCAL, '--access-log', '--access-log-format',
                 'json', ready_workers=2)
    assert server.get('/api/hello?from=cli').status == 200
    server.wait_log(r'"path":"/api/hello\?from=cli"')


def test_sigusr2_hands_a_unix_socket_over(cli, tmp_path):
    path = str(tmp_path / 'up.sock')
    server = cli(APP, '--bind', f'unix:{path}', listening=False)
    server.wait_log(r'listening on unix:')
    old = wait_until(lambda: _unix_json(path, '/settings'))['pid']
    server.signal(12)   # SIGUSR2: a new dispatcher on the same socket
    new = wait_until(lambda: (_unix_json(path, '/settings') or {}).get(
        'pid') not in (None, old) and _unix_json(path, '/settings'), 30,
        message=lambda: server.log)['pid']
    try:
        assert server.wait_exit(30) == 0     # the old one drained and left
        # its exit left the file to the new dispatcher, which serves on it
        assert os.path.exists(path)
        assert _unix_json(path, '/settings')['pid'] == new
        assert _unix_json(path, '/api/hello')['remote'] == ''
    finally:
        if pid_alive(new):
            os.kill(new, 15)
    wait_until(lambda: not pid_alive(new), 30)
    assert not os.path.exists(path)


def _unix_json(path, url):
    """The JSON answer over the Unix socket, or None while none comes."""
    try:
        status, body = unix_get(path, url)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def test_toml_on_python_without_tomllib_needs_tomli(monkeypatch, tmp_path):
    config = tmp_path / 'app.toml'
    config.write_text('workers = 2\n')
    # as on Python 3.10 without tomli: neither module can be imported
    monkeypatch.setitem(sys.modules, 'tomllib', None)
    monkeypatch.setitem(sys.modules, 'tomli', None)
    with pytest.raises(settings.SettingError,
                       match='needs Python 3.11\\+ or the tomli package'):
        settings.read_toml(str(config))


def test_env_names_are_compared_without_their_common_prefix():
    # 'UHTTP_WORKERS_' alone would make unrelated names look alike
    assert settings.from_environ({'UHTTP_WORKERS_DEBUG': '1',
                                  'UHTTP_WORKERS_TOKEN': 'x'}) == {}
    with pytest.raises(settings.SettingError,
                       match='did you mean UHTTP_WORKERS_LOG_LEVEL'):
        settings.from_environ({'UHTTP_WORKERS_LOGLEVEL': 'debug'})


def test_a_module_that_imports_a_missing_one_says_which(tmp_path):
    (tmp_path / 'needs_missing.py').write_text('import no_such_dependency\n')
    code, _, err = run_cli('needs_missing:App', '--check-config',
                           '--app-dir', str(tmp_path))
    assert code == 1
    assert "No module named 'no_such_dependency'" in err


def test_rolling_restart_spawns_workers_that_import_the_app(cli):
    # new workers of a rolling restart are spawned: they import the app
    # from --app-dir and the command line's __main__ without running it
    server = cli(APP, *LOCAL, '--app-dir', APPS, ready_workers=2)
    before = server.get('/api/hello').json()['pid']
    server.signal(1)    # SIGHUP
    wait_until(lambda: server.count_log(r'pool main: rolling restart done'),
               30, message=lambda: server.log)
    after = server.get('/api/hello').json()['pid']
    assert after != before
    assert 'Dispatcher.run() was called while a worker' not in server.log
