"""BFD configuration, probe thresholds, host liveness, failover analysis: pure logic."""
import time

import pytest

from hostagent.probes import ProbeState, probe_targets
from mux import datapath
from muxlab.cli.failover import analyse
from muxlab.model.compiled import Probe
from muxlab.node.desired import STALE_AFTER, Liveness
from tests.unit.conftest import fabric, services


# ---------------------------------------------------------------- BFD

def test_each_mux_runs_bfdd_towards_the_edge_on_the_lab_timers():
    from muxlab.model.render import render_mux_bfdd
    lab = fabric()
    text = render_mux_bfdd(lab, "mux2")
    assert " peer 10.0.1.2 local-address 10.0.1.3" in text
    assert f"  receive-interval {lab.bfd_interval_ms}" in text and f"  detect-multiplier {lab.bfd_multiplier}" in text


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
