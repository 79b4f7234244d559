"""Keyword options of the public constructors: unknown names and near misses.

Owns one decision: whether a keyword given to WorkerPool() or Dispatcher()
looks like a misspelt option (``num_worker=`` for ``num_workers=``), and the
TypeError that names the option meant. Must never accept, rename or drop a
keyword itself: the caller decides what an unknown name means.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

__all__ = ['CUTOFF', 'near_miss', 'unexpected_keyword', 'check_keywords',
           'worker_keywords', 'HTTP_SERVER_OPTIONS', 'server_keywords']

# difflib ratio from which a name counts as a near miss. 0.75 catches a
# missing or doubled letter, a swapped pair and a dropped plural
# ('workers' for 'num_workers') while leaving unrelated names alone.
CUTOFF = 0.75


def near_miss(name: str, options: Collection[str]) -> str | None:
    """The option `name` is most likely a misspelling of, or None."""
    found = difflib.get_close_matches(name, list(options), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def unexpected_keyword(owner: str, name: str, options: Collection[str],
                       hint: str = '') -> TypeError:
    """The TypeError for keyword `name` given to `owner()`, naming the
    closest option when there is one; `hint` is appended to the message."""
    message = f'{owner}() got an unexpected keyword {name!r}'
    suggestion = near_miss(name, options)
    if suggestion is not None:
        message += f'; did you mean {suggestion!r}?'
    return TypeError(message + hint)


def check_keywords(owner: str, function: Callable[..., Any],
                   keywords: Iterable[str]) -> None:
    """Raise `unexpected_keyword` for the first of `keywords` that
    `function` does not accept; do nothing when it takes ``**kwargs``."""
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    options = [p.name for p in parameters
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in keywords:
        if name not in options:
            raise unexpected_keyword(owner, name, options)


def worker_keywords(owner: str, options: Collection[str],
                    worker_kwargs: object,
                    extra: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords a pool passes to its workers: `worker_kwargs` plus the
    `extra` keywords given to the pool directly.

    An extra name that is a near miss of one of `options` is refused: it is
    far more likely a misspelt pool option than a worker argument (which
    `worker_kwargs` can still carry under any name).
    """
    if worker_kwargs is None:
        worker_kwargs = {}
    elif not isinstance(worker_kwargs, dict):
        raise TypeError(f'{owner}(): worker_kwargs must be a dict, not '
                        f'{type(worker_kwargs).__name__}')
    for name in extra:
        if near_miss(name, options) is not None:
            raise unexpected_keyword(
                owner, name, options,
                f' (a worker argument of that name goes in'
                f' worker_kwargs={{{name!r}: ...}})')
        if name in worker_kwargs:
            raise TypeError(f'{owner}(): {name!r} given both as a keyword '
                            'and in worker_kwargs')
    return {**worker_kwargs, **extra}


# uhttp-server's HttpServer options that Dispatcher(**kwargs) passes through
# (uhttp-workers 1.x passed every extra keyword on); the dispatcher's own
# options with the same meaning go by their names here.
HTTP_SERVER_OPTIONS = ('max_headers_length', 'max_ws_message_length',
                       'file_chunk_size', 'max_send_buffer_size')
_SERVER_ALIASES: dict[str, str] = {'listen': 'listen_backlog',
                   'max_waiting_clients': 'max_connections'}
_SERVER_OWNED = ('selector', 'event_mode', 'address', 'port')


def server_keywords(
        owner: str, options: Collection[str], extra: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the extra keywords given to `owner()` into the uhttp-server
    options passed through and the dispatcher options they alias.

    Returns `(passed, aliased)`: `passed` goes to HttpServer as given,
    `aliased` maps dispatcher option names to values. Any other name is a
    TypeError naming the option most likely meant.
    """
    passed: dict[str, Any] = {}
    aliased: dict[str, Any] = {}
    for name, value in extra.items():
        if name in HTTP_SERVER_OPTIONS:
            passed[name] = value
        elif name in _SERVER_ALIASES:
            aliased[_SERVER_ALIASES[name]] = value
        elif name in _SERVER_OWNED:
            raise TypeError(f'{owner}(): {name!r} belongs to the dispatcher '
                            'and cannot be passed to the HTTP server')
        else:
            raise unexpected_keyword(
                owner, name, list(options) + list(HTTP_SERVER_OPTIONS))
    return passed, aliased
