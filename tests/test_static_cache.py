"""Unit tests of the small-file cache in front of StaticFiles."""

import os

from uhttp.workers.static import StaticFiles
from uhttp.workers.static_cache import StaticCache


def make(tmp_path, authoritative=True, **options):
    (tmp_path / 'a.txt').write_bytes(b'first')
    mount = {'path': str(tmp_path), 'authoritative': authoritative}
    return StaticCache(StaticFiles({'/s/': mount}), **options)


def test_small_file_bytes_are_returned_and_reused(tmp_path):
    cache = make(tmp_path)
    result, body = cache.lookup('/s/a.txt')
    assert result.status == 200 and body.data == b'first'
    again, body_again = cache.lookup('/s/a.txt')
    assert again is result and body_again is body  # served from the cache


def test_changed_file_is_never_served_stale(tmp_path):
    cache = make(tmp_path)
    cache.lookup('/s/a.txt')
    path = tmp_path / 'a.txt'
    path.write_bytes(b'second!')
    os.utime(path, ns=(0, 10**9))  # a different mtime even within a tick
    assert cache.lookup('/s/a.txt')[1].data == b'second!'


def test_removed_file_becomes_404(tmp_path):
    cache = make(tmp_path)
    cache.lookup('/s/a.txt')
    (tmp_path / 'a.txt').unlink()
    result, data = cache.lookup('/s/a.txt')
    assert result.status == 404 and data is None


def test_large_files_are_not_read(tmp_path):
    cache = make(tmp_path, max_file=10)
    (tmp_path / 'big.bin').write_bytes(b'x' * 100)
    result, body = cache.lookup('/s/big.bin')
    assert result.status == 200 and result.size == 100
    assert body.data is None and body.size == 100  # an open file, unread
    assert body.file.tell() == 0
    body.close()


def test_refusals_and_other_paths_pass_through(tmp_path):
    cache = make(tmp_path)
    assert cache.lookup('/elsewhere') is None
    assert cache.lookup('/s/../etc/passwd')[0].status == 404
    assert cache.lookup('/s/missing')[0].status == 404


def test_misses_of_a_mount_that_is_not_authoritative_pass_on(tmp_path):
    cache = make(tmp_path, authoritative=False)
    assert cache.lookup('/s/a.txt')[0].status == 200
    assert cache.lookup('/s/missing') is None
    assert cache.lookup('/s/../etc/passwd') is None
    assert not cache.serves('/s/missing')
    assert cache.serves('/s/a.txt')
    (tmp_path / 'a.txt').unlink()
    assert cache.lookup('/s/a.txt') is None


def test_total_size_is_bounded(tmp_path):
    cache = make(tmp_path, max_total=12)
    for name in ('b', 'c', 'd'):
        (tmp_path / name).write_bytes(b'12345')
        cache.lookup(f'/s/{name}')
    assert cache._total <= 12  # pylint: disable=protected-access
