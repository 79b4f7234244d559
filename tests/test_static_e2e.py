"""End-to-end tests of static files served by the dispatcher.

core_app.py runs with STATIC_DIR pointing at a temporary directory mounted
at '/static/'; a secret file lies next to (outside) that directory. Path
traversal attempts go over raw sockets so that exactly the bytes written
here reach the server.
"""

import hashlib
import os
import socket

import pytest

from conftest import APPS, Server, parse_response

CORE_APP = os.path.join(APPS, 'core_app.py')
SECRET = b'TOP SECRET 8f3a0c: never served'

PNG = (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01'
       b'\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8'
       b'\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82')

FILES = {
    'index.html': b'<html><body>root index</body></html>',
    'style.css': b'body { color: red; }',
    'app.js': b'console.log("static");',
    'image.png': PNG,
    'notes.txt': b'plain notes',
    'data.bin': b'\x00\x01\x02',
    'sub/index.html': b'<p>sub index</p>',
    'sub/page.html': b'<p>sub page</p>',
    'nodir/readme.txt': b'no index here',
}


# -- helpers -------------------------------------------------------------------

def raw_get(port, target, extra=b''):
    """GET exactly `target` (bytes, sent as is); return (status, headers,
    body, everything received), status None if closed without answer."""
    request = (b'GET ' + target + b' HTTP/1.1\r\nHost: test\r\n'
               b'Connection: close\r\n' + extra + b'\r\n')
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(request)
        received = bytearray()
        while True:
            parsed = parse_response(received)
            if parsed:
                status, headers, body, _ = parsed
                return status, headers, body, bytes(received)
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b''
            if not chunk:
                return None, {}, b'', bytes(received)
            received += chunk


# -- the server ------------------------------------------------------------------

@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp('static_e2e')
    root = base / 'static'
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (base / 'secret.txt').write_bytes(SECRET)
    outside_dir = base / 'outside'
    outside_dir.mkdir()
    (outside_dir / 'secret.txt').write_bytes(SECRET)
    os.symlink(base / 'secret.txt', root / 'link-out.txt')
    os.symlink(outside_dir, root / 'dir-out')
    os.symlink(root / 'notes.txt', root / 'link-in.txt')
    big = os.urandom(1024 * 1024)
    (root / 'big.bin').write_bytes(big)
    return {'base': base, 'root': root, 'big': big}


@pytest.fixture(scope='module')
def static(tree):
    server = Server(CORE_APP, env={'STATIC_DIR': str(tree['root'])})
    try:
        server.start(ready_workers=4)
        yield server
    finally:
        server.stop()


# -- content and types -------------------------------------------------------------

@pytest.mark.parametrize('name, content_type', [
    ('index.html', 'text/html'),
    ('style.css', 'text/css'),
    ('app.js', ('text/javascript', 'application/javascript')),
    ('image.png', 'image/png'),
    ('notes.txt', 'text/plain'),
    ('data.bin', 'application/octet-stream'),
    ('sub/page.html', 'text/html'),
])
def test_content_type_and_body(static, name, content_type):
    result = static.get('/static/' + name)
    assert result.status == 200
    media_type = result.headers['content-type'].split(';')[0].strip()
    expected = content_type if isinstance(content_type, tuple) \
        else (content_type,)
    assert media_type in expected, result.headers
    assert result.body == FILES[name]
    assert int(result.headers['content-length']) == len(FILES[name])


def test_directory_serves_index_html(static):
    result = static.get('/static/')
    assert result.status == 200
    assert result.body == FILES['index.html']
    assert result.headers['content-type'].startswith('text/html')
    result = static.get('/static/sub/')
    assert result.status == 200
    assert result.body == FILES['sub/index.html']


def test_directory_without_slash_redirects(static):
    result = static.get('/static/sub')
    assert result.status == 301
    assert result.headers['location'] == '/static/sub/'
    result = static.get('/static')
    assert result.status == 301
    assert result.headers['location'] == '/static/'


@pytest.mark.parametrize('path', [
    '/static/missing.txt', '/static/sub/missing.html', '/static/nodir/',
    '/static/notes.txt/'])
def test_missing_is_404(static, path):
    result = static.get(path)
    assert result.status == 404
    assert FILES['notes.txt'] not in result.body


def test_one_mebibyte_file_byte_exact(static, tree):
    result = static.get('/static/big.bin', timeout=30)
    assert result.status == 200
    assert int(result.headers['content-length']) == len(tree['big'])
    assert len(result.body) == len(tree['big'])
    assert hashlib.sha256(result.body).hexdigest() == \
        hashlib.sha256(tree['big']).hexdigest()
    assert result.body == tree['big']


def test_symlink_inside_root_is_served(static):
    result = static.get('/static/link-in.txt')
    assert result.status == 200
    assert result.body == FILES['notes.txt']


def test_do_check_not_called_for_static(static):
    for mode in ('default', 'custom', 'crash'):
        result = static.get('/static/notes.txt', headers={'X-Deny': mode})
        assert result.status == 200, mode
        assert result.body == FILES['notes.txt']
    # the same header does stop a pool request (the check is active)
    assert static.get('/api/item/1', headers={'X-Deny': 'default'}).status \
        == 403


def test_raw_helper_control(static):
    # the raw path used below does serve files when the path is fine
    status, _headers, body, _ = raw_get(static.port, b"/static/notes.txt")
    assert status == 200 and body == FILES['notes.txt']
    status, _, body, _ = raw_get(static.port, b'/static/sub%2fpage.html')
    assert status == 200 and body == FILES['sub/page.html']


# -- nothing outside the root ------------------------------------------------------

@pytest.mark.parametrize('target', [
    b'/static/../secret.txt',
    b'/static/%2e%2e/secret.txt',
    b'/static/%2E%2E/secret.txt',
    b'/static/%2e%2e%2fsecret.txt',
    b'/static/..%2fsecret.txt',
    b'/static/..%2Fsecret.txt',
    b'/static/sub/../../secret.txt',
    b'/static/./../secret.txt',
    b'/static/..%5csecret.txt',
    b'/static/%252e%252e/secret.txt',
    b'/static//etc/passwd',
    b'/static/%2fetc/passwd',
    b'/static/%00x',
    b'/static/notes.txt%00.html',
    b'/static/link-out.txt',
    b'/static/dir-out/secret.txt',
    b'/static/dir-out/',
])
def test_traversal_never_leaks(static, tree, target):
    status, _headers, body, received = raw_get(static.port, target)
    assert SECRET not in received
    assert b'root:' not in received          # /etc/passwd
    assert status is None or 400 <= status < 500, (target, status, body)
    # the server is still fine afterwards
    assert static.get('/static/notes.txt').body == FILES['notes.txt']
    assert (tree['base'] / 'secret.txt').read_bytes() == SECRET


def test_head_has_no_body_and_other_methods_are_refused(static):
    with socket.create_connection(('127.0.0.1', static.port),
                                  timeout=10) as sock:
        sock.sendall(b'HEAD /static/index.html HTTP/1.1\r\nHost: x\r\n\r\n'
                     b'GET /static/style.css HTTP/1.1\r\nHost: x\r\n'
                     b'Connection: close\r\n\r\n')
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, rest = data.split(b'\r\n\r\n', 1)
    assert head.startswith(b'HTTP/1.1 200')
    # the next bytes are the GET's answer, not a body of the HEAD
    assert rest.startswith(b'HTTP/1.1 200')
    assert b'text/css' in rest
    refused = static.request('DELETE', '/static/index.html')
    assert refused.status == 405 and refused.headers['allow'] == 'GET, HEAD'


# -- files swapped for symlinks ------------------------------------------------------

SMALL = 1000              # served from the dispatcher's small-file cache
LARGE = 300 * 1024        # above the cache's 256 KiB: streamed from disk


def swap_for_symlink(path, target):
    """Atomically replace `path` by a symlink to `target`."""
    temporary = str(path) + '.swap'
    os.symlink(target, temporary)
    os.rename(temporary, path)


def replace_file(path, content):
    """Atomically replace `path` by a new regular file (a deploy's swap)."""
    temporary = str(path) + '.new'
    with open(temporary, 'wb') as handle:
        handle.write(content)
    os.rename(temporary, path)


@pytest.mark.parametrize('size', [SMALL, LARGE], ids=['cached', 'streamed'])
def test_file_swapped_for_outside_symlink_is_404(static, tree, size):
    name = f'swap-{size}.bin'
    inside = os.urandom(size)
    outside = SECRET * (size // len(SECRET) + 1)
    (tree['base'] / name).write_bytes(outside)
    (tree['root'] / name).write_bytes(inside)
    for _ in range(2):  # the second answer comes from what was kept
        served = static.get('/static/' + name)
        assert served.status == 200 and served.body == inside
    swap_for_symlink(tree['root'] / name, tree['base'] / name)
    for _ in range(5):  # at once (within the lookup's ttl) and again
        status, _headers, _body, received = raw_get(
            static.port, b'/static/' + name.encode())
        assert status == 404
        assert SECRET not in received


@pytest.mark.parametrize('size', [SMALL, LARGE], ids=['cached', 'streamed'])
def test_directory_swapped_for_outside_symlink_is_404(static, tree, size):
    directory = tree['root'] / f'swapdir-{size}'
    directory.mkdir()
    (directory / 'page.bin').write_bytes(b'i' * size)
    elsewhere = tree['base'] / f'elsewhere-{size}'
    elsewhere.mkdir()
    (elsewhere / 'page.bin').write_bytes(SECRET * (size // len(SECRET) + 1))
    path = f'/static/swapdir-{size}/page.bin'.encode()
    assert raw_get(static.port, path)[0] == 200
    os.rename(directory, tree['base'] / f'moved-{size}')
    os.symlink(elsewhere, directory)
    status, _headers, _body, received = raw_get(static.port, path)
    assert status == 404
    assert SECRET not in received


@pytest.mark.parametrize('size', [SMALL, LARGE], ids=['cached', 'streamed'])
def test_plain_file_still_serves_and_updates(static, tree, size):
    name = f'plain-{size}.bin'
    first, second = os.urandom(size), os.urandom(size + 7)
    (tree['root'] / name).write_bytes(first)
    assert static.get('/static/' + name).body == first
    replace_file(tree['root'] / name, second)
    served = static.get('/static/' + name)
    assert served.status == 200 and served.body == second
    assert int(served.headers['content-length']) == len(second)


def test_file_swapped_for_inside_symlink_serves_its_target(static, tree):
    (tree['root'] / 'swap-in.txt').write_bytes(b'before')
    assert static.get('/static/swap-in.txt').body == b'before'
    swap_for_symlink(tree['root'] / 'swap-in.txt', 'notes.txt')
    served = static.get('/static/swap-in.txt')
    assert served.status == 200 and served.body == FILES['notes.txt']


# -- HEAD ------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['style.css', 'big.bin'],
                         ids=['cached', 'streamed'])
def test_head_carries_the_length_get_sends(static, name):
    get = static.get('/static/' + name)
    head = static.request('HEAD', '/static/' + name)
    assert head.status == 200 and head.body == b''
    assert int(head.headers['content-length']) == len(get.body) > 0
    assert head.headers['content-length'] == get.headers['content-length']
    assert head.headers['content-type'] == get.headers['content-type']


def test_head_sends_no_body_bytes(static, tree):
    # a pipelined GET follows the HEAD: its status line must come right
    # after the HEAD's headers, however long the file is
    with socket.create_connection(('127.0.0.1', static.port),
                                  timeout=10) as sock:
        sock.sendall(b'HEAD /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n'
                     b'GET /static/notes.txt HTTP/1.1\r\nHost: x\r\n'
                     b'Connection: close\r\n\r\n')
        data = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, rest = data.split(b'\r\n\r\n', 1)
    assert b'content-length: %d' % len(tree['big']) in head.lower()
    assert rest.startswith(b'HTTP/1.1 200')
    assert rest.endswith(FILES['notes.txt'])
