"""Every option of the command line, declared once.

Owns the table `SETTINGS`: each Dispatcher keyword the command line can set
and each option only the command line has, with its type, default, CLI
flag, environment name (`UHTTP_WORKERS_<NAME>`), TOML key and help line.
The argument parser (cli.py), the environment and TOML readers here and
the Markdown reference (`python -m uhttp.workers.settings --markdown`,
committed as docs/configuration.md) are all generated from it. Adding a
Dispatcher option to the command line is one `Setting(...)` entry.

Must never: import the application, start anything, or hold a second list
of option names; `NOT_CLI` names the constructor keywords that are left to
the application on purpose, so that a test can tell forgotten from omitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from .log import LEVEL_NAMES
from .options import near_miss
from .pidfile import PidFile
from .privileges import parse_umask

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

# The value of one option: its type is the option's `kind`, known only at
# run time (bool, int, float, str, list of str, ...), and it is handed on
# as a keyword or an attribute of the Dispatcher, so it stays Any here.
Value: TypeAlias = Any
# {option name: value}, as the sources give them
Values: TypeAlias = dict[str, Value]

ENV_PREFIX = 'UHTTP_WORKERS_'
# set by the reloader in the environment of the server it runs
RELOADER_ENV = 'UHTTP_WORKERS_RELOADER'

# UHTTP_WORKERS_* names that are not options: set by the dispatcher for a
# successor it starts (SIGUSR2) and by the reloader for its child
RESERVED_ENV = frozenset({
    'UHTTP_WORKERS_LISTEN_FD', 'UHTTP_WORKERS_READY_FD',
    'UHTTP_WORKERS_PREDECESSOR', RELOADER_ENV})

_LEVELS = {name.lower(): level for level, name in LEVEL_NAMES.items()}


class SettingError(ValueError):
    """A value or a name in the configuration is wrong; the message is one
    line that names where it came from."""


# -- types: how text (CLI, env) and TOML values become option values ------

def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ('1', 'true', 'yes', 'on'):
        return True
    if value in ('0', 'false', 'no', 'off', ''):
        return False
    raise ValueError(f'{text!r} is not a boolean (true/false, 1/0, yes/no)')


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(',') if part.strip()]


def _parse_level(text: object) -> int:
    value = str(text).strip().lower()
    if value in _LEVELS:
        return _LEVELS[value]
    if value.isdigit():
        return int(value)
    raise ValueError(f'{text!r} is not a log level ('
                     + ', '.join(_LEVELS) + ')')


def _toml_list(value: object) -> list[str]:
    if isinstance(value, str):
        return _parse_list(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f'{value!r} is not a list of strings')


def _toml_typed(*types: type) -> Callable[[object], Value]:
    def check(value: object) -> Value:
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f'{value!r} is not a {types[0].__name__}')
        if not isinstance(value, types):
            raise ValueError(f'{value!r} is not a {types[0].__name__}')
        return value
    return check


def _toml_level(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _parse_level(value)
    raise ValueError(f'{value!r} is not a log level')


def _parse_age(text: str) -> float | str:
    """'daily', 'hourly', ... as given; a number as seconds."""
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _toml_age(value: object) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f'{value!r} is not a name or a number of seconds')
    return value


def _toml_umask(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'{value!r} is not an octal umask')
    return parse_umask(value)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A type of option: `parse` reads CLI and env text, `from_toml` checks
    a TOML value, `doc` names it in the reference."""
    doc: str
    parse: Callable[[str], Value]
    from_toml: Callable[[object], Value]


KINDS: dict[str, Kind] = {
    'int': Kind('integer', int, _toml_typed(int)),
    'float': Kind('number', float, lambda v: float(_toml_typed(int, float)(v))),
    'str': Kind('string', str, _toml_typed(str)),
    'path': Kind('path', str, _toml_typed(str)),
    'bool': Kind('boolean', _parse_bool, _toml_typed(bool)),
    'list': Kind('list of strings (comma-separated in CLI and env)',
                 _parse_list, _toml_list),
    'level': Kind('log level (debug, info, warning, error, critical)',
                  _parse_level, _toml_level),
    'age': Kind("'daily', 'hourly', 'weekly' or seconds", _parse_age,
                _toml_age),
    'umask': Kind('octal umask, e.g. 027', parse_umask, _toml_umask),
}


# -- how a value reaches the application -----------------------------------

def parse_bind(text: str) -> tuple[str, int | None]:
    """(address, port) of `host:port`, `[v6]:port`, `:port` (every IPv4
    interface) or `unix:/path` (port None: a Unix-domain socket)."""
    text = text.strip()
    if text.startswith('unix:'):
        if not text[5:]:
            raise ValueError("a Unix socket needs a path: 'unix:/run/app.sock'")
        return text, None
    if text.startswith('['):
        host, sep, rest = text[1:].partition(']')
        if not sep or not rest.startswith(':'):
            raise ValueError(f'{text!r}: expected [address]:port')
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(':')
        if not sep:
            raise ValueError(f'{text!r}: expected host:port, [::]:port, '
                             ':port or unix:/path')
        if ':' in host:
            raise ValueError(f'{text!r}: put an IPv6 address in brackets, '
                             f'[{host}]:{port}')
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f'{text!r}: {port!r} is not a port number')
    return host or '0.0.0.0', int(port)


def _bind_keywords(value: str) -> dict[str, str | int]:
    address, port = parse_bind(value)
    return {'address': address} if port is None else \
        {'address': address, 'port': port}


def _set_attribute(dispatcher: Dispatcher, name: str, value: Value) -> None:
    setattr(dispatcher, name, value)


def _set_server_option(dispatcher: Dispatcher, name: str,
                       value: Value) -> None:
    # read when run() builds the HTTP server, so still in time
    dispatcher._server_options[name] = value  # pylint: disable=protected-access


def _set_log_level(dispatcher: Dispatcher, _name: str, value: int) -> None:
    dispatcher.log.level = value


def _set_pid_file(dispatcher: Dispatcher, _name: str,
                  value: str | None) -> None:
    dispatcher._pid_file = PidFile(value) if value else None  # pylint: disable=protected-access


def _set_bind(dispatcher: Dispatcher, _name: str, value: str) -> None:
    for name, item in _bind_keywords(value).items():
        setattr(dispatcher, name, item)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One option. `target` is 'dispatcher' (a keyword of
    `Dispatcher.__init__`) or 'cli' (the command line uses it itself).
    `to_keywords(value)` gives the Dispatcher keywords of a 'cli' option
    that stands for some (bind: address and port).
    `on_instance(dispatcher, name, value)` applies it to a Dispatcher
    instance; None means it cannot be changed once one is built. `env` and
    `toml` False keep it out of those sources; `negatable` gives a boolean
    its `--no-` form."""
    name: str
    kind: str
    default: Value
    help: str
    target: str = 'dispatcher'
    flag: str | None = None
    metavar: str | None = None
    on_instance: Callable[[Dispatcher, str, Value], None] | None = None
    to_keywords: Callable[[Value], dict[str, Value]] | None = None
    env: bool = True
    toml: bool = True
    negatable: bool = True
    group: str = 'Server'

    @property
    def cli_flag(self) -> str:
        """The long option, `--max-pending` for `max_pending`."""
        return self.flag or '--' + self.name.replace('_', '-')

    @property
    def env_name(self) -> str | None:
        """`UHTTP_WORKERS_MAX_PENDING`, or None when env cannot set it."""
        return ENV_PREFIX + self.name.upper() if self.env else None

    @property
    def toml_key(self) -> str | None:
        """The key in a --config file, or None."""
        return self.name if self.toml else None

    def keywords(self, value: Value) -> dict[str, Value]:
        """The Dispatcher keywords this value stands for ({} for none)."""
        if self.to_keywords is not None:
            return self.to_keywords(value)
        if self.target == 'dispatcher':
            return {self.name: value}
        return {}


S = Setting
SETTINGS = (
    # -- what to run --------------------------------------------------------
    S('factory', 'bool', False,
      'APP is a callable returning a Dispatcher: call it', target='cli',
      negatable=False, group='Application'),
    S('app_dir', 'path', '.',
      'directory put first on sys.path to import APP', target='cli',
      metavar='DIR', group='Application'),
    S('config', 'path', None,
      'TOML file of options (keys as in the TOML column)', target='cli',
      metavar='FILE', toml=False, group='Application'),
    S('check_config', 'bool', False,
      'build the application, print its routes and exit (non-zero and a '
      'one-line message on a configuration error)', target='cli',
      env=False, toml=False, negatable=False, group='Application'),
    # -- listening -----------------------------------------------------------
    S('bind', 'str', '0.0.0.0:8080',
      'host:port, [::]:port, :port (every IPv4 interface) or unix:/path',
      target='cli', flag='--bind', metavar='ADDRESS', on_instance=_set_bind,
      to_keywords=_bind_keywords),
    S('listen_backlog', 'int', 1024,
      'listen() backlog; also how many connections may be parked under '
      'overload'),
    S('max_connections', 'int', 10000, 'open client connections at most',
      on_instance=_set_attribute),
    S('dispatchers', 'int', 1,
      'dispatcher processes sharing the listening socket, each with its '
      'own pools; above 1 a supervisor process runs them',
      on_instance=_set_attribute),
    S('max_pending', 'int', 1000,
      'pool requests the dispatcher holds at most'),
    S('max_content_length', 'int', 1024 * 1024,
      'request body limit in bytes (413 above)',
      on_instance=_set_server_option),
    S('keep_alive_timeout', 'float', 15,
      'seconds an idle keep-alive connection stays open',
      on_instance=_set_server_option),
    S('keep_alive_max_requests', 'int', 1000, 'requests per connection',
      on_instance=_set_server_option),
    S('request_timeout', 'float', 10,
      'seconds for a client to send its whole request (408)',
      on_instance=_set_server_option),
    S('trusted_proxies', 'list', None,
      'proxy IPs whose X-Forwarded-For is believed', metavar='IP,...'),
    S('shutdown_timeout', 'float', 10,
      'seconds to drain pending requests on shutdown',
      on_instance=_set_attribute),
    S('metrics_route', 'str', None,
      'path of the Prometheus metrics route, e.g. /metrics',
      metavar='PATH'),
    # -- WebSocket ----------------------------------------------------------------
    S('ws_max_message_size', 'int', 1024 * 1024,
      'largest WebSocket message a client may send, in bytes (above: '
      'close 1009)', group='WebSocket'),
    S('ws_send_buffer', 'int', 1024 * 1024,
      'bytes the dispatcher buffers for one WebSocket client that does not '
      'read; above, it is dropped (1008)', group='WebSocket'),
    S('ws_ping_interval', 'float', 20,
      'seconds of silence from a WebSocket client before a ping (0: never)',
      group='WebSocket'),
    S('ws_pong_timeout', 'float', 20,
      'seconds a WebSocket client has to answer a ping before it is dropped',
      group='WebSocket'),
    S('ws_idle_timeout', 'float', None,
      'close a WebSocket after this many seconds without a message either '
      'way (default: never)', group='WebSocket'),
    # -- workers ----------------------------------------------------------------
    S('workers', 'int', None,
      'num_workers of every pool that does not set it (default 1)',
      target='cli', metavar='N', group='Workers'),
    # -- logging and files ---------------------------------------------------
    S('log_level', 'level', 20, "level of the dispatcher's own log",
      metavar='LEVEL', on_instance=_set_log_level, group='Logging'),
    S('log_file', 'path', None,
      'append log lines to this file instead of stderr', metavar='FILE',
      group='Logging'),
    S('access_log', 'bool', True, 'log one line per request',
      group='Logging'),
    S('access_log_format', 'str', 'common',
      "access log format: 'common', 'combined', 'json' or a template",
      metavar='FORMAT', group='Logging'),
    S('pid_file', 'path', None, 'write the pid of the dispatcher here',
      flag='--pid', metavar='FILE', on_instance=_set_pid_file,
      group='Logging'),
    S('log_rotate_size', 'int', None,
      'rotate the log file when it reaches this many bytes',
      metavar='BYTES', group='Logging'),
    S('log_rotate_age', 'age', None,
      "rotate the log file by age: 'daily', 'hourly', 'weekly' or seconds",
      metavar='AGE', group='Logging'),
    S('log_rotate_backups', 'int', 7, 'rotated log files kept',
      metavar='N', group='Logging'),
    S('capture_output', 'bool', True,
      "workers' stdout and stderr go to the log, tagged with the worker",
      group='Logging'),
    S('dump_stacks', 'bool', True,
      'SIGCONT logs the stack of every thread of the dispatcher and workers',
      group='Logging'),
    # -- process ---------------------------------------------------------------
    S('user', 'str', None,
      'run dispatcher and workers as this user once the port is bound',
      metavar='USER', group='Process'),
    S('group', 'str', None,
      'run dispatcher and workers with this group once the port is bound',
      metavar='GROUP', group='Process'),
    S('umask', 'umask', None, 'umask of dispatcher and workers',
      metavar='MASK', group='Process'),
    S('allow_root', 'bool', False,
      'run as root without user= and without the warning', group='Process'),
    S('daemon', 'bool', False,
      'detach from the terminal (needs log_file; writes pid_file)',
      flag='--daemon', group='Process'),
    S('daemon_chdir', 'path', '/', 'working directory of the daemon',
      metavar='DIR', group='Process'),
    # -- development -----------------------------------------------------------
    S('reload', 'bool', False,
      'restart the server when a watched source file changes',
      target='cli', negatable=False, group='Reload'),
    S('reload_dir', 'list', None,
      'directory to watch (repeatable; default: the app directory)',
      target='cli', metavar='DIR', group='Reload'),
    S('reload_include', 'list', ['*.py'],
      'glob of files whose change restarts (repeatable; replaces the '
      'default)', target='cli',
      metavar='GLOB', group='Reload'),
    S('reload_exclude', 'list', ['.*', '*~', '__pycache__'],
      'glob of files and directories never watched (repeatable; replaces '
      'the default)',
      target='cli', metavar='GLOB', group='Reload'),
    S('reload_poll', 'bool', False,
      'watch by stat polling even when watchfiles is installed',
      target='cli', negatable=False, group='Reload'),
)
del S

BY_NAME = {setting.name: setting for setting in SETTINGS}
BY_ENV = {s.env_name: s for s in SETTINGS if s.env_name}
BY_TOML = {s.toml_key: s for s in SETTINGS if s.toml_key}

# Constructor keywords the command line leaves to the application, and why.
NOT_CLI: dict[str, dict[str, str]] = {
    'Dispatcher': {
        'port': 'set with bind',
        'address': 'set with bind',
        'pools': 'built by the application',
        'static_routes': 'built by the application',
        'ssl_context': 'an ssl.SSLContext object, built by the application',
        'services': 'objects built by the application',
        'jobs': 'objects built by the application',
        'job_lock': 'chosen by the application',
    },
    'WorkerPool': dict(
        {'num_workers': 'set with workers, for pools that leave it unset'},
        **{name: 'per pool, set by the application' for name in (
            'worker_class', 'routes', 'timeout', 'stuck_timeout',
            'heartbeat_interval', 'log_level', 'max_restarts',
            'restart_window', 'queue_warning', 'name',
            'unrecoverable_exit_codes', 'worker_kill_timeout',
            'max_requests', 'max_requests_jitter', 'max_memory',
            'start_method', 'setup_timeout', 'recovery_interval',
            'permanent_failure_exitcode', 'worker_memory_limit_mb',
            'exit_on_startup_failure', 'graceful_timeout',
            'start_worker_delay', 'start_worker_delay_rand',
            'restart_worker_interval', 'worker_kwargs')}),
}


# -- reading the sources -------------------------------------------------------

def convert(setting: Setting, text: str, where: str) -> Value:
    """The value of `setting` from CLI or env text; SettingError if bad."""
    try:
        return KINDS[setting.kind].parse(text)
    except ValueError as err:
        raise SettingError(f'{where}: {err}') from None


def from_environ(environ: Mapping[str, str]) -> Values:
    """{name: value} of the UHTTP_WORKERS_* variables in `environ`.

    A name that is a near miss of an option's is an error; other unknown
    names are left alone (other programs may use the prefix)."""
    values: Values = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or key in RESERVED_ENV:
            continue
        setting = BY_ENV.get(key)
        if setting is None:
            # compared without the prefix, which every name shares
            suggestion = near_miss(key[len(ENV_PREFIX):],
                                   [name[len(ENV_PREFIX):] for name in BY_ENV])
            if suggestion is not None:
                raise SettingError(f'unknown environment variable {key}; '
                                   f'did you mean {ENV_PREFIX}{suggestion}?')
            continue
        values[setting.name] = convert(setting, text, key)
    return values


def read_toml(path: str) -> dict[str, Any]:
    """The parsed TOML file at `path` (tomllib, or tomli on Python 3.10)."""
    # imported by name: a type check for Python 3.10 knows no tomllib, and
    # tomli may not be installed where it runs
    try:
        tomllib = importlib.import_module('tomllib')
    except ImportError:
        try:
            tomllib = importlib.import_module('tomli')
        except ImportError:
            raise SettingError(
                f'{path}: reading TOML needs Python 3.11+ or the tomli '
                'package on Python 3.10 (pip install tomli)') from None
    try:
        with open(path, 'rb') as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as err:
        raise SettingError(f'{path}: {err.strerror}') from None
    except tomllib.TOMLDecodeError as err:
        raise SettingError(f'{path}: {err}') from None


def from_toml(data: Mapping[str, object], path: str) -> Values:
    """{name: value} of a parsed TOML table; unknown keys are errors."""
    values: Values = {}
    for key, value in data.items():
        setting = BY_TOML.get(key)
        if setting is None:
            suggestion = near_miss(key, BY_TOML)
            hint = f'; did you mean {suggestion!r}?' if suggestion else ''
            raise SettingError(f'{path}: unknown key {key!r}{hint}')
        try:
            values[key] = KINDS[setting.kind].from_toml(value)
        except ValueError as err:
            raise SettingError(f'{path}: {key}: {err}') from None
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option to an argparse parser, by group. Nothing has an
    argparse default: an option not given is absent from the namespace."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS:
        group = groups.get(setting.group)
        if group is None:
            group = groups[setting.group] = parser.add_argument_group(
                setting.group)
        options: dict[str, Any] = {'dest': setting.name, 'default': argparse.SUPPRESS,
                   'help': setting.help}
        if setting.kind == 'bool':
            options['action'] = argparse.BooleanOptionalAction \
                if setting.negatable else 'store_true'
        else:
            options['metavar'] = setting.metavar or setting.kind.upper()
            options['type'] = _argparse_type(setting)
            if setting.kind == 'list':
                options['action'] = 'extend'
        group.add_argument(setting.cli_flag, **options)


def _argparse_type(setting: Setting) -> Callable[[str], Value]:
    parse = KINDS[setting.kind].parse

    def convert_text(text: str) -> Value:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert_text.__name__ = setting.kind
    return convert_text


# -- the reference ---------------------------------------------------------------

def _cell(value: str | None) -> str:
    return '—' if value is None else f'`{value}`'


def _default(setting: Setting) -> str:
    value = setting.default
    if setting.kind == 'level' and value in LEVEL_NAMES:
        return f'`{LEVEL_NAMES[value].lower()}`'
    if isinstance(value, bool):
        return f'`{str(value).lower()}`'
    if isinstance(value, list):
        return '`' + ','.join(value) + '`'
    return '—' if value is None else f'`{value}`'


def _flag(setting: Setting) -> str:
    if setting.kind == 'bool' and setting.negatable:
        return f'`{setting.cli_flag}` / `--no-{setting.cli_flag[2:]}`'
    if setting.kind == 'bool':
        return f'`{setting.cli_flag}`'
    return f'`{setting.cli_flag} {setting.metavar or setting.kind.upper()}`'


def markdown() -> str:
    """The configuration reference, in Markdown."""
    lines = [
        '# Configuration reference',
        '',
        '<!-- generated by `python -m uhttp.workers.settings --markdown`;'
        ' do not edit -->',
        '',
        'Usage: `uhttp-workers [OPTIONS] APP` or '
        '`python -m uhttp.workers [OPTIONS] APP`, where APP is '
        '`module:name` and names a Dispatcher subclass, a Dispatcher '
        'instance, or (with `--factory`) a callable returning one.',
        '',
        'Each option comes from, first to last: the command line, the '
        'environment, the `--config` TOML file (top-level keys), the '
        "application's own values (its constructor defaults, the "
        'keywords it passes, the attributes of its instance), the '
        'defaults below. An environment variable or TOML key that is a '
        "near miss of a known one is an error that says 'did you mean'.",
        '',
    ]
    groups: list[str] = []
    for setting in SETTINGS:
        if setting.group not in groups:
            groups.append(setting.group)
    for group in groups:
        lines += [f'## {group}', '',
                  '| option | environment | TOML | type | default | meaning |',
                  '|---|---|---|---|---|---|']
        for setting in SETTINGS:
            if setting.group != group:
                continue
            meaning = setting.help
            if setting.target == 'dispatcher':
                meaning += f' (Dispatcher `{setting.name}`)'
            if setting.target == 'dispatcher' and setting.on_instance is None:
                meaning += '; not on a Dispatcher instance'
            lines.append(
                f'| {_flag(setting)} | {_cell(setting.env_name)} | '
                f'{_cell(setting.toml_key)} | {KINDS[setting.kind].doc} | '
                f'{_default(setting)} | {meaning} |')
        lines.append('')
    lines += ['## Left to the application', '',
              'These constructor keywords have no option: the application '
              'sets them.', '']
    for owner, names in NOT_CLI.items():
        reasons: dict[str, list[str]] = {}
        for name, why in names.items():
            reasons.setdefault(why, []).append(f'`{name}`')
        lines.append(f'- `{owner}`: ' + '; '.join(
            f"{', '.join(names)} ({why})" for why, names in reasons.items()))
    lines.append('')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m uhttp.workers.settings --markdown [--output FILE]`."""
    parser = argparse.ArgumentParser(
        prog='python -m uhttp.workers.settings',
        description='Print the configuration reference.')
    parser.add_argument('--markdown', action='store_true', required=True)
    parser.add_argument('--output', metavar='FILE')
    args = parser.parse_args(argv)
    text = markdown()
    if args.output:
        with open(args.output, 'w', encoding='utf-8') as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
