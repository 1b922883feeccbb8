"""Health, failover and fault injection: no flow lost when a MUX dies; probes steer new
flows away from dead backends; every MUX always holds the same tables."""
import time

import pytest

from muxlab.cli import faults
from muxlab.cli.lab import vip_nexthops
from muxlab.cli.failover import analyse


def fault(L, node, mode):
    t = time.time()
    faults.fail(L.ref, node, mode)
    return t


@pytest.mark.parametrize("mode", ["kill", "pause", "link-down", "crash-bgp"])
def test_mux_failure_breaks_no_connection(L, mode):
    hold = L.hold(conns=24, duration=10)
    hold.steady()   # a baseline before the fault
    if mode == "crash-bgp":  # the BGP speaker process dies; the supervisor restarts it
        t = fault(L, "mux2", "crash")
    else:
        t = fault(L, "mux2", mode)
    try:
        if mode != "crash-bgp":
            L.wait_for("mux2's next hop to leave the edge",
                       lambda: all("mux2" not in h for h in vip_nexthops(L.ref).values()), timeout=10)
        r = analyse(hold.result(), t)
    finally:
        if mode != "crash-bgp":
            faults.heal(L.ref, "mux2")
    assert r["broken"] == 0, r
    assert r["recovery_s"] is not None, r   # new connections are all served again (how fast: bench/)
    assert len(r["dips_of_new_connections"]) == 6
    L.converged()
    L.assert_mux_tables_identical()


def test_drain_is_graceful(L):
    hold = L.hold(conns=24, duration=6)
    hold.steady()   # a baseline before the fault
    t = time.time()
    faults.drain(L.ref, "mux1", True)
    L.wait_for("mux1 withdrawn", lambda: all(h == ["mux2", "mux3"] for h in vip_nexthops(L.ref).values()))
    r = analyse(hold.result(), t)
    faults.drain(L.ref, "mux1", False)
    assert r["broken"] == 0 and r["unserved_after_fault"] == 0, r
    L.converged()


def test_stopped_vm_service_leaves_rotation_and_returns(L):
    probe = L.facts().probes()["web/http-health"]
    hold = L.hold(conns=24, duration=10)
    hold.steady()   # a baseline before the fault
    fault(L, "vm3", "stop-service")
    try:
        # out of rotation after interval x unhealthy threshold (+ a probe timeout and the
        # time to reach every MUX); the bound is generous: a slow machine is no failure
        L.wait_for("vm3 out of every MUX's tables", lambda: all(
            "vm3" not in t["web/http"] and "vm3" not in t["web/dns"] for t in L.mux_tables().values()),
            timeout=probe.interval * probe.unhealthy_threshold + probe.timeout + 10)
        L.assert_mux_tables_identical()
        res = L.flows("client2", "web", 80, 300)
        assert res["failures"] == 0 and "vm3" not in res["by_dip"] and len(res["by_dip"]) == 5
        run = hold.result()
    finally:
        faults.heal(L.ref, "vm3")
    # the connections to vm3 died with its application; every other one went on
    assert all(c["broken_at"] is None for c in run["conns"] if c["dip"] != "vm3"), run["conns"]
    L.wait_for("vm3 back after the healthy threshold",
               lambda: "vm3" in L.assert_mux_tables_identical()["web/http"],
               timeout=probe.interval * probe.healthy_threshold + 5)
    assert "vm3" in L.flows("client2", "web", 80, 300)["by_dip"]


def test_host_failure_removes_its_dips_from_every_mux(L):
    """host1 vanishes: vm1 and vm2 leave every MUX's tables, and the bench VIP, whose only
    DIP is vm1, is withdrawn by every MUX (the edge then blackholes it)."""
    from muxlab.datapath.conventions import LIVENESS_DEAD_AFTER_S
    fault(L, "host1", "pause")  # its liveness beacons stop
    try:
        L.wait_for("host1's DIPs to leave every MUX", lambda: all(
            "vm1" not in t["web/http"] and "vm2" not in t["web/http"] for t in L.mux_tables().values()),
            timeout=LIVENESS_DEAD_AFTER_S + 5)
        tables = L.assert_mux_tables_identical()
        assert {"vm1", "vm2"}.isdisjoint(tables["web/dns"]) and set(tables["bench/iperf"]) == {None}
        L.wait_for("the bench VIP withdrawn", lambda: vip_nexthops(L.ref)["203.0.113.30"] == [], timeout=10)
        assert vip_nexthops(L.ref)["203.0.113.10"] == ["mux1", "mux2", "mux3"]
        res = L.flows("client1", "web", 80, 300)
        assert res["failures"] == 0 and set(res["by_dip"]) == {"vm3", "vm4", "vm5", "vm6"}
    finally:
        faults.heal(L.ref, "host1")
    L.wait_for("host1's DIPs back", lambda: "vm1" in L.assert_mux_tables_identical()["web/http"], timeout=15)
    L.converged()


def test_killed_vm_heals_back_into_rotation(L):
    """kill takes the VM and its link away; heal restarts it and re-plugs the link, the host
    agent puts the new port back into its vswitch, probes pass, and it serves again."""
    fault(L, "vm4", "kill")
    try:
        L.wait_for("vm4 out of rotation", lambda: "vm4" not in L.assert_mux_tables_identical()["web/http"], timeout=15)
        assert L.flows("client1", "web", 80, 200)["failures"] == 0
    finally:
        faults.heal(L.ref, "vm4")
    L.wait_for("vm4 back in rotation", lambda: "vm4" in L.assert_mux_tables_identical()["web/http"], timeout=30)
    res = L.flows("client1", "web", 80, 300)
    assert res["failures"] == 0 and "vm4" in res["by_dip"]
