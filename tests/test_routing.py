"""Unit tests for uhttp.workers.routing."""

import pytest

from uhttp.workers.routing import (
    MethodNotAllowed, Pattern, PrefixMatcher, RouteNotFound, Router,
    compile_pattern)


# -- compile_pattern / Pattern ----------------------------------------------

def test_literal_pattern_matches_exactly():
    pattern = compile_pattern('/api/status')
    assert isinstance(pattern, Pattern)
    assert pattern.pattern == '/api/status'
    assert pattern.has_params is False
    assert pattern.match('/api/status') == {}
    assert pattern.match('/api/Status') is None
    assert pattern.match('/api/status/x') is None
    assert pattern.match('/api') is None


def test_literal_special_regex_chars_are_literal():
    pattern = compile_pattern('/a.b/(c)+')
    assert pattern.match('/a.b/(c)+') == {}
    assert pattern.match('/axb/(c)+') is None


def test_str_param_matches_one_nonempty_segment():
    pattern = compile_pattern('/user/{name}')
    assert pattern.has_params is True
    assert pattern.match('/user/alice') == {'name': 'alice'}
    assert pattern.match('/user/') is None
    assert pattern.match('/user/a/b') is None


def test_explicit_str_type_same_as_default():
    assert compile_pattern('/u/{n:str}').match('/u/42') == {'n': '42'}


@pytest.mark.parametrize('text, value', [
    ('42', 42), ('-7', -7), ('+3', 3), ('007', 7), ('0', 0)])
def test_int_param_converts(text, value):
    params = compile_pattern('/item/{id:int}').match('/item/' + text)
    assert params == {'id': value}
    assert type(params['id']) is int


@pytest.mark.parametrize('text', ['abc', '1.5', '', '-', '12a', '0x10'])
def test_int_param_rejects_non_integers(text):
    assert compile_pattern('/item/{id:int}').match('/item/' + text) is None


def test_int_param_too_long_to_convert_does_not_match():
    # int() refuses huge digit strings (sys.get_int_max_str_digits).
    pattern = compile_pattern('/item/{id:int}')
    assert pattern.match('/item/' + '9' * 5000) is None


@pytest.mark.parametrize('text, value', [
    ('1', 1.0), ('1.5', 1.5), ('-2.25', -2.25), ('.5', 0.5), ('+4', 4.0),
    ('3.', 3.0)])
def test_float_param_converts(text, value):
    params = compile_pattern('/v/{x:float}').match('/v/' + text)
    assert params == {'x': value}
    assert type(params['x']) is float


@pytest.mark.parametrize('text, value', [
    ('1e5', 1e5), ('1E5', 1e5), ('2.5e-3', 2.5e-3), ('-.5E+2', -50.0)])
def test_float_param_accepts_exponents(text, value):
    assert compile_pattern('/v/{x:float}').match('/v/' + text) == {'x': value}


@pytest.mark.parametrize('text', [
    'nan', 'inf', '-inf', 'Infinity', '1e', 'e5', '1e5.5', '.', '-', 'abc',
    '1.2.3', '1_000'])
def test_float_param_rejects_non_numbers(text):
    assert compile_pattern('/v/{x:float}').match('/v/' + text) is None


def test_float_param_overflowing_to_inf_does_not_match():
    assert compile_pattern('/v/{x:float}').match('/v/' + '9' * 400) is None


def test_multiple_params_and_literals():
    pattern = compile_pattern('/org/{org}/repo/{id:int}')
    assert pattern.match('/org/acme/repo/3') == {'org': 'acme', 'id': 3}
    assert pattern.match('/org/acme/repos/3') is None


def test_trailing_slash_is_strict():
    assert compile_pattern('/a').match('/a/') is None
    assert compile_pattern('/a/').match('/a') is None
    assert compile_pattern('/u/{n}').match('/u/x/') is None
    assert compile_pattern('/u/{n}/').match('/u/x') is None
    assert compile_pattern('/u/{n}/').match('/u/x/') == {'n': 'x'}


def test_empty_pattern_matches_only_empty_path():
    pattern = compile_pattern('')
    assert pattern.match('') == {}
    assert pattern.match('/') is None


def test_match_returns_fresh_dict():
    pattern = compile_pattern('/a')
    pattern.match('/a')['x'] = 1
    assert pattern.match('/a') == {}


@pytest.mark.parametrize('bad, message', [
    ('/x/{id:uuid}', 'unknown parameter type'),
    ('/x/{a}/{a:int}', 'duplicate parameter name'),
    ('/x/{a', 'unbalanced'),
    ('/x/a}', 'unbalanced'),
    ('/x/{a}}', 'unbalanced'),
    ('/x/{a/b}', 'unbalanced'),
    ('/a{b}', 'whole path segment'),
    ('/{a}b', 'whole path segment'),
    ('/{a}{b}', 'whole path segment'),
    ('/x/{}', 'invalid parameter name'),
    ('/x/{1a}', 'invalid parameter name'),
    ('/x/**', "'\\*\\*' is not valid in route patterns"),
])
def test_compile_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        compile_pattern(bad)


def test_unknown_type_error_names_the_type():
    with pytest.raises(ValueError, match='uuid'):
        compile_pattern('/x/{x:uuid}')


def test_compile_rejects_non_str():
    with pytest.raises(TypeError):
        compile_pattern(b'/x')


# -- Router ---------------------------------------------------------------

def test_router_literal_and_param_routes():
    router = Router()
    router.add('/users', ['GET'], 'list')
    router.add('/users/{id:int}', ['get'], 'show')
    assert router.match('GET', '/users') == ('list', {})
    assert router.match('get', '/users/5') == ('show', {'id': 5})
    assert len(router) == 2


def test_router_not_found():
    router = Router()
    router.add('/users', ['GET'], 'list')
    with pytest.raises(RouteNotFound) as info:
        router.match('GET', '/nope')
    assert info.value.status == 404


def test_router_non_converting_value_is_not_found():
    router = Router()
    router.add('/users/{id:int}', ['GET'], 'show')
    with pytest.raises(RouteNotFound):
        router.match('GET', '/users/bob')


def test_router_non_converting_value_falls_through_to_next_route():
    router = Router()
    router.add('/users/{id:int}', ['GET'], 'by_id')
    router.add('/users/{name}', ['GET'], 'by_name')
    assert router.match('GET', '/users/12') == ('by_id', {'id': 12})
    assert router.match('GET', '/users/bob') == ('by_name', {'name': 'bob'})


def test_router_method_not_allowed_lists_sorted_union():
    router = Router()
    router.add('/items', ['POST'], 'create')
    router.add('/items', ['GET', 'DELETE'], 'list')
    router.add('/{any}', ['PATCH'], 'patch')
    router.add('/other', ['PUT'], 'other')
    with pytest.raises(MethodNotAllowed) as info:
        router.match('OPTIONS', '/items')
    assert info.value.status == 405
    assert info.value.allowed == ('DELETE', 'GET', 'PATCH', 'POST')


def test_method_not_allowed_on_param_route():
    router = Router()
    router.add('/u/{id:int}', ['POST', 'GET'], 'x')
    with pytest.raises(MethodNotAllowed) as info:
        router.match('DELETE', '/u/1')
    assert info.value.allowed == ('GET', 'POST')
    # A non-converting value is a 404, not a 405.
    with pytest.raises(RouteNotFound):
        router.match('DELETE', '/u/x')


def test_method_not_allowed_exception_api():
    error = MethodNotAllowed(['POST', 'GET'])
    assert error.allowed == ('GET', 'POST')
    assert 'GET, POST' in str(error)
    assert MethodNotAllowed.status == 405
    assert RouteNotFound.status == 404


@pytest.mark.parametrize('methods', [None, [], ()])
def test_router_all_methods_route(methods):
    router = Router()
    router.add('/any', methods, 'any')
    router.add('/p/{x}', methods, 'p')
    for method in ('GET', 'POST', 'BREW'):
        assert router.match(method, '/any') == ('any', {})
        assert router.match(method, '/p/1') == ('p', {'x': '1'})
    assert router.routes[0][1] is None


def test_all_methods_route_after_restricted_route_catches_other_methods():
    router = Router()
    router.add('/x', ['GET'], 'get')
    router.add('/x', None, 'fallback')
    assert router.match('GET', '/x') == ('get', {})
    assert router.match('POST', '/x') == ('fallback', {})


def test_methods_case_insensitive_and_single_string():
    router = Router()
    router.add('/x', ['get', 'Post'], 'x')
    router.add('/y', 'put', 'y')
    assert router.match('POST', '/x') == ('x', {})
    assert router.match('put', '/y') == ('y', {})
    with pytest.raises(MethodNotAllowed) as info:
        router.match('GET', '/y')
    assert info.value.allowed == ('PUT',)


def test_earlier_param_route_wins_over_later_literal():
    router = Router()
    router.add('/users/{name}', ['GET'], 'param')
    router.add('/users/me', ['GET'], 'literal')
    assert router.match('GET', '/users/me') == ('param', {'name': 'me'})


def test_earlier_literal_wins_over_later_param():
    router = Router()
    router.add('/users/me', ['GET'], 'literal')
    router.add('/users/{name}', ['GET'], 'param')
    assert router.match('GET', '/users/me') == ('literal', {})
    assert router.match('GET', '/users/bob') == ('param', {'name': 'bob'})


def test_earlier_param_route_with_other_method_does_not_shadow_literal():
    router = Router()
    router.add('/users/{name}', ['DELETE'], 'delete')
    router.add('/users/me', ['GET'], 'me')
    assert router.match('GET', '/users/me') == ('me', {})
    assert router.match('DELETE', '/users/me') == ('delete', {'name': 'me'})


def test_literal_rejecting_method_falls_through_to_later_param_route():
    router = Router()
    router.add('/users/me', ['GET'], 'me')
    router.add('/users/{name}', ['POST'], 'post')
    assert router.match('POST', '/users/me') == ('post', {'name': 'me'})


def test_first_of_several_matching_param_routes_wins():
    router = Router()
    router.add('/f/{a}', ['GET'], 'first')
    router.add('/f/{b:int}', ['GET'], 'second')
    assert router.match('GET', '/f/1') == ('first', {'a': '1'})


def test_router_ignores_one_trailing_slash():
    router = Router()
    router.add('/a', ['GET'], 'a')
    router.add('/p/{x}', ['GET'], 'p')
    router.add('/b/', ['GET'], 'b')
    assert router.match('GET', '/a/') == ('a', {})
    assert router.match('GET', '/p/1/') == ('p', {'x': '1'})
    assert router.match('GET', '/b') == ('b', {})
    assert router.match('GET', '/b/') == ('b', {})
    assert router.lookup('GET', '/a/') == ('a', {})


@pytest.mark.parametrize('path', ['/a//', '//a', '/p//', '/p/1//', '/p//1'])
def test_router_tolerates_only_one_trailing_slash(path):
    router = Router()
    router.add('/a', ['GET'], 'a')
    router.add('/p/{x}', ['GET'], 'p')
    with pytest.raises(RouteNotFound):
        router.match('GET', path)
    assert router.lookup('GET', path) is None


def test_root_route_takes_one_extra_slash_only():
    router = Router()
    router.add('/', ['GET'], 'root')
    assert router.match('GET', '/') == ('root', {})
    assert router.match('GET', '//') == ('root', {})
    with pytest.raises(RouteNotFound):
        router.match('GET', '///')


def test_router_refuses_empty_pattern():
    # no request path is empty: such a route could never be called
    router = Router()
    with pytest.raises(ValueError, match="must start with '/': ''"):
        router.add('', ['GET'], 'root')
    assert len(router) == 0


def test_router_add_propagates_compile_errors():
    router = Router()
    with pytest.raises(ValueError):
        router.add('/x/{id:uuid}', ['GET'], 'x')
    assert len(router) == 0


def test_router_routes_property_in_insertion_order():
    router = Router()
    router.add('/b', ['post', 'GET'], 1)
    router.add('/a/{x}', None, 2)
    router.add('/c', ['get'], 3)
    assert router.routes == [
        ('/b', ('GET', 'POST'), 1),
        ('/a/{x}', None, 2),
        ('/c', ('GET',), 3),
    ]


def test_router_match_returns_fresh_params_for_literal():
    router = Router()
    router.add('/a', None, 'a')
    router.match('GET', '/a')[1]['x'] = 1
    assert router.match('GET', '/a') == ('a', {})


# -- PrefixMatcher --------------------------------------------------------

def test_prefix_double_star_boundaries():
    matcher = PrefixMatcher(['/api/**'])
    assert matcher.is_fallback is False
    assert matcher.matches('/api')
    assert matcher.matches('/api/')
    assert matcher.matches('/api/x')
    assert matcher.matches('/api/x/y')
    assert not matcher.matches('/apix')
    assert not matcher.matches('/apis/x')
    assert not matcher.matches('/')
    assert not matcher.matches('/other')


def test_prefix_root_double_star_matches_everything():
    matcher = PrefixMatcher(['/**'])
    for path in ('/', '/a', '/a/b/c', ''):
        assert matcher.matches(path)


def test_prefix_exact_route():
    matcher = PrefixMatcher(['/api/status'])
    assert matcher.matches('/api/status')
    assert not matcher.matches('/api/status/')
    assert not matcher.matches('/api/status/x')
    assert not matcher.matches('/api')


def test_prefix_mixed_entries():
    matcher = PrefixMatcher(['/health', '/static/**', '/v1/{tenant}/**'])
    assert matcher.matches('/health')
    assert matcher.matches('/static/app.js')
    assert matcher.matches('/v1/acme/orders')
    assert not matcher.matches('/healthz')
    assert not matcher.matches('/v2/acme')


def test_prefix_with_param_segment():
    matcher = PrefixMatcher(['/api/{tenant}/**'])
    assert matcher.matches('/api/acme')
    assert matcher.matches('/api/acme/')
    assert matcher.matches('/api/acme/users/1')
    assert not matcher.matches('/api')
    assert not matcher.matches('/api/')
    assert not matcher.matches('/apix/acme')


def test_prefix_with_typed_param_segment():
    matcher = PrefixMatcher(['/shard/{n:int}/**'])
    assert matcher.matches('/shard/3/data')
    assert not matcher.matches('/shard/three/data')


def test_exact_route_with_param():
    matcher = PrefixMatcher(['/api/{tenant}/status'])
    assert matcher.matches('/api/acme/status')
    assert not matcher.matches('/api/acme/status/x')
    assert not matcher.matches('/api/acme')


def test_prefix_fallback():
    matcher = PrefixMatcher(None)
    assert matcher.is_fallback is True
    assert not matcher.matches('/')
    assert not matcher.matches('/anything')


def test_prefix_empty_list_never_matches_and_is_not_fallback():
    matcher = PrefixMatcher([])
    assert matcher.is_fallback is False
    assert not matcher.matches('/')
    assert not matcher.matches('/api')


@pytest.mark.parametrize('bad, message', [
    ('api/**', "must start with '/'"),
    ('', "must start with '/'"),
    ('/api/**/x', "'\\*\\*'"),
    ('/api**', "'\\*\\*'"),
    ('/a/**b', "'\\*\\*'"),
    ('/{t}/**/x', "'\\*\\*'"),
    ('/x/{id:uuid}/**', 'unknown parameter type'),
    ('/x/{a/**', 'unbalanced'),
])
def test_prefix_invalid_entries(bad, message):
    with pytest.raises(ValueError, match=message):
        PrefixMatcher([bad])


def test_prefix_rejects_non_str_entry():
    with pytest.raises(ValueError):
        PrefixMatcher([None])
