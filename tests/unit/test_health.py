"""BFD state machine, probe thresholds, host liveness, failover analysis: pure logic."""
import json
import time

import pytest

from hostagent.probes import ProbeState, probe_targets
from mux import datapath
from mux.bfd import DOWN, INIT, UP, Packet, Session
from muxlab.failover import analyse
from muxlab.model import Probe, load_lab
from muxlab.state import StateSource
from tests.unit.conftest import DEFAULT_MODEL


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

PROBE = Probe("p", "http", 8080, "/health", 1.0, 0.5, unhealthy_threshold=2, healthy_threshold=3)


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
    lab = load_lab(DEFAULT_MODEL)
    t = probe_targets(lab, "host2")
    assert set(t) == {("vm3", "http-health"), ("vm3", "tcp-dns"), ("vm4", "http-health"), ("vm4", "tcp-dns")}
    assert t[("vm4", "http-health")][1] == "10.1.2.14"


# ---------------------------------------------------------------- host liveness

def write_report(store, host, age, vms=None):
    (store / "health").mkdir(parents=True, exist_ok=True)
    (store / "health" / f"{host}.json").write_text(json.dumps({"host": host, "at": time.time() - age, "vms": vms or {}}))


def test_stale_or_missing_host_report_takes_its_dips_out(tmp_path):
    write_report(tmp_path, "host1", 0.2, {"vm1": {"http-health": {"up": False}}})
    write_report(tmp_path, "host2", 10)  # stale: host2 is gone
    snap = StateSource(DEFAULT_MODEL, tmp_path).read()
    assert snap.dead_hosts == {"host2", "host3"}  # host3 never reported
    web = {s.chain: s for s in datapath.services(snap)}["svc_web_http"]
    assert set(web.table) == {"vm2"}  # vm1's probe is down; host2's and host3's VMs are gone
    dns = {s.chain: s for s in datapath.services(snap)}["svc_web_dns"]
    assert set(dns.table) == {"vm1", "vm2"}  # the http probe does not gate the dns rule


def test_no_healthy_dip_withdraws_only_that_vip(tmp_path):
    write_report(tmp_path, "host1", 0.1)
    write_report(tmp_path, "host2", 0.1)
    snap = StateSource(DEFAULT_MODEL, tmp_path).read()
    # host3 gone: direct's pool (vm2, vm4, vm6) still has vm2, vm4; bench (vm1) fine
    assert datapath.announceable_vips(snap, "mux1") == ["203.0.113.10/32", "203.0.113.20/32", "203.0.113.30/32"]
    write_report(tmp_path, "host1", 10)
    snap = StateSource(DEFAULT_MODEL, tmp_path).read()
    assert "203.0.113.30/32" not in datapath.announceable_vips(snap, "mux1")  # bench = [vm1] on dead host1


def test_drain_flag_from_store(tmp_path):
    (tmp_path / "drain").mkdir()
    (tmp_path / "drain" / "mux2").touch()
    snap = StateSource(DEFAULT_MODEL, tmp_path).read()
    assert snap.drained == {"mux2"} and datapath.announceable_vips(snap, "mux2") == []


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


def test_model_only_reader_ignores_heartbeats(tmp_path):
    src = StateSource(DEFAULT_MODEL, tmp_path, watch_reports=False)
    src.read()
    write_report(tmp_path, "host1", 0.0)
    assert not src.changed()  # a host agent does not re-parse the model for every heartbeat
    full = StateSource(DEFAULT_MODEL, tmp_path)
    full.read()
    write_report(tmp_path, "host2", 0.0)
    assert full.changed()
