"""Unit tests for uhttp.workers.static."""

import os

import pytest

from uhttp.workers.static import StaticFiles, StaticResult, open_inside
from uhttp.workers.static_cache import StaticCache


@pytest.fixture
def tree(tmp_path):
    """A static root plus a sibling 'secret' file outside it.

    root/
      hello.txt, app.js, style.css, data.json, logo.svg, mod.wasm,
      img.png, photo.JPG, favicon.ico, font.woff2, clip.mp4, page.html,
      blob.unknownext, archive.tar.gz, .hidden, %2e%2e
      docs/index.html, empty/, link-inside.txt -> hello.txt,
      link-outside -> ../secret, link-dir-outside -> ../outside/,
      fifo
    """
    root = tmp_path / 'root'
    root.mkdir()
    (tmp_path / 'secret').write_text('top secret')
    (tmp_path / 'outside').mkdir()
    (tmp_path / 'outside' / 'index.html').write_text('outside')
    (root / 'hello.txt').write_text('hello')
    for name in ('app.js', 'style.css', 'data.json', 'logo.svg', 'mod.wasm',
                 'img.png', 'photo.JPG', 'favicon.ico', 'font.woff2',
                 'clip.mp4', 'page.html', 'blob.unknownext',
                 'archive.tar.gz', '.hidden', '%2e%2e'):
        (root / name).write_bytes(b'x' * 3)
    (root / 'docs').mkdir()
    (root / 'docs' / 'index.html').write_text('<h1>docs</h1>')
    (root / 'empty').mkdir()
    os.symlink('hello.txt', root / 'link-inside.txt')
    os.symlink(tmp_path / 'secret', root / 'link-outside')
    os.symlink(tmp_path / 'outside', root / 'link-dir-outside')
    os.mkfifo(root / 'fifo')
    return root


@pytest.fixture
def static(tree):
    return StaticFiles({'/static/': str(tree)})


def real(path):
    return os.path.realpath(path)


# -- configuration ----------------------------------------------------------

def test_empty_routes_are_falsy_and_match_nothing():
    files = StaticFiles({})
    assert not files
    assert files.lookup('/static/x') is None


def test_configured_routes_are_truthy(static):
    assert static


def test_missing_root_raises_value_error_naming_it(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(ValueError, match='nope'):
        StaticFiles({'/static/': missing})


def test_root_that_is_a_file_raises(tree):
    with pytest.raises(ValueError, match='hello.txt'):
        StaticFiles({'/static/': str(tree / 'hello.txt')})


def test_prefix_must_start_with_slash(tree):
    with pytest.raises(ValueError, match='must start with'):
        StaticFiles({'static/': str(tree)})


def test_duplicate_prefix_after_normalisation_raises(tree):
    with pytest.raises(ValueError, match='duplicate'):
        StaticFiles({'/static': str(tree), '/static/': str(tree)})


@pytest.mark.parametrize('headers', [
    {'X-Bad': 'line\r\nbreak'}, {'Cache-Control': None},
    {'bad name': 'x'}, {'Transfer-Encoding': 'chunked'}])
def test_mount_headers_that_cannot_be_sent_raise(tree, headers):
    with pytest.raises(ValueError, match="static_routes\\['/static/'\\]"):
        StaticFiles({'/static/': {'path': str(tree), 'headers': headers}})


def test_mount_headers_are_kept_lowercased(tree):
    files = StaticFiles({'/static/': {
        'path': str(tree), 'headers': {'Cache-Control': 'max-age=60',
                                       'X-Count': 3}}})
    assert files.lookup('/static/hello.txt').headers == {
        'cache-control': 'max-age=60', 'x-count': 3}


def test_prefix_without_trailing_slash_is_normalised(tree):
    files = StaticFiles({'/static': str(tree)})
    result = files.lookup('/static/hello.txt')
    assert result.status == 200
    assert files.lookup('/statichello.txt') is None


def test_relative_root_resolved_at_init(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    files = StaticFiles({'/s/': './root/'})
    monkeypatch.chdir('/')
    result = files.lookup('/s/hello.txt')
    assert result.status == 200
    assert result.file_path == real(tree / 'hello.txt')


def test_result_is_frozen():
    result = StaticResult(404)
    with pytest.raises(AttributeError):
        result.status = 200
    assert (result.file_path, result.content_type, result.size,
            result.location, result.root) == (None, None, None, None, None)


# -- prefix selection -------------------------------------------------------

def test_non_static_path_returns_none(static):
    assert static.lookup('/api/users') is None
    assert static.lookup('/staticx/hello.txt') is None
    assert static.lookup('/') is None


def test_longest_prefix_wins(tmp_path):
    outer = tmp_path / 'outer'
    inner = tmp_path / 'inner'
    outer.mkdir()
    inner.mkdir()
    (outer / 'f.txt').write_text('outer')
    (inner / 'f.txt').write_text('inner')
    (outer / 'img').mkdir()
    (outer / 'img' / 'f.txt').write_text('outer-img')
    # Insertion order puts the shorter prefix first on purpose.
    files = StaticFiles({'/s/': str(outer), '/s/img/': str(inner)})
    assert files.lookup('/s/img/f.txt').file_path == real(inner / 'f.txt')
    assert files.lookup('/s/f.txt').file_path == real(outer / 'f.txt')
    # '/s/img' is the longer prefix's bare form, not outer/img.
    assert files.lookup('/s/img') == StaticResult(301, location='/s/img/')


def test_root_prefix_serves_everything(tree):
    files = StaticFiles({'/': str(tree)})
    assert files.lookup('/hello.txt').status == 200
    assert files.lookup('/docs/').file_path == real(tree / 'docs/index.html')


# -- successful lookups -----------------------------------------------------

def test_regular_file(static, tree):
    result = static.lookup('/static/hello.txt')
    assert result == StaticResult(
        200, file_path=real(tree / 'hello.txt'),
        content_type='text/plain; charset=utf-8', size=5, root=real(tree))
    assert os.path.isabs(result.file_path)


def test_empty_segments_are_dropped(static, tree):
    result = static.lookup('/static//docs///index.html')
    assert result.status == 200
    assert result.file_path == real(tree / 'docs' / 'index.html')


def test_double_slash_absolute_trick_stays_inside_root(static):
    assert static.lookup('/static//etc/passwd').status == 404
    assert static.lookup('/static///etc/hostname').status == 404


def test_hidden_files_are_served(static, tree):
    result = static.lookup('/static/.hidden')
    assert result.status == 200
    assert result.file_path == real(tree / '.hidden')


def test_directory_with_index(static, tree):
    result = static.lookup('/static/docs/')
    assert result.status == 200
    assert result.file_path == real(tree / 'docs' / 'index.html')
    assert result.content_type == 'text/html; charset=utf-8'
    assert result.size == len('<h1>docs</h1>')


def test_directory_without_index_is_404(static):
    assert static.lookup('/static/empty/') == StaticResult(404)


def test_directory_without_trailing_slash_redirects(static):
    assert static.lookup('/static/docs') == StaticResult(
        301, location='/static/docs/')
    assert static.lookup('/static/empty') == StaticResult(
        301, location='/static/empty/')


def test_bare_prefix_redirects_to_prefix(static):
    assert static.lookup('/static') == StaticResult(301, location='/static/')


def test_prefix_itself_serves_root_index(tree):
    (tree / 'index.html').write_text('home')
    files = StaticFiles({'/static/': str(tree)})
    result = files.lookup('/static/')
    assert result.status == 200
    assert result.file_path == real(tree / 'index.html')


def test_prefix_itself_without_index_is_404(static):
    assert static.lookup('/static/').status == 404


def test_file_with_trailing_slash_is_404(static):
    assert static.lookup('/static/hello.txt/').status == 404


def test_missing_file_is_404(static):
    assert static.lookup('/static/nope.txt').status == 404
    assert static.lookup('/static/hello.txt/deeper').status == 404


def test_symlink_inside_root_is_served(static, tree):
    result = static.lookup('/static/link-inside.txt')
    assert result.status == 200
    assert result.file_path == real(tree / 'hello.txt')


def test_symlink_to_file_outside_root_is_404(static):
    assert static.lookup('/static/link-outside').status == 404


def test_symlink_to_directory_outside_root_is_404(static):
    assert static.lookup('/static/link-dir-outside/').status == 404
    assert static.lookup('/static/link-dir-outside/index.html').status == 404
    assert static.lookup('/static/link-dir-outside').status == 404


def test_index_html_symlink_outside_root_is_404(tree, tmp_path):
    (tree / 'trap').mkdir()
    os.symlink(tmp_path / 'secret', tree / 'trap' / 'index.html')
    files = StaticFiles({'/static/': str(tree)})
    assert files.lookup('/static/trap/').status == 404


def test_root_given_through_symlink(tree, tmp_path):
    os.symlink(tree, tmp_path / 'alias')
    files = StaticFiles({'/static/': str(tmp_path / 'alias')})
    result = files.lookup('/static/hello.txt')
    assert result.status == 200
    assert result.file_path == real(tree / 'hello.txt')
    assert files.lookup('/static/link-outside').status == 404


def test_fifo_is_404(static):
    assert static.lookup('/static/fifo').status == 404


@pytest.mark.skipif(
    hasattr(os, 'geteuid') and os.geteuid() == 0,
    reason='root can read files regardless of permissions')
def test_unreadable_file_is_404(static, tree):
    target = tree / 'hello.txt'
    target.chmod(0)
    try:
        assert static.lookup('/static/hello.txt').status == 404
    finally:
        target.chmod(0o644)


def test_file_failing_access_check_is_404(static, monkeypatch):
    # Covers the os.access branch even when tests run as root.
    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    assert static.lookup('/static/hello.txt').status == 404


def test_lookup_does_not_read_the_file(static, tree, monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError('lookup must not open files')
    monkeypatch.setattr('builtins.open', no_open)
    monkeypatch.setattr(os, 'open', no_open)
    assert static.lookup('/static/hello.txt').status == 200


# -- traversal and malformed paths ------------------------------------------

@pytest.mark.parametrize('path', [
    '/static/../secret',
    '/static/a/../../secret',
    '/static/..',
    '/static/../',
    '/static/docs/../../secret',
    '/static/docs/..',
    '/static/..//secret',
])
def test_dot_dot_segments_are_404(static, path):
    assert static.lookup(path) == StaticResult(404)


def test_dot_dot_inside_root_is_still_rejected(static):
    # Would resolve inside the root, but any '..' segment is refused.
    assert static.lookup('/static/docs/../hello.txt').status == 404


def test_nul_byte_is_404(static):
    assert static.lookup('/static/hello.txt\x00.png').status == 404
    assert static.lookup('/static/\x00').status == 404


def test_literal_percent_encoded_name_is_not_decoded_again(static, tree):
    # '%252e%252e' reached us as the literal name '%2e%2e', a real file.
    result = static.lookup('/static/%2e%2e')
    assert result.status == 200
    assert result.file_path == real(tree / '%2e%2e')
    assert static.lookup('/static/%2e%2e/secret').status == 404
    assert static.lookup('/static/%2E%2E').status == 404


def test_backslash_is_an_ordinary_character(static, tree):
    assert static.lookup('/static/..\\secret').status == 404
    (tree / 'a\\b.txt').write_text('x')
    assert static.lookup('/static/a\\b.txt').status == 200


def test_dot_segments_are_ignored(static, tree):
    result = static.lookup('/static/./hello.txt')
    assert result.file_path == real(tree / 'hello.txt')


def test_very_long_name_is_404(static):
    assert static.lookup('/static/' + 'a' * 5000).status == 404


# -- content types ------------------------------------------------------------

@pytest.mark.parametrize('name, expected', [
    ('page.html', 'text/html; charset=utf-8'),
    ('app.js', 'text/javascript; charset=utf-8'),
    ('style.css', 'text/css; charset=utf-8'),
    ('hello.txt', 'text/plain; charset=utf-8'),
    ('data.json', 'application/json'),
    ('logo.svg', 'image/svg+xml'),
    ('mod.wasm', 'application/wasm'),
    ('img.png', 'image/png'),
    ('photo.JPG', 'image/jpeg'),
    ('favicon.ico', 'image/x-icon'),
    ('font.woff2', 'font/woff2'),
    ('clip.mp4', 'video/mp4'),
    ('blob.unknownext', 'application/octet-stream'),
    ('archive.tar.gz', 'application/octet-stream'),
    ('.hidden', 'application/octet-stream'),
])
def test_content_types(static, name, expected):
    assert static.lookup('/static/' + name).content_type == expected


def test_content_type_from_mimetypes_for_other_text_types(static, tree):
    (tree / 'notes.csv').write_text('a,b')
    assert static.lookup('/static/notes.csv').content_type == \
        'text/csv; charset=utf-8'


def test_content_type_follows_url_name_for_symlink(static, tree):
    os.symlink('app.js', tree / 'latest.txt')
    result = static.lookup('/static/latest.txt')
    assert result.file_path == real(tree / 'app.js')
    assert result.content_type == 'text/plain; charset=utf-8'


# -- opening without following symlinks ------------------------------------------

def swap_for_symlink(path, target):
    """Atomically replace `path` by a symlink to `target` (rename over it)."""
    temporary = str(path) + '.swap'
    os.symlink(target, temporary)
    os.rename(temporary, path)


def test_open_inside_opens_the_resolved_file(static, tree):
    result = static.lookup('/static/docs/index.html')
    handle, info = open_inside(result.root, result.file_path)
    with handle:
        assert handle.read() == b'<h1>docs</h1>'
    assert info.st_size == len('<h1>docs</h1>')


def test_open_inside_refuses_a_file_swapped_for_a_symlink(static, tree):
    result = static.lookup('/static/hello.txt')
    swap_for_symlink(tree / 'hello.txt', tree.parent / 'secret')
    with pytest.raises(OSError):
        open_inside(result.root, result.file_path)
    # resolving afresh sees the link and refuses it
    assert static.lookup('/static/hello.txt').status == 404


def test_open_inside_refuses_even_a_symlink_inside_the_root(static, tree):
    # it opens the real path that was checked, nothing that replaced it
    result = static.lookup('/static/hello.txt')
    swap_for_symlink(tree / 'hello.txt', tree / 'page.html')
    with pytest.raises(OSError):
        open_inside(result.root, result.file_path)
    assert static.lookup('/static/hello.txt').file_path == \
        real(tree / 'page.html')


def test_open_inside_refuses_a_directory_swapped_for_a_symlink(
        static, tree, tmp_path):
    result = static.lookup('/static/docs/index.html')
    os.rename(tree / 'docs', tmp_path / 'docs-moved')
    os.symlink(tmp_path / 'outside', tree / 'docs')  # has an index.html
    with pytest.raises(OSError):
        open_inside(result.root, result.file_path)
    assert static.lookup('/static/docs/index.html').status == 404


def test_open_inside_refuses_a_fifo_without_blocking(tree):
    with pytest.raises(OSError):
        open_inside(real(tree), real(tree / 'fifo'))


def test_open_inside_refuses_a_path_outside_the_root(tree, tmp_path):
    with pytest.raises(OSError):
        open_inside(real(tree), real(tmp_path / 'secret'))
    with pytest.raises(OSError):
        open_inside(real(tree), real(tree))
    sibling = tmp_path / (tree.name + 'x')   # shares the root's name prefix
    sibling.mkdir()
    (sibling / 'secret').write_text('top secret')
    with pytest.raises(OSError):
        open_inside(real(tree), real(sibling / 'secret'))
    with pytest.raises(OSError):
        open_inside(real(tree), real(tree) + '/docs/../../secret')


# -- the cache in front: a swapped file is never served from it --------------------

def cached_lookup(cache, path):
    """The result and the bytes the dispatcher would send for `path`."""
    result, body = cache.lookup(path)
    if body is None:
        return result, None
    if body.file is None:
        return result, body.data
    with body.file:
        return result, body.file.read()


def refused(cache, path, authoritative):
    """True when `cache` does not serve `path`: an authoritative mount
    answers 404, any other passes the path on (None)."""
    if not authoritative:
        return cache.lookup(path) is None
    result, data = cached_lookup(cache, path)
    return result.status == 404 and data is None


def mount(tree, authoritative):
    return {'/static/': {'path': str(tree), 'authoritative': authoritative}}


@pytest.mark.parametrize('authoritative', [True, False],
                         ids=['authoritative', 'passes-on'])
@pytest.mark.parametrize('max_file', [1024, 4], ids=['cached', 'streamed'])
def test_file_swapped_for_outside_symlink_is_never_served(
        tree, tmp_path, max_file, authoritative):
    cache = StaticCache(StaticFiles(mount(tree, authoritative)),
                        max_file=max_file)
    result, data = cached_lookup(cache, '/static/hello.txt')
    assert result.status == 200 and data == b'hello'
    swap_for_symlink(tree / 'hello.txt', tmp_path / 'secret')
    for _ in range(3):  # within the resolution's ttl, and after forgetting
        assert refused(cache, '/static/hello.txt', authoritative)


@pytest.mark.parametrize('authoritative', [True, False],
                         ids=['authoritative', 'passes-on'])
@pytest.mark.parametrize('max_file', [1024, 4], ids=['cached', 'streamed'])
def test_directory_swapped_for_outside_symlink_is_never_served(
        tree, tmp_path, max_file, authoritative):
    cache = StaticCache(StaticFiles(mount(tree, authoritative)),
                        max_file=max_file)
    assert cached_lookup(cache, '/static/docs/index.html')[1] == \
        b'<h1>docs</h1>'
    os.rename(tree / 'docs', tmp_path / 'docs-moved')
    os.symlink(tmp_path / 'outside', tree / 'docs')
    assert refused(cache, '/static/docs/index.html', authoritative)


def test_file_swapped_for_inside_symlink_serves_the_link_target(tree):
    cache = StaticCache(StaticFiles({'/static/': str(tree)}))
    assert cached_lookup(cache, '/static/hello.txt')[1] == b'hello'
    (tree / 'other.txt').write_bytes(b'other file')
    swap_for_symlink(tree / 'hello.txt', 'other.txt')
    result, data = cached_lookup(cache, '/static/hello.txt')
    assert result.status == 200 and data == b'other file'
    assert result.size == len(b'other file')


@pytest.mark.parametrize('max_file', [1024, 4], ids=['cached', 'streamed'])
def test_plain_file_replaced_or_rewritten_serves_new_bytes(tree, max_file):
    cache = StaticCache(StaticFiles({'/static/': str(tree)}),
                        max_file=max_file)
    assert cached_lookup(cache, '/static/hello.txt')[1] == b'hello'
    (tree / 'new.tmp').write_bytes(b'hello again')
    os.rename(tree / 'new.tmp', tree / 'hello.txt')  # a deploy's swap
    result, data = cached_lookup(cache, '/static/hello.txt')
    assert data == b'hello again' and result.size == len(data)
    with open(tree / 'hello.txt', 'ab') as handle:  # appended in place
        handle.write(b', longer')
    result, data = cached_lookup(cache, '/static/hello.txt')
    assert data == b'hello again, longer' and result.size == len(data)
