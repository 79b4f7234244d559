"""Every example starts as `python examples/NAME.py` and answers a real request."""

import os

from conftest import ROOT

EXAMPLES = os.path.join(ROOT, 'examples')


def example(name):
    return os.path.join(EXAMPLES, name)


def test_quickstart(start_server):
    server = start_server(example('quickstart.py'), ready_workers=4)
    assert server.get('/health').json() == {'status': 'ok'}
    assert server.get('/api/items').status == 401
    key = {'x-api-key': 'secret'}
    created = server.request('POST', '/api/items', body={'name': 'pen'},
                             headers=key)
    assert created.status == 201 and created.json()['name'] == 'pen'
    assert server.get('/api/item/1', headers=key).json() == {
        'id': 1, 'name': 'first'}
    assert server.get('/api/item/999', headers=key).status == 404


def test_multi_pool(start_server):
    server = start_server(example('multi_pool.py'), ready_workers=5)
    key = {'x-api-key': 'demo'}
    assert server.get('/api/user').status == 401
    users = server.get('/api/user', headers=key).json()['users']
    assert [user['name'] for user in users] == ['ada', 'linus']
    admin = server.get('/api/admin/user/1', headers=key).json()
    assert admin == {'id': 1, 'name': 'ada'}
    assert server.get('/api/compute/fib/10', headers=key).json()['fib'] == '55'
    assert server.get('/api/order/7', headers=key).json()['id'] == 7
    assert server.get('/api/echo?x=1', headers=key).json()['query'] == {
        'x': '1'}
    assert server.get('/health').json() == {'status': 'ok'}
    pools = server.get('/monitor').json()['pools']
    assert [pool['name'] for pool in pools] == [
        'ComputeWorker', 'StorageWorker', 'GeneralWorker']


def test_static_site(start_server):
    server = start_server(example('static_site.py'), ready_workers=2)
    page = server.get('/static/')
    assert page.status == 200
    assert page.headers['content-type'].startswith('text/html')
    assert b'Served by the dispatcher' in page.body
    assert server.get('/static/app.js').headers['content-type'].startswith(
        'text/javascript')
    assert server.get('/').status == 302
    assert 'time' in server.get('/api/time').json()
