"""BFD configuration, probe thresholds, host liveness, failover analysis: pure logic."""
import select
import time

import pytest

from hostagent.probes import ProbeState, probe_targets
from mux import datapath
from muxlab.cli.failover import analyse
from muxlab.lb.facts import Probe
from muxlab.node.liveness import Beacon, Listener
from tests.unit.conftest import default_facts, fabric


# ---------------------------------------------------------------- BFD

def test_each_mux_runs_bfdd_towards_the_edge_on_the_lab_timers():
    from muxlab.fabric.render import render_mux_bfdd
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
    t = probe_targets(fabric(), default_facts(), "host2")
    assert set(t) == {("vm3", "web/http-health"), ("vm3", "web/tcp-dns"), ("vm4", "web/http-health"), ("vm4", "web/tcp-dns")}
    assert t[("vm4", "web/http-health")][1] == "10.1.2.14"


# ---------------------------------------------------------------- host liveness


PORT = 47991   # not the lab's LIVENESS_PORT: a test on a machine running a lab must not hear it


def wait_until(what, cond, bound=10.0):
    """A bounded wait on a condition (no timing claim: `bound` only ends a hopeless wait)."""
    deadline = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {bound} s"
        time.sleep(0.02)


def test_a_host_whose_beacons_stop_is_dead_and_alive_again_when_they_resume():
    """Real UDP beacons on loopback addresses (the whole of 127/8 is local on Linux)."""
    hosts = {"host1": "127.0.0.2", "host2": "127.0.0.3", "host3": "127.0.0.4"}
    logged = []
    listener = Listener("127.0.0.1", hosts, dead_after=0.3, log=logged.append, port=PORT).start()
    beacons = {h: Beacon(h, a, ["127.0.0.1"], interval=0.05, port=PORT).start() for h, a in hosts.items() if h != "host3"}
    assert listener.dead() == frozenset()            # host3 never heard: alive for its grace period
    wait_until("host3, never heard, dead", lambda: listener.dead() == {"host3"})
    beacons["host2"].stop()
    # the change wakes the agent's poller: its pipe becomes readable
    wait_until("the listener's pipe readable", lambda: select.select([listener.fileno()], [], [], 0)[0])
    wait_until("host2 dead once its beacons stop", lambda: listener.dead() == {"host2", "host3"})
    assert "host1" not in listener.dead()
    Beacon("host3", hosts["host3"], ["127.0.0.1"], interval=0.05, port=PORT).start()
    wait_until("host3 alive once it beacons", lambda: listener.dead() == {"host2"})
    assert any("dead: host2" in line for line in logged) and any("alive again: host3" in line for line in logged)
    beacons["host1"].stop()


def test_a_beacon_counts_only_from_its_hosts_address_with_its_name():
    hosts = {"host1": "127.0.0.5", "host2": "127.0.0.6"}
    listener = Listener("127.0.0.1", hosts, dead_after=0.3, log=lambda line: None, port=PORT + 1).start()
    # host2's name from host1's address, and an unknown address: neither keeps host2 alive
    Beacon("host2", "127.0.0.5", ["127.0.0.1"], interval=0.05, port=PORT + 1).start()
    Beacon("host2", "127.0.0.7", ["127.0.0.1"], interval=0.05, port=PORT + 1).start()
    wait_until("both hosts dead", lambda: listener.dead() == {"host1", "host2"})


def test_dead_host_takes_its_dips_out_and_empty_pool_withdraws_its_vip():
    health = datapath.Health(probes={("vm1", "web/http-health"): False}, dead_hosts=frozenset({"host2", "host3"}))
    s = {x.rule.key: x for x in datapath.rule_tables(fabric(), default_facts(), health)}
    assert set(s["web/http"].table) == {"vm2"}        # vm1's probe is down; host2's and host3's VMs are gone
    assert set(s["web/dns"].table) == {"vm1", "vm2"}  # the http probe does not gate the dns rule
    health = datapath.Health(dead_hosts=frozenset({"host1"}))
    vips = datapath.announceable_vips(datapath.rule_tables(fabric(), default_facts(), health), health)
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


# ---------------------------------------------------------------- Azure's reason codes

@pytest.mark.parametrize("protocol,history,code", [
    ("http", [True], "Up_Probe_Success"),
    ("http", [False], "Up_Probe_ApproachingUnhealthyThreshold"),          # one failure of two
    ("http", [False, False], "Down_Probe_HttpStatusCodeError"),            # HTTP 503, twice
    ("http", [False, False, True], "Down_Probe_ApproachingHealthyThreshold"),
    ("tcp", [False, False], "Down_Probe_TcpProbeTimeout"),
])
def test_each_reason_code_comes_from_the_situation_it_names(protocol, history, code):
    from hostagent.probes import reason_code
    probe = Probe("lb/p", protocol, 8080, "/health", 1.0, 0.5, unhealthy_threshold=2, healthy_threshold=3)
    st = ProbeState()
    for i, ok in enumerate(history):
        st.step(ok, probe, i, "" if ok else ("HTTP 503" if protocol == "http" else "TimeoutError"))
    assert reason_code(st, probe) == code


@pytest.mark.parametrize("error,code", [("ConnectionRefusedError", "Down_Probe_HttpEndpointUnreachable"),
                                        ("TimeoutError", "Down_Probe_HttpNoResponse"),
                                        ("HTTP 500", "Down_Probe_HttpStatusCodeError")])
def test_an_http_probe_s_failures_keep_apart(error, code):
    from hostagent.probes import reason_code
    probe = Probe("lb/p", "http", 8080, "/health", 1.0, 0.5, unhealthy_threshold=1, healthy_threshold=1)
    st = ProbeState()
    st.step(False, probe, 1, error)
    assert reason_code(st, probe) == code
