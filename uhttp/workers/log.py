"""Log levels, the Logger handlers use, and the output the dispatcher prints.

Workers never write log lines themselves: their Logger hands each record to
an emit function that sends it to the dispatcher, which prints every line of
the service in one place. This module only formats and writes; it must never
block on anything but the final write to the output stream.
"""

import os
import sys
import time
import traceback

LOG_DEBUG = 10
LOG_INFO = 20
LOG_WARNING = 30
LOG_ERROR = 40
LOG_CRITICAL = 50

LEVEL_NAMES = {
    LOG_DEBUG: 'DEBUG',
    LOG_INFO: 'INFO',
    LOG_WARNING: 'WARNING',
    LOG_ERROR: 'ERROR',
    LOG_CRITICAL: 'CRITICAL',
}
# the names uhttp-workers 1.x gave the level table and the type of a log
# record it put on a queue
LOG_LEVEL_NAMES = LEVEL_NAMES
MSG_LOG = 'LOG'

# syslog priorities understood by journald on a line prefix like "<3>"
_SYSLOG_PRIORITY = {
    LOG_DEBUG: 7, LOG_INFO: 6, LOG_WARNING: 4, LOG_ERROR: 3, LOG_CRITICAL: 2}

_ANSI = {
    LOG_DEBUG: '\033[2m',
    LOG_WARNING: '\033[33m',
    LOG_ERROR: '\033[31m',
    LOG_CRITICAL: '\033[1;31m',
}
_ANSI_RESET = '\033[0m'


def level_name(level):
    """Name of a numeric level ('LEVEL 25' for levels between the named ones)."""
    return LEVEL_NAMES.get(level, f'LEVEL {level}')


def printable(text):
    """`text` itself, or its repr when it holds control characters (a
    request path with a decoded newline must not forge a log line)."""
    return text if text.isprintable() else repr(text)


def format_message(message, args, kwargs):
    """Apply %-style args, then {}-style kwargs (as uhttp-workers 1.x did
    when given both); never raise on a bad format."""
    message = str(message)
    text = message
    try:
        if args:
            text = text % args
        if kwargs:
            text = text.format(**kwargs)
    except (TypeError, ValueError, KeyError, IndexError) as err:
        given = ' '.join(repr(part) for part in (args, kwargs) if part)
        return f'{message} {given} (log format error: {err})'
    return text


# Positional parameters of the two call forms of Logger: this project's
# Logger(name, level, emit) and uhttp-workers 1.x's
# Logger(name, queue, level, sink).
_NATIVE_ORDER = ('level', 'emit')
_ONE_X_ORDER = ('queue', 'level', 'sink')


def _is_level(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _bind_logger_args(args, keywords):
    """Name the positional arguments of Logger() by the call form they
    follow (a level second means this project's form) and merge them with
    the keywords; a name given twice is a TypeError as in any call."""
    order = _NATIVE_ORDER if args and _is_level(args[0]) else _ONE_X_ORDER
    if len(args) > len(order):
        raise TypeError(
            f'Logger() takes at most {len(order) + 1} positional arguments '
            f'in the form (name, {", ".join(order)})')
    bound = dict(keywords)
    for key, value in zip(order, args):
        if bound.get(key) is not None:
            raise TypeError(f"Logger() got multiple values for argument {key!r}")
        bound[key] = value
    if bound.get('emit') is not None and bound.get('sink') is not None:
        raise TypeError('Logger() takes emit or sink, not both')
    return bound


class Logger:
    """Leveled logger; records go to `emit(name, level, message)`.

    Accepts %-style positional arguments like the logging module, and/or
    {}-style keyword arguments. `exc_info=True` appends the traceback of the
    exception being handled, or pass the exception itself.

    Built as `Logger(name, level=LOG_WARNING, emit=None)`, or the way
    uhttp-workers 1.x built it, `Logger(name, queue=None, level=LOG_WARNING,
    sink=None)`: `sink` is another name for `emit`, and without one each
    record is put on `queue` as the tuple `(MSG_LOG, name, level, message)`.
    With neither, records are written to stderr. `name` and `level` are
    plain attributes that may be changed at any time.
    """

    def __init__(self, name, *args, level=None, emit=None, queue=None,
                 sink=None):
        bound = _bind_logger_args(
            args, {'level': level, 'emit': emit, 'queue': queue, 'sink': sink})
        self.name = name
        self.level = LOG_WARNING if bound['level'] is None else bound['level']
        self._queue = bound['queue']
        self._emit = (bound['emit'] or bound['sink']
                      or (self._put_on_queue if self._queue is not None
                          else _stderr_emit))

    def _put_on_queue(self, name, level, message):
        self._queue.put((MSG_LOG, name, level, message))

    def log(self, level, message, *args, exc_info=False, **kwargs):
        """Log `message` at `level` when the level is enabled."""
        if level < self.level:
            return
        text = format_message(message, args, kwargs)
        if isinstance(exc_info, BaseException):
            text += '\n' + ''.join(traceback.format_exception(
                type(exc_info), exc_info, exc_info.__traceback__)).rstrip()
        elif exc_info:
            text += '\n' + traceback.format_exc().rstrip()
        self._emit(self.name, level, text)

    def debug(self, message, *args, **kwargs):
        """Log at LOG_DEBUG."""
        self.log(LOG_DEBUG, message, *args, **kwargs)

    def info(self, message, *args, **kwargs):
        """Log at LOG_INFO."""
        self.log(LOG_INFO, message, *args, **kwargs)

    def warning(self, message, *args, **kwargs):
        """Log at LOG_WARNING."""
        self.log(LOG_WARNING, message, *args, **kwargs)

    def error(self, message, *args, **kwargs):
        """Log at LOG_ERROR."""
        self.log(LOG_ERROR, message, *args, **kwargs)

    def critical(self, message, *args, **kwargs):
        """Log at LOG_CRITICAL."""
        self.log(LOG_CRITICAL, message, *args, **kwargs)

    def exception(self, message, *args, **kwargs):
        """Log at LOG_ERROR with the current exception's traceback."""
        self.log(LOG_ERROR, message, *args, exc_info=True, **kwargs)

    @property
    def is_debug(self):
        """True when debug records are emitted."""
        return self.level <= LOG_DEBUG

    @property
    def is_info(self):
        """True when info records are emitted."""
        return self.level <= LOG_INFO

    @property
    def is_warning(self):
        """True when warning records are emitted."""
        return self.level <= LOG_WARNING

    @property
    def is_error(self):
        """True when error records are emitted."""
        return self.level <= LOG_ERROR


def resolve_log_name(logger, template, default, **fields):
    """The logger name a `LOG_NAME` class template gives with `fields`
    (`{cls}`, `{pid}`, ...); on a bad template a warning on `logger` and
    `default`, so a typo never stops a process."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        logger.warning('invalid LOG_NAME %r: %s; using %r',
                       template, err, default)
        return default


def log_to_logging(name, level, message):
    """Forward one record to the standard `logging` module.

    The logger is `uhttp.workers.<name>` (e.g. `uhttp.workers.Items[0]`) and
    the level is kept, so logging's handlers, filters and formatters apply.
    Use it from `Dispatcher.on_log`.
    """
    import logging  # pylint: disable=import-outside-toplevel
    logging.getLogger(f'uhttp.workers.{name}').log(level, message)


def _stderr_emit(name, level, message):
    LogOutput(sys.stderr).write(name, level, message)


def detect_style(stream):
    """'journal' under systemd's journal, 'color' on a terminal, else 'plain'."""
    if _is_journal_stream(stream):
        return 'journal'
    try:
        if stream.isatty():
            return 'color'
    except (AttributeError, ValueError):
        pass
    return 'plain'


def _is_journal_stream(stream):
    # systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it connected;
    # only trust it when our stream really is that one (not a pipe we got
    # from a shell started inside the unit).
    value = os.environ.get('JOURNAL_STREAM')
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(':'))
        info = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class LogOutput:
    """Writes formatted log lines to a stream in the detected style, or to a
    file (`path`, plain lines, reopened by `reopen()` after rotation)."""

    def __init__(self, stream=None, style=None, path=None):
        self.path = path
        if path:
            self.stream = self._open(path)
            self.style = style or 'plain'
        else:
            self.stream = stream or sys.stderr
            self.style = style or detect_style(self.stream)

    @staticmethod
    def _open(path):
        return open(path, 'a', buffering=1, encoding='utf-8')  # pylint: disable=consider-using-with

    def reopen(self):
        """Open the log file again (logrotate renamed it); no-op on streams
        that cannot reopen (a log_files.LogFile can)."""
        if not self.path:
            try:
                getattr(self.stream, 'reopen', lambda: None)()
            except OSError as err:
                self.write('dispatcher', LOG_ERROR,
                           f'cannot reopen log file: {err}')
            return
        try:
            fresh = self._open(self.path)
        except OSError as err:
            self.write('dispatcher', LOG_ERROR,
                       f'cannot reopen log file {self.path}: {err}')
            return
        old, self.stream = self.stream, fresh
        old.close()

    def format(self, name, level, message):
        """The text written for one record (without the final newline)."""
        if self.style == 'journal':
            prefix = f'<{_SYSLOG_PRIORITY.get(level, 6)}>'
            return '\n'.join(
                f'{prefix}{name}: {line}' for line in message.split('\n'))
        stamp = time.strftime('%Y-%m-%d %H:%M:%S')
        line = f'{stamp} {level_name(level):<8} [{name}] {message}'
        if self.style == 'color' and level in _ANSI:
            return f'{_ANSI[level]}{line}{_ANSI_RESET}'
        return line

    def write(self, name, level, message):
        """Write one record; a broken output stream must not crash the loop."""
        try:
            self.stream.write(self.format(name, level, message) + '\n')
            self.stream.flush()
        except (OSError, ValueError):
            pass
