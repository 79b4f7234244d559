"""Unit tests of the remote pool's Redis encoding (pure functions)."""

import pytest

from uhttp.workers import messages
from uhttp.workers import remote_protocol as rp


def test_a_request_round_trips_with_bytes_and_json_data():
    message = messages.request(7, 'POST', '/items', {'a': ['1', '2']},
                               {'content-type': 'text/plain'},
                               {'raw': b'\x00\xff', 'n': 1}, '10.0.0.1:5',
                               keep_alive=True, context={'user': 'ann'})
    fields = rp.encode_request('d1', message, 30000)
    assert rp.decode_request(fields) == ('d1', 30000, message)


def test_a_reply_keeps_the_wire_bytes_exactly():
    wire = b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n\x00\x01'
    message = messages.response(7, 200, wire, True, '/items')
    assert rp.decode_reply(rp.encode_reply('host:1', message)) == (
        'host:1', message)


def test_a_context_json_cannot_carry_is_a_clear_error():
    message = messages.request(1, 'GET', '/', None, {}, None, None,
                               context=object())
    with pytest.raises(rp.ProtocolError, match='remote pools carry JSON'):
        rp.encode_request('d1', message, 1000)


def test_a_malformed_entry_is_a_protocol_error():
    with pytest.raises(rp.ProtocolError):
        rp.decode_request({b'd': b'x', b't': b'nan?', b'm': b'[1]'})
    with pytest.raises(rp.ProtocolError):
        rp.decode_reply({b'm': b'[22]'})
    with pytest.raises(rp.ProtocolError, match='not a request'):
        rp.decode_request(rp.encode_reply('c', messages.stop())
                          | {b'd': b'x', b't': b'1'})


def test_entry_age_uses_the_server_clock_of_the_entry_id():
    assert rp.entry_age_ms(b'1700000000000-3', 1700000000250) == 250
    assert rp.entry_age_ms('1700000000000-0', 1700000000000) == 0


def test_heartbeat_and_lost_round_trip():
    value = rp.encode_heartbeat('h1', 42, workers=4, busy=1, handled=9)
    assert rp.decode_heartbeat(value) == {
        'host': 'h1', 'pid': 42, 'workers': 4, 'busy': 1, 'handled': 9}
    assert rp.decode_reply(rp.encode_reply('c', rp.lost(3, 'died'))) == (
        'c', (rp.LOST, 3, 'died'))
