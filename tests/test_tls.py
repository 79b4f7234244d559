"""HTTPS with ssl_context: static, sync and pool routes over TLS."""

import http.client
import json
import shutil
import ssl
import subprocess

import pytest


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command is needed to make a test certificate')
    directory = tmp_path_factory.mktemp('tls')
    cert, key = directory / 'cert.pem', directory / 'key.pem'
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
         '-keyout', str(key), '-out', str(cert), '-days', '2',
         '-subj', '/CN=127.0.0.1'],
        check=True, capture_output=True, timeout=60)
    return cert, key


def https_get(port, path, timeout=10):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection('127.0.0.1', port,
                                             timeout=timeout, context=context)
    try:
        connection.request('GET', path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_https_serves_sync_and_pool_routes(start_server, certificate):
    cert, key = certificate
    server = start_server('core_app.py', env={
        'TLS_CERT': str(cert), 'TLS_KEY': str(key)}, ready_workers=4)
    assert 'listening on https://' in server.log
    status, body = https_get(server.port, '/sync/hello/tls')
    assert (status, json.loads(body)) == (200, {'hello': 'tls'})
    status, body = https_get(server.port, '/api/item/7')
    assert (status, json.loads(body)) == (200, {'id': 7})
    status, body = https_get(server.port, '/api/sleep/0.3')
    assert status == 200 and json.loads(body)['slept'] == 0.3
    # plain HTTP on the TLS port is refused, and the server goes on
    try:
        answer = server.raw(b'GET /sync/hello/x HTTP/1.1\r\nHost: x\r\n\r\n')
    except ConnectionResetError:
        answer = b''
    assert b'"hello"' not in answer
    assert https_get(server.port, '/api/item/8')[0] == 200


def test_https_flood_beyond_max_pending_waits_its_turn(start_server,
                                                       certificate):
    # over TLS a waiting connection cannot be peeked at: it is parked, and
    # read again (its TLS layer included) once there is room
    import concurrent.futures  # pylint: disable=import-outside-toplevel
    cert, key = certificate
    server = start_server('core_app.py', env={
        'TLS_CERT': str(cert), 'TLS_KEY': str(key), 'MAX_PENDING': '2'},
        ready_workers=4)

    def client(index):
        statuses = []
        for _ in range(3):
            try:
                statuses.append(https_get(server.port, '/api/sleep/0.05',
                                          timeout=30)[0])
            except OSError as err:
                statuses.append(repr(err))
        return statuses
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        statuses = [s for batch in executor.map(client, range(8))
                    for s in batch]
    assert statuses == [200] * 24, (statuses, server.log[-3000:])
    assert https_get(server.port, '/sync/hello/after')[0] == 200
