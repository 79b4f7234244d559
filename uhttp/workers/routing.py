"""URL pattern compilation and matching for uhttp.workers.

This module owns three things: compiling route patterns such as
``/user/{id:int}`` into matchers, the worker-side :class:`Router` that maps
(method, path) to a target, and the dispatcher-side :class:`PrefixMatcher`
that decides which worker pool a path belongs to.

It must never do I/O, import the HTTP server, or parse anything per request:
all parsing happens once in :func:`compile_pattern` / ``PrefixMatcher()`` and
matching only runs precompiled regexes, dict and set lookups.

Pattern syntax (a pattern always matches the *whole* path, except that
:class:`Router` ignores one trailing slash of a path and of a pattern, as
uhttp-workers 1.x did: ``/a/`` reaches ``@api('/a')``; ``/a//`` and
``//a`` do not):

* literal segments match exactly, case-sensitively;
* ``{name}`` or ``{name:str}`` matches one non-empty segment as ``str``;
* ``{name:int}`` matches an optionally signed decimal integer (``int``);
* ``{name:float}`` matches ``1``, ``1.``, ``1.5``, ``-2.25``, ``.5``,
  ``1e5``, ``2.5E-3`` (``float``); ``nan``, ``inf``, and values that
  overflow to infinity (``1e999``) never match;
* a ``{...}`` must be a whole segment (``/a{b}`` is rejected);
* a route added to a :class:`Router` starts with ``/`` (``users/{id}``
  is rejected: no request path could match it).

Methods of a route (``@api(pattern, *methods)``, ``@sync(...)``) are
checked by :func:`check_methods`: a name must be an HTTP token; one of the
methods of RFC 9110, PATCH or another method in the IANA registry is
accepted; any other name that is a near miss of an RFC 9110 method or PATCH
(``GTE``, ``POTS``) is rejected; any other token (``PURGE``, an
application's own) is accepted. Names are compared upper-cased.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

_T = TypeVar('_T')
# a path parameter's value: str, int or float by its type
ParamValue = Any
# (literal segment, None) or (None, regex of a parameter's type)
_Segment = tuple[str | None, re.Pattern[str] | None]

__all__ = [
    'RouteNotFound', 'MethodNotAllowed', 'Pattern', 'compile_pattern',
    'Router', 'PrefixMatcher', 'check_methods', 'STANDARD_METHODS']

# RFC 9110 section 9 and PATCH (RFC 5789): a near miss of one is a typo.
STANDARD_METHODS = frozenset((
    'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE',
    'PATCH'))
# Other methods of the IANA registry, so that e.g. PROPPATCH (close to
# PATCH) is not taken for a typo; PURGE is the common cache extension.
_REGISTERED_METHODS = frozenset((
    'ACL', 'BASELINE-CONTROL', 'BIND', 'CHECKIN', 'CHECKOUT', 'COPY',
    'LABEL', 'LINK', 'LOCK', 'MERGE', 'MKACTIVITY', 'MKCALENDAR', 'MKCOL',
    'MKREDIRECTREF', 'MKWORKSPACE', 'MOVE', 'ORDERPATCH', 'PRI', 'PROPFIND',
    'PROPPATCH', 'PURGE', 'QUERY', 'REBIND', 'REPORT', 'SEARCH', 'UNBIND',
    'UNCHECKOUT', 'UNLINK', 'UNLOCK', 'UPDATE', 'UPDATEREDIRECTREF',
    'VERSION-CONTROL'))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# difflib ratio from which an unknown name is taken for a misspelling
_METHOD_CUTOFF = 0.6


def check_methods(pattern: object,
                  methods: Iterable[object]) -> tuple[str, ...]:
    """Return `methods` upper-cased as a tuple; raise ValueError, naming
    `pattern`, for a name that is not a token or is a near miss of a
    standard method (see the module docstring)."""
    names = []
    for method in methods:
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            raise ValueError(
                f'invalid HTTP method {method!r} in route {pattern!r}')
        name = method.upper()
        if name not in STANDARD_METHODS and name not in _REGISTERED_METHODS:
            close = difflib.get_close_matches(
                name, sorted(STANDARD_METHODS), n=1, cutoff=_METHOD_CUTOFF)
            if close:
                raise ValueError(
                    f'unknown HTTP method {method!r} in route {pattern!r};'
                    f' did you mean {close[0]!r}?')
        names.append(name)
    return tuple(names)


class RouteNotFound(Exception):
    """No route matches the path (HTTP 404)."""

    status = 404


class MethodNotAllowed(Exception):
    """The path matches but no route accepts the method (HTTP 405).

    ``allowed`` is the sorted tuple of method names for the ``Allow`` header.
    """

    status = 405

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = tuple(sorted(allowed))
        super().__init__(
            'method not allowed; allowed: ' + ', '.join(self.allowed))


def _to_float(text: str) -> float:
    value = float(text)
    # The regex already excludes 'nan'/'inf', but a long enough digit
    # string still overflows to inf.
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# type name -> (regex for one segment, converter)
_TYPES: dict[str, tuple[str, Callable[[str], ParamValue]]] = {
    'str': (r'[^/]+', str),
    'int': (r'[-+]?[0-9]+', int),
    'float': (r'[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?',
              _to_float),
}

_TAIL = '**'


def _without_trailing_slash(path: str) -> str:
    """`path` less one trailing '/' ('/' itself stays)."""
    return path[:-1] if len(path) > 1 and path[-1] == '/' else path


class Pattern:
    """A compiled URL pattern; build it with :func:`compile_pattern`."""

    __slots__ = ('pattern', 'has_params', '_regex', '_params')

    def __init__(
            self, pattern: str, regex: re.Pattern[str] | None,
            params: tuple[tuple[str, Callable[[str], ParamValue]], ...]
    ) -> None:
        self.pattern = pattern
        self.has_params = bool(params)
        self._regex = regex
        self._params = params

    def match(self, path: str) -> dict[str, ParamValue] | None:
        """Return the converted path params of ``path``, or None."""
        if self._regex is None:
            return {} if path == self.pattern else None
        found = self._regex.fullmatch(path)
        if found is None:
            return None
        result: dict[str, ParamValue] = {}
        for (name, convert), text in zip(self._params, found.groups()):
            try:
                result[name] = convert(text)
            except ValueError:
                # e.g. int() refuses more than sys.get_int_max_str_digits()
                return None
        return result

    def __repr__(self) -> str:
        return f'Pattern({self.pattern!r})'


def _parse_param(segment: str, pattern: str,
                 seen: set[str]) -> tuple[str, str]:
    """Return (name, type) of a '{name[:type]}' segment, validated."""
    name, _, type_name = segment[1:-1].partition(':')
    type_name = type_name or 'str'
    if not name.isidentifier():
        raise ValueError(
            f'invalid parameter name {name!r} in pattern {pattern!r}')
    if type_name not in _TYPES:
        raise ValueError(
            f'unknown parameter type {type_name!r} in pattern {pattern!r};'
            f' expected one of {", ".join(sorted(_TYPES))}')
    if name in seen:
        raise ValueError(
            f'duplicate parameter name {name!r} in pattern {pattern!r}')
    seen.add(name)
    return name, type_name


def _is_param(segment: str, pattern: str) -> bool:
    """True for a '{...}' segment; raise on misplaced or unbalanced braces."""
    opens, closes = segment.count('{'), segment.count('}')
    if not opens and not closes:
        return False
    if opens != closes:
        raise ValueError(f'unbalanced braces in pattern {pattern!r}')
    if (opens != 1 or not segment.startswith('{')
            or not segment.endswith('}')):
        raise ValueError(
            f'a {{parameter}} must be a whole path segment: {segment!r}'
            f' in pattern {pattern!r}')
    return True


def _compile(pattern: object, allow_tail: bool = False) -> Pattern:
    """Compile ``pattern``; with allow_tail a final '**' matches the rest."""
    if not isinstance(pattern, str):
        raise TypeError(f'pattern must be str, not {type(pattern).__name__}')
    segments = pattern.split('/')
    tail = allow_tail and len(segments) > 1 and segments[-1] == _TAIL
    if tail:
        segments.pop()
    parts: list[str] = []
    params: list[tuple[str, Callable[[str], ParamValue]]] = []
    seen: set[str] = set()
    for segment in segments:
        if _TAIL in segment:
            where = 'only valid as the final segment of a pool route' \
                if allow_tail else 'not valid in route patterns'
            raise ValueError(f"'**' is {where}: {pattern!r}")
        if _is_param(segment, pattern):
            name, type_name = _parse_param(segment, pattern, seen)
            parts.append('(' + _TYPES[type_name][0] + ')')
            params.append((name, _TYPES[type_name][1]))
        else:
            parts.append(re.escape(segment))
    if not params and not tail:
        return Pattern(pattern, None, ())
    source = '/'.join(parts) + ('(?:/.*)?' if tail else '')
    return Pattern(pattern, re.compile(source, re.DOTALL), tuple(params))


def compile_pattern(pattern: str) -> Pattern:
    """Compile a route pattern into a :class:`Pattern`.

    Raises ValueError for unknown types, duplicate names, unbalanced braces,
    a parameter that is not a whole segment, or a '**' segment.
    """
    return _compile(pattern)


class _Route(Generic[_T]):
    __slots__ = ('index', 'pattern', 'methods', 'target')

    def __init__(self, index: int, pattern: Pattern,
                 methods: frozenset[str] | None, target: _T) -> None:
        self.index = index
        self.pattern = pattern
        self.methods = methods      # frozenset of upper names, None = all
        self.target = target

    def accepts(self, method: str) -> bool:
        return self.methods is None or method in self.methods


def _normalise_methods(
        pattern: str, methods: str | Iterable[str] | None
) -> frozenset[str] | None:
    """Return a frozenset of upper-case names, or None for all methods."""
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = (methods,)
    return frozenset(check_methods(pattern, methods)) or None


class Router(Generic[_T]):
    """Routes (pattern, methods) to a target; compiled once, matched per request.

    The first added route that matches both path and method wins. Routes
    without parameters live in a dict keyed by path, so the common case
    (literal path, accepted method, no earlier param route) is O(1).
    """

    def __init__(self) -> None:
        self._routes: list[_Route[_T]] = []
        # path -> [_Route] in insertion order
        self._literal: dict[str, list[_Route[_T]]] = {}
        # [_Route] with params, in insertion order
        self._params: list[_Route[_T]] = []

    def add(self, pattern: str, methods: str | Iterable[str] | None,
            target: _T) -> None:
        """Add a route; empty or None ``methods`` means all methods.

        Raises ValueError for a pattern :func:`compile_pattern` refuses or
        that does not start with '/' (no request path could match it), and
        for methods :func:`check_methods` refuses.
        """
        if isinstance(pattern, str) and not pattern.startswith('/'):
            raise ValueError(
                f"route pattern must start with '/': {pattern!r}")
        if isinstance(pattern, str):
            pattern = _without_trailing_slash(pattern)
        compiled = compile_pattern(pattern)
        route = _Route(
            len(self._routes), compiled, _normalise_methods(pattern, methods),
            target)
        self._routes.append(route)
        if compiled.has_params:
            self._params.append(route)
        else:
            self._literal.setdefault(pattern, []).append(route)

    def match(self, method: str,
              path: str) -> tuple[_T, dict[str, ParamValue]]:
        """Return (target, path_params) for the first matching route.

        Raises RouteNotFound when no route matches the path, and
        MethodNotAllowed when some do but none accepts ``method``.
        One trailing slash of ``path`` is ignored.
        """
        path = _without_trailing_slash(path)
        method = method.upper()
        literal = None
        for route in self._literal.get(path, ()):
            if route.accepts(method):
                literal = route
                break
        limit = literal.index if literal is not None else len(self._routes)
        # Only param routes added before the literal one can take precedence.
        for route in self._params:
            if route.index >= limit:
                break
            if route.accepts(method):
                params = route.pattern.match(path)
                if params is not None:
                    return route.target, params
        if literal is not None:
            return literal.target, {}
        raise self._no_match(path)

    def lookup(self, method: str,
               path: str) -> tuple[_T, dict[str, ParamValue]] | None:
        """Like match(), but None when no route matches the path at all
        (cheap for the common miss: no exception, no scan of literals)."""
        if not self._params \
                and _without_trailing_slash(path) not in self._literal:
            return None
        try:
            return self.match(method, path)
        except RouteNotFound:
            return None

    def _no_match(self, path: str) -> RouteNotFound | MethodNotAllowed:
        """Build the exception for a path no route accepted the method of."""
        matching = list(self._literal.get(path, ()))
        matching += [route for route in self._params
                     if route.pattern.match(path) is not None]
        if not matching:
            return RouteNotFound(path)
        # No route here has methods=None: it would have accepted the method.
        allowed: set[str] = set()
        for route in matching:
            assert route.methods is not None
            allowed |= route.methods
        return MethodNotAllowed(allowed)

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def routes(self) -> list[tuple[str, tuple[str, ...] | None, _T]]:
        """(pattern, methods tuple or None, target) in insertion order."""
        return [
            (route.pattern.pattern,
             None if route.methods is None else tuple(sorted(route.methods)),
             route.target)
            for route in self._routes]


class PrefixMatcher:
    """Decides whether a path belongs to a worker pool, from the pool's `routes` list.

    Each entry is an exact path (``/api/status``) or a prefix ending in
    ``/**`` (``/api/**`` matches ``/api`` and ``/api/...`` but not
    ``/apix``; ``/**`` matches everything). Entries may contain ``{param}``
    segments. ``routes=None`` makes a fallback matcher (``is_fallback`` is
    True, ``matches`` is always False: the dispatcher sends it whatever no
    other pool claims). ``routes=[]`` is a valid matcher that never matches.
    """

    def __init__(self, routes: Iterable[str] | None) -> None:
        self.is_fallback = routes is None
        self._all = False
        self._exact: set[str] = set()
        # 'base/' strings for str.startswith
        prefixes: list[str] = []
        # compiled Patterns with params
        self._patterns: list[Pattern] = []
        # (segments, is_prefix) for can_reach()
        self._shapes: list[tuple[list[_Segment], bool]] = []
        for entry in routes or ():
            self._add(entry, prefixes)
        self._prefixes = tuple(prefixes)

    def _add(self, entry: object, prefixes: list[str]) -> None:
        if not isinstance(entry, str) or not entry.startswith('/'):
            raise ValueError(f"pool route must start with '/': {entry!r}")
        tail = '/' + _TAIL
        is_prefix = entry.endswith(tail)
        self._shapes.append(
            (_shape(entry[:-len(tail)] if is_prefix else entry), is_prefix))
        if '{' in entry or '}' in entry:
            self._patterns.append(_compile(entry, allow_tail=True))
            return
        is_prefix = entry.endswith('/' + _TAIL)
        base = entry[:-len(_TAIL) - 1] if is_prefix else entry
        if _TAIL in base:
            raise ValueError(
                f"'**' is only valid as the final segment of a pool route:"
                f' {entry!r}')
        if not is_prefix:
            self._exact.add(base)
        elif not base:
            self._all = True
        else:
            self._exact.add(base)
            prefixes.append(base + '/')

    def matches(self, path: str) -> bool:
        """True when ``path`` belongs to this pool."""
        if self._all or path in self._exact:
            return True
        if self._prefixes and path.startswith(self._prefixes):
            return True
        for pattern in self._patterns:
            if pattern.match(path) is not None:
                return True
        return False

    def can_reach(self, pattern: str) -> bool:
        """True when some path matching route `pattern` (a valid route
        pattern, see :func:`compile_pattern`) belongs to this pool.

        Decided segment by segment: a literal reaches a literal equal to it
        or a parameter whose type accepts it; two parameters always overlap
        (``0`` is a str, an int and a float).
        """
        if self.is_fallback or self._all:
            return True
        route = _shape(_without_trailing_slash(pattern))
        for segments, is_prefix in self._shapes:
            if len(route) < len(segments) or (
                    not is_prefix and len(route) != len(segments)):
                continue
            if all(map(_overlap, segments, route)):
                return True
        return False

    def __repr__(self) -> str:
        if self.is_fallback:
            return 'PrefixMatcher(None)'
        return (f'PrefixMatcher(all={self._all}, exact={len(self._exact)},'
                f' prefixes={len(self._prefixes)},'
                f' patterns={len(self._patterns)})')


def _shape(pattern: str) -> list[_Segment]:
    """The segments of a valid pattern: (literal, None) or (None, regex of
    the parameter's type)."""
    segments: list[_Segment] = []
    for segment in pattern.split('/'):
        if _is_param(segment, pattern):
            _, type_name = _parse_param(segment, pattern, set())
            segments.append((None, re.compile(_TYPES[type_name][0])))
        else:
            segments.append((segment, None))
    return segments


def _overlap(first: _Segment, second: _Segment) -> bool:
    """True when some path segment matches both shaped segments."""
    (literal, regex), (other, other_regex) = first, second
    if literal is not None and other is not None:
        return literal == other
    # a segment without a literal has the regex of its parameter
    if literal is not None:
        assert other_regex is not None
        return other_regex.fullmatch(literal) is not None
    if other is not None:
        assert regex is not None
        return regex.fullmatch(other) is not None
    return True
