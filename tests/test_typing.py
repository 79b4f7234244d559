"""The static type check: `mypy --strict` over the annotated modules.

TYPED_MODULES is the one list of modules the project keeps strict-clean,
and every module of the package is on it. A new module that is not
annotated yet would be named in an `ignore_errors` override of
pyproject.toml and in its `untyped_calls_exclude` list until it is, so that
mypy follows it for the names it exports without reporting on it; the
consistency tests below keep those lists and TYPED_MODULES in step. mypy
is a development tool (the `typing` extra): without it the test skips.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: mypy depends on tomli there
    tomllib = None

TYPED_MODULES = [
    'uhttp.workers',
    'uhttp.workers.request',
    'uhttp.workers.routing',
    'uhttp.workers.messages',
    'uhttp.workers.channel',
    'uhttp.workers.pending',
    'uhttp.workers.admission',
    'uhttp.workers.options',
    'uhttp.workers.http11',
    'uhttp.workers.descriptors',
    'uhttp.workers.proctitle',
    'uhttp.workers.metrics',
    'uhttp.workers.owned_services',
    'uhttp.workers.singleserver',
    'uhttp.workers.log',
    'uhttp.workers.access_log',
    'uhttp.workers.pool',
    'uhttp.workers.log_files',
    'uhttp.workers.pidfile',
    'uhttp.workers.service_client',
    'uhttp.workers.locks',
    'uhttp.workers.jobs',
    'uhttp.workers.ownership',
    'uhttp.workers.process_group',
    'uhttp.workers.service',
    'uhttp.workers.privileges',
    'uhttp.workers.daemon',
    'uhttp.workers.worker',
    'uhttp.workers.primary',
    'uhttp.workers.worker_handle',
    'uhttp.workers.worker_events',
    'uhttp.workers.stackdump',
    'uhttp.workers.output_capture',
    'uhttp.workers.framing',
    'uhttp.workers.static_http',
    'uhttp.workers.supervisor',
    'uhttp.workers.host_status',
    'uhttp.workers.static',
    'uhttp.workers.static_cache',
    'uhttp.workers.connection',
    'uhttp.workers.unixsocket',
    'uhttp.workers.signals',
    'uhttp.workers.shutdown',
    'uhttp.workers.systemd',
    'uhttp.workers.upgrade',
    'uhttp.workers.lifecycle',
    'uhttp.workers.dispatcher',
    'uhttp.workers.websocket',
    'uhttp.workers.ws_dispatch',
    'uhttp.workers.settings',
    'uhttp.workers.cli',
    'uhttp.workers.reloader',
    'uhttp.workers.remote_protocol',
    'uhttp.workers.remote_pool',
    'uhttp.workers.remote_bridge',
    'uhttp.workers.wake_pipe',
    'uhttp.workers.remote_consumer',
    'uhttp.workers.remote_relay',
    'uhttp.workers.remote_worker',
    'uhttp.workers.__main__',
]

_PACKAGE = 'uhttp.workers'


def _package_modules():
    names = {_PACKAGE}
    for path in glob.glob(os.path.join(ROOT, 'uhttp', 'workers', '*.py')):
        name = os.path.splitext(os.path.basename(path))[0]
        if name != '__init__':
            names.add(f'{_PACKAGE}.{name}')
    return names


def _mypy_config():
    if tomllib is None:
        tomli = pytest.importorskip('tomli')
        load = tomli.load
    else:
        load = tomllib.load
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as file:
        return load(file)['tool']['mypy']


def _not_yet_typed():
    names = set()
    for override in _mypy_config().get('overrides', []):
        if override.get('ignore_errors'):
            modules = override['module']
            names.update([modules] if isinstance(modules, str) else modules)
    return names


def test_every_module_is_either_typed_or_listed_as_not_yet():
    typed = set(TYPED_MODULES)
    ignored = _not_yet_typed()
    assert typed & ignored == set(), 'typed modules must not be ignored'
    assert _package_modules() - typed - ignored == set(), (
        'a new module belongs in TYPED_MODULES (or, for now, in the '
        'ignore_errors override of pyproject.toml)')


@pytest.mark.timeout(180)
def test_calls_into_not_yet_typed_modules_are_allowed_and_no_others():
    # untyped_calls_exclude matches by name prefix: the package itself
    # (whose name prefixes every module) stays out of it
    excluded = set(_mypy_config().get('untyped_calls_exclude', []))
    modules = excluded & _package_modules()
    assert modules == _not_yet_typed() - {_PACKAGE}
    # the other entries are classes of typed modules whose bases are not
    # annotated yet
    for name in excluded - modules:
        assert name.rpartition('.')[0] in TYPED_MODULES, name


def test_typed_modules_pass_mypy_strict():
    if importlib.util.find_spec('mypy') is None:
        pytest.skip("mypy is not installed (pip install -e '.[typing]')")
    if not TYPED_MODULES:
        pytest.skip('no module is annotated yet')
    # no cache: nothing is written into the working copy
    command = [sys.executable, '-m', 'mypy', '--strict',
               '--config-file', 'pyproject.toml', '--cache-dir', os.devnull]
    for module in TYPED_MODULES:
        command += ['-m', module]
    result = subprocess.run(command, cwd=ROOT, capture_output=True,
                            text=True, timeout=170, check=False)
    assert result.returncode == 0, (
        f'{" ".join(command[1:])} reports:\n{result.stdout}{result.stderr}')


def test_an_annotated_application_passes_mypy_strict():
    # what a user's own type check sees: the public API's annotations
    if importlib.util.find_spec('mypy') is None:
        pytest.skip("mypy is not installed (pip install -e '.[typing]')")
    command = [sys.executable, '-m', 'mypy', '--strict',
               '--config-file', 'pyproject.toml', '--cache-dir', os.devnull,
               os.path.join('tests', 'apps', 'typed_user_app.py')]
    result = subprocess.run(command, cwd=ROOT, capture_output=True,
                            text=True, timeout=170, check=False,
                            env=dict(os.environ, MYPYPATH=ROOT))
    assert result.returncode == 0, (
        f'{" ".join(command[1:])} reports:\n{result.stdout}{result.stderr}')
