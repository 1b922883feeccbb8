"""BFD state machine, probe thresholds, host liveness, failover analysis: pure logic."""
import time

import pytest

from hostagent.probes import ProbeState, probe_targets
from mux import datapath
from mux.bfd import DOWN, INIT, UP, Packet, Session
from muxlab.cli.failover import analyse
from muxlab.model.compiled import Probe
from muxlab.node.desired import STALE_AFTER, Liveness
from tests.unit.conftest import fabric, services


# ---------------------------------------------------------------- BFD

def test_bfd_packet_roundtrip():
    p = Packet(UP, 0x11223344, 0x55667788, 3, 300_000, 300_000, poll=True)
    raw = p.encode()
    assert len(raw) == 24 and raw[0] == 0x20 and raw[1] == (UP << 6) | 0x20
    assert Packet.decode(raw) == p
    with pytest.raises(ValueError):
        Packet.decode(raw[:10])
    with pytest.raises(ValueError):
        Packet.decode(bytes([0x40]) + raw[1:])  # version 2


def test_bfd_three_way_handshake_and_detection():
    a, b = Session(1), Session(2)
    t = 100.0
    b.receive(a.packet(), t)                  # a Down -> b Init
    assert b.state == INIT
    a.receive(b.packet(), t)                  # b Init -> a Up
    assert a.state == UP
    b.receive(a.packet(), t)                  # a Up -> b Up
    assert b.state == UP
    assert not a.expire(t + 0.5)
    assert a.expire(t + a.detection_time() + 0.01) and a.state == DOWN  # silence -> Down


def test_bfd_answers_poll_with_final_and_follows_peer_down():
    s = Session(7)
    s.receive(Packet(DOWN, 9, 0), 1.0)
    s.receive(Packet(UP, 9, 7, poll=True), 1.1)
    assert s.state == UP and s.packet().final and not s.packet().final
    s.receive(Packet(DOWN, 9, 7), 1.2)
    assert s.state == DOWN


def test_bfd_ignores_packets_for_another_session():
    s = Session(7)
    assert not s.receive(Packet(DOWN, 9, 12345), 1.0) and s.state == DOWN


def test_bfd_detection_time_uses_peer_interval():
    s = Session(1, tx_us=300_000, rx_us=300_000, mult=3)
    s.receive(Packet(DOWN, 2, 0, detect_mult=3, desired_min_tx_us=1_000_000), 0.0)
    assert s.detection_time() == pytest.approx(3.0)


# ---------------------------------------------------------------- probes

PROBE = Probe("lb/p", "http", 8080, "/health", 1.0, 0.5, unhealthy_threshold=2, healthy_threshold=3)


def test_probe_thresholds():
    st = ProbeState()
    assert not st.step(False, PROBE, 1) and st.up          # one failure: still in rotation
    assert st.step(False, PROBE, 2) and not st.up          # second: out
    assert not st.step(True, PROBE, 3) and not st.step(True, PROBE, 4)
    assert st.step(True, PROBE, 5) and st.up and st.since == 5  # third success: back
    st.step(False, PROBE, 6)
    st.step(True, PROBE, 7)
    assert not st.step(False, PROBE, 8) and st.up           # failures must be consecutive


def test_probe_targets_are_local_vms_with_probes():
    t = probe_targets(fabric(), services(), "host2")
    assert set(t) == {("vm3", "web/http-health"), ("vm3", "web/tcp-dns"), ("vm4", "web/http-health"), ("vm4", "web/tcp-dns")}
    assert t[("vm4", "web/http-health")][1] == "10.1.2.14"


# ---------------------------------------------------------------- host liveness


class FakeRow:
    def __init__(self, name, heartbeat):
        self.name, self.heartbeat = name, heartbeat


class Replica:
    """The two things Liveness reads from an OVSDB replica: Chassis rows, connection epoch."""

    def __init__(self):
        self.beats, self.connected_since = {}, 0.0

    def rows(self, table):
        assert table == "Chassis"
        return [FakeRow(h, v) for h, v in self.beats.items()]


def test_silent_host_is_dead_and_reconnect_restarts_every_clock(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    db, live = Replica(), Liveness(["host1", "host2", "host3"])
    db.connected_since = 100.0
    db.beats = {"host1": 1, "host2": 1}
    assert live.dead(db) == frozenset()                    # everyone gets a grace period
    clock[0] += STALE_AFTER + 0.5
    db.beats = {"host1": 5, "host2": 1}                    # host2 stopped beating, host3 never did
    assert live.dead(db) == {"host2", "host3"}
    clock[0] += 60                                         # managers unreachable: nothing moves...
    db.connected_since = clock[0]                          # ...until the replica reconnects
    assert live.dead(db) == frozenset()


def test_every_host_silent_at_once_is_a_control_plane_outage_and_changes_nothing(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    db, live = Replica(), Liveness(["host1", "host2", "host3"])
    db.beats = {"host1": 1, "host2": 1, "host3": 1}
    assert live.dead(db) == frozenset()
    clock[0] += 2
    db.beats = {"host1": 2, "host2": 2, "host3": 1}
    clock[0] += STALE_AFTER
    db.beats = {"host1": 3, "host2": 3, "host3": 1}
    assert live.dead(db) == {"host3"}                      # one host silent: it is dead
    clock[0] += STALE_AFTER + 1                            # then nobody's heartbeat moves (no leader)
    assert live.dead(db) == {"host3"}                      # the last verdict stands


def test_dead_host_takes_its_dips_out_and_empty_pool_withdraws_its_vip():
    health = datapath.Health(probes={("vm1", "web/http-health"): False}, dead_hosts=frozenset({"host2", "host3"}))
    s = {x.rule.key: x for x in datapath.services(fabric(), services(), health)}
    assert set(s["web/http"].table) == {"vm2"}        # vm1's probe is down; host2's and host3's VMs are gone
    assert set(s["web/dns"].table) == {"vm1", "vm2"}  # the http probe does not gate the dns rule
    health = datapath.Health(dead_hosts=frozenset({"host1"}))
    vips = datapath.announceable_vips(datapath.services(fabric(), services(), health), health)
    assert "203.0.113.30/32" not in vips and "203.0.113.10/32" in vips  # bench = [vm1] on dead host1


# ---------------------------------------------------------------- failover analysis

def test_analyse_recovery_and_breakage():
    run = {"conns": [{"dip": "vm1", "broken_at": None, "error": None, "pings": 9},
                     {"dip": "vm2", "broken_at": 12.0, "error": "timeout", "pings": 3}],
           "attempts": [[9.0, True, 0.01, "vm1"], [10.1, False, 1.0, "timeout"], [10.5, False, 1.0, "timeout"],
                        [10.9, True, 0.01, "vm3"], [11.2, True, 0.01, "vm1"]]}
    r = analyse(run, 10.0)
    assert r["broken"] == 1 and r["broken_share"] == 0.5
    assert r["recovery_s"] == pytest.approx(0.9) and r["unserved_after_fault"] == 2
    assert analyse({"conns": [], "attempts": [[10.2, True, 0.01, "vm1"]]}, 10.0)["recovery_s"] == 0.0
    assert analyse({"conns": [], "attempts": [[10.2, False, 1, "x"]]}, 10.0)["recovery_s"] is None
