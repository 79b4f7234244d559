"""The command line: `uhttp-workers [OPTIONS] module:name`, and
`uhttp-workers worker module:WorkerClass --redis URL` (remote workers).

Owns turning options (command line > environment > --config TOML > the
application's own values > defaults; the options themselves are declared
in settings.py) into a built Dispatcher, and then running it, printing its
routes (--check-config) or handing over to the reloader (--reload).
Must never: declare an option of its own (settings.py does), guess at a
value the user did not give (an option nobody set is not passed, so the
application's own value stands), or turn a programming error of the
application into a one-line message (only configuration errors are).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from . import settings
from .dispatcher import Dispatcher
from .remote_pool import is_remote
from .settings import BY_NAME, Setting, SettingError, Value, Values
from .worker import collect_routes

PROG = 'uhttp-workers'
# exit status of a configuration error (argparse uses 2 for usage errors)
EXIT_CONFIG = 1

# one row of the --check-config table: kind, pool, prefix, pattern,
# methods, handler, workers
Row = tuple[str, str, str, str, str, str, str]


class Config:
    """The options given by some source, each with where it came from."""

    def __init__(self, app: str) -> None:
        self.app = app
        self.values: Values = {}
        # where each value came from: a flag, a variable, 'file: key'
        self.sources: dict[str, str | None] = {}

    def update(self, values: Mapping[str, Value],
               source: Callable[[str], str | None]) -> None:
        """Take `values` ({name: value}); `source(name)` says where from."""
        for name, value in values.items():
            self.values[name] = value
            self.sources[name] = source(name)

    def get(self, name: str) -> Value:
        """The value of option `name`: given, else its default."""
        if name in self.values:
            return self.values[name]
        return BY_NAME[name].default

    def for_dispatcher(self) -> list[tuple[Setting, Value]]:
        """(setting, value) of every given option that reaches the
        Dispatcher (as keywords, or applied to an instance)."""
        return [(BY_NAME[name], value) for name, value in self.values.items()
                if BY_NAME[name].keywords(value)]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from settings.SETTINGS."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Run a uhttp.workers Dispatcher.',
        epilog='Options also come from UHTTP_WORKERS_<NAME> environment '
        'variables and a --config TOML file; the command line wins. '
        'Reference: docs/configuration.md. Workers of a remote pool, on '
        f'another host: {PROG} worker module:WorkerClass --redis URL (see '
        f'{PROG} worker --help).')
    parser.add_argument(
        'app', metavar='APP',
        help="module:name of a Dispatcher subclass or instance, or of a "
        "factory (with --factory)")
    settings.add_arguments(parser)
    return parser


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    """The Config of parsed `args` and `environ`, TOML file included."""
    config = Config(args.app)
    given = {name: value for name, value in vars(args).items()
             if name != 'app'}
    env_values = settings.from_environ(environ)
    path = given.get('config', env_values.get('config'))
    if path:
        data = settings.from_toml(settings.read_toml(path), path)
        config.update(data, lambda name: f'{path}: {name}')
    config.update(env_values, lambda name: BY_NAME[name].env_name)
    config.update(given, lambda name: BY_NAME[name].cli_flag)
    return config


# -- the application ------------------------------------------------------------

def import_target(spec: str, app_dir: str) -> object:
    """The object `module:name` names, importing from `app_dir` first."""
    module_name, sep, attribute = spec.partition(':')
    if not sep or not module_name or not attribute:
        raise SettingError(f"APP must be 'module:name', not {spec!r}")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name and \
                not module_name.startswith(f'{err.name}.'):
            raise   # the module was found; something it imports was not
        raise SettingError(f'cannot import {module_name!r} '
                           f'(looked in {path} and sys.path)') from None
    target: object = module
    for part in attribute.split('.'):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SettingError(f'module {module_name!r} has no attribute '
                               f'{attribute!r}') from None
    return target


def build(config: Config) -> Dispatcher:
    """The Dispatcher of `config`, with every given option applied."""
    target = import_target(config.app, config.get('app_dir'))
    if config.get('factory'):
        if not callable(target):
            raise SettingError(f'{config.app} is not callable (--factory)')
        dispatcher = target()
        if not isinstance(dispatcher, Dispatcher):
            raise SettingError(f'{config.app}() returned '
                               f'{type(dispatcher).__name__}, not a '
                               'Dispatcher')
        _apply_to_instance(dispatcher, config)
    elif isinstance(target, type) and issubclass(target, Dispatcher):
        keywords: Values = {}
        for setting, value in config.for_dispatcher():
            keywords.update(setting.keywords(value))
        dispatcher = target(**keywords)
    elif isinstance(target, Dispatcher):
        dispatcher = target
        _apply_to_instance(dispatcher, config)
    else:
        hint = '; with --factory it is called' if callable(target) else ''
        raise SettingError(f'{config.app} is a {type(target).__name__}, not '
                           f'a Dispatcher subclass or instance{hint}')
    _apply_workers(dispatcher, config)
    return dispatcher


def _apply_to_instance(dispatcher: Dispatcher, config: Config) -> None:
    for setting, value in config.for_dispatcher():
        if setting.on_instance is None:
            raise SettingError(
                f'{config.sources[setting.name]}: {setting.name} cannot be '
                f'changed on a Dispatcher instance ({config.app}) once it is '
                'built; name the Dispatcher class instead, or pass it in '
                'the application')
        setting.on_instance(dispatcher, setting.name, value)


def _apply_workers(dispatcher: Dispatcher, config: Config) -> None:
    count = config.get('workers')
    if count is None:
        return
    if count < 1:
        raise SettingError(f'{config.sources["workers"]}: workers must be '
                           'at least 1')
    for pool in dispatcher.pools:
        if not pool.num_workers_given:
            pool.num_workers = count


# -- --check-config -------------------------------------------------------------

def route_rows(dispatcher: Dispatcher) -> list[Row]:
    """Rows (kind, pool, prefix, pattern, methods, handler, worker class)
    of every pool route, @sync route and static mount."""
    rows: list[Row] = []
    for pool in dispatcher.pools:
        prefixes = ', '.join(pool.routes) if pool.routes is not None \
            else '(fallback)'
        if is_remote(pool):     # its routes are served on other hosts
            rows.append(('remote', pool.name, prefixes, '', '', '', ''))
            continue
        worker = f'{pool.worker_class.__name__} x{pool.num_workers}'
        for pattern, methods, handler_class, name in collect_routes(
                pool.worker_class):
            owner = handler_class or pool.worker_class
            rows.append(('api', pool.name, prefixes, pattern,
                         ','.join(methods) or 'ANY',
                         f'{owner.__name__}.{name}', worker))
    for pattern, methods, name in sync_routes(type(dispatcher)):
        rows.append(('sync', '(dispatcher)', '', pattern,
                     ','.join(methods) or 'ANY',
                     f'{type(dispatcher).__name__}.{name}', ''))
    for prefix, (root, _, authoritative) in dispatcher._static._static._routes:  # pylint: disable=protected-access
        rows.append(('static', '(dispatcher)', prefix, prefix + '*', 'GET,HEAD',
                     root + (' (authoritative)' if authoritative else ''), ''))
    return rows


def sync_routes(dispatcher_class: type[Dispatcher]
                ) -> list[tuple[str, tuple[str, ...], str]]:
    """(pattern, methods, method name) of every @sync route of a class."""
    routes: list[tuple[str, tuple[str, ...], str]] = []
    for klass in reversed(dispatcher_class.__mro__):
        for name, attribute in vars(klass).items():
            for pattern, methods in getattr(attribute, '_uhttp_sync', ()):
                routes.append((pattern, methods, name))
    return routes


def routes_table(dispatcher: Dispatcher) -> str:
    """The routes of `dispatcher` as an aligned text table."""
    header = ('KIND', 'POOL', 'PREFIX', 'PATTERN', 'METHODS', 'HANDLER',
              'WORKERS')
    rows = [header] + route_rows(dispatcher)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return '\n'.join(
        '  '.join(cell.ljust(width) for cell, width in zip(row, widths))
        .rstrip() for row in rows)


def check_config(dispatcher: Dispatcher, config: Config, out: TextIO) -> None:
    """Print what `dispatcher` would serve, and where."""
    address = dispatcher.address
    where = address if address.startswith('unix:') else \
        f"{f'[{address}]' if ':' in address else address}:{dispatcher.port}"
    out.write(f'{config.app}: {type(dispatcher).__name__} on {where}, '
              f'{len(dispatcher.pools)} pools\n')
    for name in sorted(config.values):
        out.write(f'  {name} = {config.values[name]!r} '
                  f'(from {config.sources[name]})\n')
    out.write(routes_table(dispatcher) + '\n')
    out.write('configuration OK\n')


# -- entry point ------------------------------------------------------------------

def main(argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [WORKER_COMMAND]:
        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = resolve(args, environ)
        if config.get('reload') and not config.get('check_config') \
                and settings.RELOADER_ENV not in environ:
            from . import reloader  # pylint: disable=import-outside-toplevel
            return reloader.run(config, argv)
        dispatcher = build(config)
    except (SettingError, ValueError, TypeError, ImportError) as err:
        sys.stderr.write(f'{PROG}: error: {_one_line(err)}\n')
        return EXIT_CONFIG
    if config.get('check_config'):
        check_config(dispatcher, config, sys.stdout)
        return 0
    dispatcher.run()
    return 0


# -- `uhttp-workers worker`: remote workers -------------------------------------

WORKER_COMMAND = 'worker'


def build_worker_parser() -> argparse.ArgumentParser:
    """The argument parser of `uhttp-workers worker`."""
    parser = argparse.ArgumentParser(
        prog=f'{PROG} {WORKER_COMMAND}',
        description='Run the workers of a remote pool on this host. A '
        "dispatcher's RemotePool(name=NAME, redis_url=URL) puts the requests "
        'of its routes into the Redis stream uhttp:NAME:requests; this '
        'process starts N worker processes of WORKER (the same Worker '
        'subclass and @api routes a local pool runs: setup(), teardown(), '
        'self.log, streaming and keep_alive work as there), takes from the '
        'stream only as many requests as it has idle workers, and puts each '
        "answer on the reply stream of the dispatcher that sent it. Run it "
        'on as many hosts as you like: a request runs once, on one of them. '
        "Worker log records go to this process's stderr.",
        epilog='A worker process that dies is restarted (its started '
        'request is answered 502 by the dispatcher). If Redis goes away '
        'the workers keep running and the connection is retried. SIGTERM '
        'or SIGINT: no new requests are taken, started ones finish and '
        'are answered, teardown() runs, exit status 0; a second signal '
        '(or --graceful-timeout) kills the workers. Exit status 1: the '
        'redis package is missing, Redis is unreachable at start (tried '
        'for 5 s), or no worker could start.')
    parser.add_argument(
        'app', metavar='MODULE:WORKER',
        help='module:name of the Worker subclass to run')
    parser.add_argument(
        '--redis', required=True, metavar='URL',
        help='the Redis the dispatchers use, e.g. redis://host:6379/0')
    parser.add_argument(
        '--pool', metavar='NAME', default=None,
        help='name of the remote pool (its RemotePool name=); default: the '
        'worker class name')
    parser.add_argument(
        '--workers', metavar='N', type=int, default=None,
        help='worker processes on this host (default: the CPU count, '
        f'{os.cpu_count() or 1} here)')
    parser.add_argument(
        '--log-level', metavar='LEVEL', type=settings.KINDS['level'].parse,
        default=20, help='level of the log of this process and of its '
        'workers: debug, info (default), warning, error, critical')
    parser.add_argument(
        '--app-dir', metavar='DIR', default='.',
        help='directory put first on sys.path to import MODULE (default: .)')
    parser.add_argument(
        '--graceful-timeout', metavar='SECONDS', type=float, default=30,
        help='seconds the workers have to finish at a stop before they are '
        'killed (default: 30)')
    parser.add_argument(
        '--consumer', metavar='NAME', default=None,
        help='consumer name of this process in the pool (unique among the '
        'running hosts; default: HOST:PID:RANDOM)')
    return parser


def worker_main(argv: Sequence[str]) -> int:
    """Run `uhttp-workers worker ...`; returns the exit status."""
    args = build_worker_parser().parse_args(argv)
    prog = f'{PROG} {WORKER_COMMAND}'
    # only this command needs them: `uhttp-workers APP` does not load them
    # pylint: disable=import-outside-toplevel
    from . import remote_consumer, remote_worker
    from .worker import Worker
    try:
        remote_consumer.import_redis()
        target = import_target(args.app, args.app_dir)
        if not (isinstance(target, type) and issubclass(target, Worker)):
            raise SettingError(f'{args.app} is a {type(target).__name__}, '
                               'not a Worker subclass')
        count = args.workers if args.workers is not None \
            else os.cpu_count() or 1
        if count < 1:
            raise SettingError('--workers must be at least 1')
        workers = remote_worker.RemoteWorkers(
            target, args.redis, pool_name=args.pool, num_workers=count,
            log_level=args.log_level, graceful_timeout=args.graceful_timeout,
            consumer=args.consumer)
    except remote_consumer.RedisMissing as err:
        sys.stderr.write(f'{prog}: error: {err}\n')
        return EXIT_CONFIG
    except (SettingError, ValueError, TypeError, ImportError) as err:
        sys.stderr.write(f'{prog}: error: {_one_line(err)}\n')
        return EXIT_CONFIG
    try:
        return workers.run()
    except remote_worker.StartupError as err:
        sys.stderr.write(f'{prog}: error: {err}\n')
        return EXIT_CONFIG


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split())
    if isinstance(err, SettingError):
        return text
    return f'{type(err).__name__}: {text}'
