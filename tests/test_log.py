"""Unit tests of log formatting and the bridge to the logging module."""

import io
import logging

import uhttp.workers as _workers
from uhttp.workers.log import LogOutput, Logger, format_message


def test_percent_and_brace_styles():
    assert format_message('a %d %s', (1, 'x'), {}) == 'a 1 x'
    assert format_message('b {n}', (), {'n': 2}) == 'b 2'
    assert 'log format error' in format_message('c %d', ('x',), {})


def test_logger_filters_by_level_and_reports_properties():
    records = []
    logger = Logger('w', _workers.LOG_INFO,
                    lambda *record: records.append(record))
    logger.debug('hidden')
    logger.info('shown {x}', x=1)
    assert records == [('w', _workers.LOG_INFO, 'shown 1')]
    assert (logger.is_debug, logger.is_info, logger.is_warning) == (
        False, True, True)


def test_exception_traceback_is_appended():
    records = []
    logger = Logger('w', _workers.LOG_DEBUG,
                    lambda *record: records.append(record))
    try:
        raise ValueError('boom')
    except ValueError:
        logger.exception('failed')
    assert records[0][2].startswith('failed\nTraceback')
    assert 'ValueError: boom' in records[0][2]


def test_output_styles():
    plain = LogOutput(io.StringIO(), style='plain')
    assert plain.format('w', _workers.LOG_ERROR, 'x').endswith(
        'ERROR    [w] x')
    journal = LogOutput(io.StringIO(), style='journal')
    assert journal.format('w', _workers.LOG_ERROR, 'x\ny') == '<3>w: x\n<3>w: y'
    color = LogOutput(io.StringIO(), style='color')
    assert color.format('w', _workers.LOG_ERROR, 'x').startswith('\033[31m')
    assert '\033[' not in plain.format('w', _workers.LOG_ERROR, 'x')


def test_log_to_logging_keeps_level_and_worker_name(caplog):
    with caplog.at_level(logging.DEBUG):
        _workers.log_to_logging('Items[2]', _workers.LOG_WARNING, 'careful')
    record = caplog.records[-1]
    assert record.name == 'uhttp.workers.Items[2]'
    assert record.levelno == logging.WARNING
    assert record.getMessage() == 'careful'


def test_printable_escapes_control_characters():
    from uhttp.workers.log import printable  # pylint: disable=import-outside-toplevel
    assert printable('/api/item/1') == '/api/item/1'
    assert printable('/a\n2026 CRITICAL fake') == repr('/a\n2026 CRITICAL fake')
