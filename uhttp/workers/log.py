"""Log levels, the Logger handlers use, and the output the dispatcher prints.

Workers never write log lines themselves: their Logger (a `logging.Logger`)
hands each record to an emit function, and a `ForwardingHandler` on their
root logger does the same for every stdlib `logging` call of any module;
both send the record to the dispatcher. There a `LogRouter` hands it to the
stdlib `logging` handlers the application configured, or, when it configured
none, to the project's own output (`LogOutput`). This module only formats,
forwards and writes; it must never block on anything but the final write to
the output stream, and never log about its own failures through itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeAlias, Union, overload

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

# what `exc_info` may be, as the logging module takes it
SysExcInfo: TypeAlias = Union[
    tuple[type[BaseException], BaseException, Union[TracebackType, None]],
    tuple[None, None, None]]
ExcInfo: TypeAlias = Union[None, bool, SysExcInfo, BaseException]
# the fields of a record besides its message, as a worker sends them
# (pickled) to the dispatcher: see record_details()
RecordDetails: TypeAlias = dict[str, Any]
# emit(name, level, message) of a Logger; a DetailedLogger calls it as
# emit(name, level, message, details)
Emit: TypeAlias = Callable[[str, int, str], None]
DetailedEmit: TypeAlias = Callable[[str, int, str, RecordDetails], None]
# send(name, level, message, details) of a ForwardingHandler
Send: TypeAlias = DetailedEmit
# a callable that delivers one message (LogRouter.sink, LogOutput.line_sink)
LineSink: TypeAlias = Callable[[str], None]


class RecordQueue(Protocol):
    """Where a uhttp-workers 1.x Logger puts its records (a
    multiprocessing or queue.Queue)."""

    def put(self, item: tuple[str, str, int, str], /) -> None:
        """Append one record."""


class LogStream(Protocol):
    """What LogOutput writes to: a text stream or a log_files.LogFile."""

    def write(self, text: str, /) -> object:
        """Write `text`."""

    def flush(self) -> object:
        """Flush what was written."""

    def close(self) -> object:
        """Close the stream."""

    def isatty(self) -> bool:
        """True on a terminal."""

    def fileno(self) -> int:
        """The descriptor of the stream."""


def level_name(level: int) -> str:
    """Name of a numeric level ('LEVEL 25' for levels between the named ones)."""
    return LEVEL_NAMES.get(level, f'LEVEL {level}')


def printable(text: str) -> str:
    """`text` itself, or its repr when it holds control characters (a
    request path with a decoded newline must not forge a log line)."""
    return text if text.isprintable() else repr(text)


def format_message(message: object, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> str:
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


def _is_level(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bind_logger_args(args: tuple[Any, ...],
                      keywords: Mapping[str, Any]) -> dict[str, Any]:
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


class Logger(logging.Logger):
    """Leveled logger; records go to `emit(name, level, message)`.

    It is a `logging.Logger` (isinstance checks, `setLevel()`,
    `isEnabledFor()`, `getEffectiveLevel()` work), but its records do not
    go through handlers: they go to its emit function, formatted.

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

    def __init__(self, name: str, *args: Any, level: int | None = None,
                 emit: Callable[..., None] | None = None,
                 queue: RecordQueue | None = None,
                 sink: Callable[..., None] | None = None) -> None:
        bound = _bind_logger_args(
            args, {'level': level, 'emit': emit, 'queue': queue, 'sink': sink})
        super().__init__(name)
        self.level = LOG_WARNING if bound['level'] is None else bound['level']
        self._queue: RecordQueue | None = bound['queue']
        # an Emit; a DetailedLogger's takes the details too (DetailedEmit)
        self._emit: Callable[..., None] = (
            bound['emit'] or bound['sink']
            or (self._put_on_queue if self._queue is not None
                else _stderr_emit))

    def _put_on_queue(self, name: str, level: int, message: str) -> None:
        assert self._queue is not None  # chosen as emit only with a queue
        self._queue.put((MSG_LOG, name, level, message))

    def isEnabledFor(self, level: int) -> bool:
        """True when records at `level` are emitted (`level` is read at
        each call: it may be changed as a plain attribute)."""
        return level >= self.level

    def getEffectiveLevel(self) -> int:
        """The level records must reach to be emitted."""
        return self.level

    # The message parameter is named `message`, not logging's `msg`, as in
    # uhttp-workers 1.x (other keywords fill `{}` fields, `msg` among
    # them), so mypy sees these overrides as incompatible with
    # logging.Logger's.
    # pylint: disable=arguments-differ,unused-argument
    def log(  # type: ignore[override]
            self, level: int, message: object, *args: Any,
            exc_info: ExcInfo = False, stack_info: bool = False,
            stacklevel: int = 1, extra: Mapping[str, object] | None = None,
            **kwargs: Any) -> None:
        """Log `message` at `level` when the level is enabled.

        `stack_info`, `stacklevel` and `extra` are accepted as the logging
        module takes them (and ignored); other keywords fill `{}` fields."""
        if level < self.level:
            return
        self._deliver(level, format_message(message, args, kwargs),
                      exception_text(exc_info))

    def _deliver(self, level: int, text: str, exc_text: str | None) -> None:
        """Hand one enabled record to the emit function (the traceback, if
        any, on the lines after the message)."""
        if exc_text:
            text += '\n' + exc_text
        self._emit(self.name, level, text)

    # pylint: enable=arguments-differ,unused-argument

    def debug(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_DEBUG."""
        self.log(LOG_DEBUG, message, *args, **kwargs)

    def info(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_INFO."""
        self.log(LOG_INFO, message, *args, **kwargs)

    def warning(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_WARNING."""
        self.log(LOG_WARNING, message, *args, **kwargs)

    def error(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_ERROR."""
        self.log(LOG_ERROR, message, *args, **kwargs)

    def critical(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_CRITICAL."""
        self.log(LOG_CRITICAL, message, *args, **kwargs)

    def exception(  # type: ignore[override]
            self, message: object, *args: Any, **kwargs: Any) -> None:
        """Log at LOG_ERROR with the current exception's traceback."""
        self.log(LOG_ERROR, message, *args, exc_info=True, **kwargs)

    @property
    def is_debug(self) -> bool:
        """True when debug records are emitted."""
        return self.level <= LOG_DEBUG

    @property
    def is_info(self) -> bool:
        """True when info records are emitted."""
        return self.level <= LOG_INFO

    @property
    def is_warning(self) -> bool:
        """True when warning records are emitted."""
        return self.level <= LOG_WARNING

    @property
    def is_error(self) -> bool:
        """True when error records are emitted."""
        return self.level <= LOG_ERROR


def exception_text(exc_info: ExcInfo) -> str | None:
    """The traceback text `exc_info` asks for (an exception, a sys.exc_info()
    tuple, or true for the exception being handled), or None."""
    parts: Iterable[str]
    if isinstance(exc_info, BaseException):
        parts = traceback.format_exception(
            type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(exc_info, tuple):
        if exc_info[0] is None:
            return None
        parts = traceback.format_exception(*exc_info)
    elif exc_info:
        if sys.exc_info()[0] is None:
            return None
        parts = traceback.format_exc()
    else:
        return None
    return ''.join(parts).rstrip()


class DetailedLogger(Logger):
    """A Logger whose emit function is called as `emit(name, level,
    message, details)`: the traceback travels apart from the message, in
    `details['exc_text']`, with the time and process of the call."""

    def _deliver(self, level: int, text: str, exc_text: str | None) -> None:
        self._emit(self.name, level, clip(text), {
            'created': time.time(), 'process': os.getpid(),
            'exc_text': clip(exc_text)})


def resolve_log_name(logger: logging.Logger, template: str, default: str,
                     **fields: object) -> str:
    """The logger name a `LOG_NAME` class template gives with `fields`
    (`{cls}`, `{pid}`, ...); on a bad template a warning on `logger` and
    `default`, so a typo never stops a process."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        logger.warning('invalid LOG_NAME %r: %s; using %r',
                       template, err, default)
        return default


def log_to_logging(name: str, level: int, message: str) -> None:
    """Forward one record to the standard `logging` module.

    The logger is `uhttp.workers.<name>` (e.g. `uhttp.workers.Items[0]`) and
    the level is kept, so logging's handlers, filters and formatters apply.
    Use it from `Dispatcher.on_log`.
    """
    import logging  # pylint: disable=import-outside-toplevel
    logging.getLogger(f'uhttp.workers.{name}').log(level, message)


# -- stdlib logging in worker processes ---------------------------------------

# a record longer than this is cut: log frames must stay far below the
# channel's socket buffer, so that sending one never waits for long
MAX_RECORD_TEXT = 32 * 1024
# the record fields a worker sends along with its message (source position
# and time of the call, for handlers and formatters in the dispatcher)
_RECORD_FIELDS = ('created', 'pathname', 'lineno', 'funcName', 'module',
                  'filename', 'threadName', 'process')


@overload
def clip(text: str) -> str: ...


@overload
def clip(text: None) -> None: ...


@overload
def clip(text: str | None) -> str | None: ...


def clip(text: str | None) -> str | None:
    """`text`, cut to MAX_RECORD_TEXT characters (saying so)."""
    if text is not None and len(text) > MAX_RECORD_TEXT:
        return text[:MAX_RECORD_TEXT] + f' [... {len(text)} chars, cut]'
    return text


def record_details(record: logging.LogRecord,
                   exc_text: str | None) -> RecordDetails:
    """What crosses the channel of a stdlib `record` besides its message."""
    details = {field: getattr(record, field, None) for field in _RECORD_FIELDS}
    details['exc_text'] = clip(exc_text)
    details['stack_info'] = clip(record.stack_info)
    details['stdlib'] = True    # not self.log: the name is a module's
    return details


class ForwardingHandler(logging.Handler):
    """The handler a worker installs on its root logger: every record of
    any module goes to `send(name, level, message, details)`, which sends
    it to the dispatcher.

    A record logged while this thread is inside `send` (by code that send
    itself runs) is written to stderr instead of being sent: forwarding it
    could recurse, or wait for a lock this thread holds.
    """

    def __init__(self, send: Send, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._send = send
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        local = self._local
        if getattr(local, 'sending', False):
            write_stderr(record.name, record.levelno, record.getMessage())
            return
        local.sending = True
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = self.formatter.formatException(record.exc_info) \
                    if self.formatter else _FORMATTER.formatException(
                        record.exc_info)
            self._send(record.name, record.levelno, clip(record.getMessage()),
                       record_details(record, exc_text))
        except RecursionError:
            raise
        except Exception:  # pylint: disable=broad-except
            self.handleError(record)  # logging's own report, to stderr
        finally:
            local.sending = False


_FORMATTER = logging.Formatter()


def install_forwarding(send: Send, level: int) -> ForwardingHandler:
    """Make `send` the only handler of this process's root logger, at
    `level`: handlers a forked worker inherited from the dispatcher would
    write from every worker at once (the dispatcher writes them)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = ForwardingHandler(send)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def write_stderr(name: str, level: int, message: str) -> None:
    try:
        sys.stderr.write(f'{level_name(level)} [{name}] {message}\n')
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr left to tell


# -- in the dispatcher: where records go ---------------------------------------

DISPATCHER_LOGGER = 'uhttp.workers.dispatcher'
WORKER_LOGGER = 'uhttp.workers.worker'


class LogRouter:
    """Sends each record of the service where the application wants it.

    With `Dispatcher.on_log` overridden, every record goes there (as in
    uhttp-workers 1.x). Otherwise a record goes to the stdlib logger named
    for it when logging has a handler for that logger (the application
    configured logging: its handlers, filters and formatters apply), else to
    `fallback(name, level, text)`, the project's own output. Levels were
    applied where the record was made (the dispatcher's and each pool's
    `log_level`); the stdlib loggers' levels do not filter them again.
    """

    def __init__(self, fallback: Emit, hooked: bool = False,
                 line_sink: Callable[[str, int], LineSink] | None = None
                 ) -> None:
        self._fallback = fallback
        self._line_sink = line_sink     # LogOutput.line_sink: buffered lines
        self.hooked = hooked
        self._loggers: dict[str, logging.Logger] = {}

    def logger(self, name: str) -> logging.Logger:
        """The stdlib logger `name` (looked up once)."""
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._loggers[name] = logging.getLogger(name)
        return logger

    def wants(self, logger_name: str) -> logging.Logger | None:
        """The stdlib logger to hand a record to, or None (fallback)."""
        if self.hooked:
            return None
        logger = self.logger(logger_name)
        return logger if logger.hasHandlers() else None

    def route(self, logger_name: str, short_name: str, level: int, text: str,
              exc_text: str | None = None,
              details: RecordDetails | None = None,
              extra: Mapping[str, object] | None = None) -> None:
        """Deliver one record; `short_name` names it in the fallback
        output, `details` are fields a worker sent, `extra` attributes to
        set on the LogRecord."""
        logger = self.wants(logger_name)
        if logger is None:
            self._fallback(short_name, level,
                           f'{text}\n{exc_text}' if exc_text else text)
            return
        logger.handle(make_record(logger_name, level, text, exc_text,
                                  details, extra))

    def sink(self, logger_name: str, short_name: str,
             level: int) -> LineSink:
        """A callable that delivers one message of `logger_name` at `level`
        as route() would, decided now: for many records (the access log
        asks again each second, so logging configured later is seen). In
        the project's own output such records are buffered lines."""
        logger = self.wants(logger_name)
        if logger is not None:
            return lambda text: logger.handle(
                make_record(logger_name, level, text))
        if self.hooked or self._line_sink is None:
            fallback = self._fallback
            return lambda text: fallback(short_name, level, text)
        return self._line_sink(short_name, level)


def make_record(logger_name: str, level: int, text: str,
                exc_text: str | None = None,
                details: RecordDetails | None = None,
                extra: Mapping[str, object] | None = None
                ) -> logging.LogRecord:
    """A `logging.LogRecord` of an already formatted message."""
    fields: dict[str, object] = {
        'name': logger_name, 'levelno': level,
        'levelname': logging.getLevelName(level), 'msg': text,
        'args': None, 'exc_text': exc_text}
    if details:
        created = details.get('created')
        for key, value in details.items():
            if value is not None and key != 'exc_text':
                fields[key] = value
        if created is not None:
            # when the logging module was loaded (not in its stubs)
            start: float = logging._startTime  # type: ignore[attr-defined]  # pylint: disable=protected-access
            fields['msecs'] = (created - int(created)) * 1000
            fields['relativeCreated'] = (created - start) * 1000
    if extra:
        fields.update(extra)
    return logging.makeLogRecord(fields)


def _stderr_emit(name: str, level: int, message: str) -> None:
    LogOutput(sys.stderr).write(name, level, message)


def detect_style(stream: LogStream) -> str:
    """'journal' under systemd's journal, 'color' on a terminal, else 'plain'."""
    if _is_journal_stream(stream):
        return 'journal'
    try:
        if stream.isatty():
            return 'color'
    except (AttributeError, ValueError):
        pass
    return 'plain'


def _is_journal_stream(stream: LogStream) -> bool:
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


# buffer() writes once this many lines wait
BUFFERED_LINES = 256
# (second, its text): strftime once a second at most
_STAMP: list[Any] = [None, '']


def _stamp() -> str:
    now = int(time.time())
    if now != _STAMP[0]:
        _STAMP[0], _STAMP[1] = now, time.strftime(
            '%Y-%m-%d %H:%M:%S', time.localtime(now))
    stamp: str = _STAMP[1]
    return stamp


class LogOutput:
    """Writes formatted log lines to a stream in the detected style, or to a
    file (`path`, plain lines, reopened by `reopen()` after rotation)."""

    def __init__(self, stream: LogStream | None = None,
                 style: str | None = None, path: str | None = None) -> None:
        self.path = path
        self._buffered: list[str] = []
        self.stream: LogStream
        if path:
            self.stream = self._open(path)
            self.style = style or 'plain'
        else:
            self.stream = stream or sys.stderr
            self.style = style or detect_style(self.stream)

    @staticmethod
    def _open(path: str) -> LogStream:
        return open(path, 'a', buffering=1, encoding='utf-8')  # pylint: disable=consider-using-with

    def reopen(self) -> None:
        """Open the log file again (logrotate renamed it); no-op on streams
        that cannot reopen (a log_files.LogFile can)."""
        if not self.path:
            try:
                getattr(self.stream, 'reopen', lambda: None)()
            except OSError as err:
                self.write('dispatcher', LOG_ERROR,
                           f'cannot reopen log file: {err}')
            return
        self.flush()
        try:
            fresh = self._open(self.path)
        except OSError as err:
            self.write('dispatcher', LOG_ERROR,
                       f'cannot reopen log file {self.path}: {err}')
            return
        old, self.stream = self.stream, fresh
        old.close()

    def format(self, name: str, level: int, message: str) -> str:
        """The text written for one record (without the final newline)."""
        if self.style == 'journal':
            prefix = f'<{_SYSLOG_PRIORITY.get(level, 6)}>'
            return '\n'.join(
                f'{prefix}{name}: {line}' for line in message.split('\n'))
        line = f'{_stamp()} {level_name(level):<8} [{name}] {message}'
        if self.style == 'color' and level in _ANSI:
            return f'{_ANSI[level]}{line}{_ANSI_RESET}'
        return line

    def write(self, name: str, level: int, message: str) -> None:
        """Write one record (after the buffered ones, so that lines keep
        their order); a broken output stream must not crash the loop."""
        line = self.format(name, level, message) + '\n'
        if self._buffered:
            line = ''.join(self._buffered) + line
            self._buffered.clear()
        self._write(line)

    def line_sink(self, name: str, level: int) -> LineSink:
        """A callable that keeps one message of `name` at `level` as a line
        to write with the next write() or flush(): many lines, one system
        call (the access log's, under load). Its time stamp is this
        second's: get a new one each second."""
        head, _, tail = self.format(name, level, '\0').partition('\0')
        tail += '\n'
        lines, flush = self._buffered, self.flush

        def keep(message: str) -> None:
            lines.append(f'{head}{message}{tail}')
            if len(lines) >= BUFFERED_LINES:
                flush()
        return keep

    def flush(self) -> None:
        """Write the buffered lines now (the loop calls it often)."""
        if self._buffered:
            lines = ''.join(self._buffered)
            self._buffered.clear()
            self._write(lines)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
