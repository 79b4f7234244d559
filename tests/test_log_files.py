"""Log files: '-' for stdout, rotation by size and by age, reopening."""

import io
import os

import pytest

from uhttp.workers import log_files
from uhttp.workers.log import LOG_INFO

from conftest import wait_until


def test_dash_means_stdout(monkeypatch):
    stdout = io.StringIO()
    monkeypatch.setattr('sys.stdout', stdout)
    output = log_files.log_output('-')
    output.write('dispatcher', LOG_INFO, 'to stdout')
    assert '[dispatcher] to stdout' in stdout.getvalue()


def test_plain_file_appends_and_reopens(tmp_path):
    path = tmp_path / 'a.log'
    output = log_files.log_output(str(path))
    output.write('w', LOG_INFO, 'first')
    os.rename(path, tmp_path / 'a.log.old')
    output.reopen()
    output.write('w', LOG_INFO, 'second')
    assert 'first' in (tmp_path / 'a.log.old').read_text()
    assert 'second' in path.read_text()
    assert 'first' not in path.read_text()


def test_rotation_by_size_keeps_backups(tmp_path):
    path = tmp_path / 'size.log'
    output = log_files.log_output(str(path), rotate_size=1000, backups=2)
    for number in range(60):
        output.write('w', LOG_INFO, f'record {number:03d} ' + 'x' * 80)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ['size.log', 'size.log.1', 'size.log.2']
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1000
    assert 'record 059' in path.read_text()


def test_a_multi_line_record_is_not_split_by_rotation(tmp_path):
    path = tmp_path / 'multi.log'
    output = log_files.log_output(str(path), rotate_size=300, backups=3)
    output.write('w', LOG_INFO, 'a' * 200)
    output.write('w', LOG_INFO, 'first line\n' + 'second line ' * 10)
    text = path.read_text()
    assert 'first line' in text and 'second line' in text
    assert (tmp_path / 'multi.log.1').exists()


def test_rotation_by_age_in_seconds(tmp_path):
    path = tmp_path / 'age.log'
    output = log_files.log_output(str(path), rotate_age=1, backups=3)
    output.write('w', LOG_INFO, 'old record')

    def rotated():
        output.write('w', LOG_INFO, 'new record')
        return [p for p in tmp_path.iterdir() if p.name != 'age.log']
    backups = wait_until(rotated, timeout=10, interval=0.2)
    # the first backup (a slow run may rotate more than once; the suffix
    # is the time of the rotation, so names sort in order)
    assert 'old record' in sorted(backups)[0].read_text()
    assert 'old record' not in path.read_text()


def test_rotated_file_reopens_after_a_move(tmp_path):
    path = tmp_path / 'r.log'
    output = log_files.log_output(str(path), rotate_age='daily')
    output.write('w', LOG_INFO, 'before')
    os.rename(path, tmp_path / 'moved.log')
    output.reopen()
    output.write('w', LOG_INFO, 'after')
    assert 'after' in path.read_text()
    assert 'after' not in (tmp_path / 'moved.log').read_text()


@pytest.mark.parametrize('age, expected', [
    ('daily', ('midnight', 1)), ('midnight', ('midnight', 1)),
    ('hourly', ('H', 1)), (3600, ('S', 3600))])
def test_rotation_schedule(age, expected):
    assert log_files.rotation_schedule(age) == expected


@pytest.mark.parametrize('kwargs, text', [
    ({'log_file': None, 'rotate_size': 10}, 'need a log_file'),
    ({'log_file': '-', 'rotate_age': 'daily'}, 'need a log_file'),
    ({'log_file': 'x', 'rotate_size': 10, 'rotate_age': 5}, 'not both'),
    ({'log_file': 'x', 'rotate_size': 0}, 'log_rotate_size=0'),
    ({'log_file': 'x', 'rotate_age': 'fortnightly'}, "'fortnightly'"),
    ({'log_file': 'x', 'rotate_age': -1}, 'log_rotate_age=-1'),
    ({'log_file': 'x', 'backups': -1}, 'log_rotate_backups=-1'),
])
def test_bad_options_are_refused(kwargs, text):
    arguments = {'rotate_size': None, 'rotate_age': None,
                 'backups': log_files.DEFAULT_BACKUPS, **kwargs}
    with pytest.raises(ValueError, match=text):
        log_files.check_options(arguments.pop('log_file'), **arguments)
