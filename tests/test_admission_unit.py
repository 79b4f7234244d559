"""Admission control without sockets: when parked connections are read again."""

from uhttp.workers.admission import HOLD_FULL, Admission


class FakeGate:
    def __init__(self):
        self.holds = set()

    def hold(self, reason):
        self.holds.add(reason)

    def release(self, reason):
        self.holds.discard(reason)


class FakeConnection:
    def __init__(self, name):
        self.name = name
        self._read_paused = False
        self._read_pause_timeout = None

    def _unregister(self):
        pass


def test_closes_at_max_pending_and_reopens_below_the_low_water_mark():
    admission, gate = Admission(20, park_limit=100), FakeGate()
    assert admission.reopen_at == 18
    assert not admission.update(20, gate) and admission.closed
    assert not admission.update(19, gate) and admission.closed
    assert not admission.update(18, gate)
    assert not admission.closed


def test_every_parked_connection_is_read_again_when_it_reopens():
    # a parked connection may hold no request (its client left, or it was
    # parked between two requests): keeping places for some of them only
    # would leave the rest parked with nothing left to wake them
    admission, gate = Admission(20, park_limit=100), FakeGate()
    admission.update(20, gate)
    parked = [FakeConnection(i) for i in range(5)]
    for connection in parked:
        admission.park(connection, gate)
        assert connection._read_paused
    assert not admission.update(19, gate)    # not below the mark yet
    assert admission.update(18, gate) == parked  # all, oldest first
    assert admission.parked_count == 0


def test_accepting_pauses_once_the_parked_reach_the_listen_backlog():
    admission, gate = Admission(1, park_limit=3), FakeGate()
    admission.update(1, gate)
    for index in range(3):
        admission.park(FakeConnection(index), gate)
    assert HOLD_FULL in gate.holds
    admission.update(0, gate)
    assert HOLD_FULL not in gate.holds
