"""What the seeds describe going wrong and right, for real: the internal load balancer
hairpin and the second-NIC fix (seeds 000/001), outbound SNAT by port range and inbound NAT
rules (seed 003), idle timeout with and without TCP reset."""
import json
import time
from pathlib import Path

import pytest

from muxlab.cli import faults
from muxlab.cli.failover import analyse
from muxlab.lb.azure import canonical, load_document
from tests.e2e.conftest import E2E_LAB, SECONDS_PER_MINUTE, cli

EXAMPLES = Path(__file__).resolve().parents[2] / "containerlab" / "examples"
ILB_VIP, PEER, PEER_PORT, OUT_VIP = "10.1.0.100", "192.0.2.10", 9000, "203.0.113.11"


def apply_example(L, name):
    lbs = load_document(EXAMPLES / name)
    api = L.api
    for n, lb in lbs.items():
        api.put(f"/loadBalancers/{n}", canonical(lb))
    L.synced(api)
    return list(lbs)


def delete(L, *names):
    api = L.api
    for n in names:
        api.delete(f"/loadBalancers/{n}")
    L.synced(api)


@pytest.fixture
def ilb(L):
    names = apply_example(L, "ilb-hairpin.yml")
    yield
    delete(L, *names)


def test_hairpin_fails_at_the_self_mapped_share_and_the_second_nic_fixes_it(L, ilb):
    table = L.assert_mux_tables_identical()["ilb/app"]
    share = table.count("vm1") / len(table)
    res = L.flows("vm1", ILB_VIP, 80, 300)
    rate = res["failures"] / res["flows"]
    print(f"hairpin before any fix: {res['failures']}/{res['flows']} failed = {rate:.3f}; vm1's Maglev share {share:.3f}")
    assert res["failures"] > 0 and "vm1" not in res["by_dip"]
    assert abs(rate - share) < 0.07, (rate, share)   # binomial noise at n=300 is about 0.02
    # fix 1 (seed 001): the guest's static route sends VIP traffic out of its second NIC
    L.sh("vm1", f"ip route add {ILB_VIP}/32 via 10.1.1.1 dev eth2 onlink src 10.1.1.21")
    try:
        fixed = L.flows("vm1", ILB_VIP, 80, 300)
    finally:
        L.sh("vm1", f"ip route del {ILB_VIP}/32", check=False)
    print(f"hairpin with the second NIC: {fixed['failures']}/{fixed['flows']} failed; served by {fixed['by_dip']}")
    assert fixed["failures"] == 0 and fixed["by_dip"].get("vm1", 0) > 0


def test_hairpin_snat_on_the_host_fixes_it_without_a_second_nic(L, ilb):
    """Fix 2 (hairpinSnat, a muxlab extension): the host source-NATs a flow mapped back to the
    VM that sent it, so the VM sees the host as the caller and answers through it."""
    api = L.api
    lb = api.get("/loadBalancers/ilb")
    lb["properties"]["hairpinSnat"] = True
    api.put("/loadBalancers/ilb", lb)
    L.synced(api)
    fixed = L.flows("vm1", ILB_VIP, 80, 300)
    print(f"hairpin with hairpinSnat: {fixed['failures']}/{fixed['flows']} failed; served by {fixed['by_dip']}")
    assert fixed["failures"] == 0 and fixed["by_dip"].get("vm1", 0) > 0


def snat_of(L, lb="web"):
    return {b["name"]: b for b in L.api.get(f"/loadBalancers/{lb}/outboundSnat")["value"]}


def mux_counter(L, name):
    out = {}
    for m in L.ref.lab.muxes:
        text = L.sh(m.name, f"nft -j list counter ip muxlab_mux {name}").stdout
        out[m.name] = json.loads(text)["nftables"][1]["counter"]["packets"]
    return out


def set_outbound_ports(L, ports):
    api = L.api
    web = api.get("/loadBalancers/web")
    web["properties"]["outboundRules"][0]["properties"]["allocatedOutboundPorts"] = ports
    api.put("/loadBalancers/web", web)
    L.synced(api)


def test_snat_port_exhaustion_is_counted_and_named(L):
    set_outbound_ports(L, 8)
    try:
        hold = L.hold(vip=PEER, port=PEER_PORT, conns=8, duration=3, every=0.25, source="vm3")
        result = hold.result()
        refused = [a for a in result["attempts"] if not a[1]]
        assert all(c["broken_at"] is None for c in result["conns"])
        assert refused and all(a[3] == "ConnectionRefusedError" for a in refused)
        row = L.wait_for("vm3's failures reported",
                         lambda: (lambda b: b if b["failures"] >= len(refused) else None)(snat_of(L)["vm3"]), timeout=10)
        print(f"exhaustion: 8 ports, 8 held, {len(refused)} refused; reported {row}")
        assert row["allocatedPorts"] == 8 and row["failures"] >= len(refused) > 0
        shown = cli("snat", "show", "web", "--name", E2E_LAB).stdout
        assert "vm3" in shown
    finally:
        set_outbound_ports(L, 0)


def test_outbound_snat_uses_the_vip_and_each_vms_own_port_range(L):
    snat = snat_of(L)
    assert set(snat) == {vm.name for vm in L.ref.lab.vms}
    before = mux_counter(L, "snat_return_packets")
    seen = 0
    for vm in sorted(snat):
        # the peer is no VIP: the node's flow generator directly, not `muxlab traffic`
        res = json.loads(L.sh(vm, f"python -m muxlab.node.flows --vip {PEER} --port {PEER_PORT} --flows 180",
                              timeout=120).stdout)
        assert res["failures"] == 0, (vm, res["errors"])
        (lo, hi), = snat[vm]["ranges"]
        for r in res["results"]:
            ip, port = r["dip"].split()
            assert ip == OUT_VIP and lo <= int(port) <= hi, (vm, r, lo, hi)
            seen += 1
    after = mux_counter(L, "snat_return_packets")
    carried = {m: after[m] - before[m] for m in after}
    print(f"outbound: {seen} connections from {len(snat)} VMs, all from {OUT_VIP} within their ranges; "
          f"return packets per MUX {carried}")
    assert seen >= 1000 and sum(1 for v in carried.values() if v > 0) >= 2


def test_a_mux_killed_during_outbound_traffic_breaks_no_connection(L):
    hold = L.hold(vip=PEER, port=PEER_PORT, conns=24, duration=10, source="vm4")
    hold.steady()   # a baseline before the fault
    t = time.time()
    faults.fail(L.ref, "mux2", "kill")
    try:
        r = analyse(hold.result(), t)
    finally:
        faults.heal(L.ref, "mux2")
    assert r["broken"] == 0, r
    L.converged()


def port_mappings(L, rule="ssh"):
    return {m["backendAddress"]["name"]: m["frontendPort"]
            for m in L.api.get(f"/loadBalancers/jump/inboundNatRules/{rule}/portMappings")["value"]}


def test_inbound_nat_rules_single_and_pool_forms_stay_stable(L):
    names = apply_example(L, "nat-rules.yml")
    try:
        ports = port_mappings(L)
        assert ports == {"vm1": 50000, "vm2": 50001, "vm3": 50002, "vm4": 50003}
        assert port_mappings(L, "admin") == {"vm5": 2222}
        for vm, port in [*ports.items(), ("vm5", 2222)]:
            res = L.flows("client1", "203.0.113.50", port, 10)
            assert res["failures"] == 0 and res["by_dip"] == {vm: 10}, (port, res)
        cli("pool", "remove", "jump", "jump", "vm2", "--name", E2E_LAB)
        assert port_mappings(L) == {"vm1": 50000, "vm3": 50002, "vm4": 50003}   # nobody moved
        cli("pool", "add", "jump", "jump", "vm5", "--name", E2E_LAB)
        assert port_mappings(L) == {"vm1": 50000, "vm5": 50001, "vm3": 50002, "vm4": 50003}
        assert L.flows("client1", "203.0.113.50", 50001, 10)["by_dip"] == {"vm5": 10}
        cli("pool", "add", "jump", "jump", "vm6", "--name", E2E_LAB)
        p = cli("pool", "add", "jump", "jump", "vm2", "--name", E2E_LAB, check=False)
        assert p.returncode != 0 and "frontendPortRangeEnd" in p.stdout + p.stderr and "one port per backend" in p.stdout + p.stderr
        assert "vm2" not in port_mappings(L)
        shown = cli("nat", "show", "jump", "ssh", "--name", E2E_LAB).stdout
        assert "50001  vm5" in shown
    finally:
        delete(L, *names)


IDLE_CLIENT = """
import socket, sys, time, json
idle = float(sys.argv[1])
socks = {}
for port in (81, 82):
    s = socket.create_connection(("203.0.113.60", port), timeout=5)
    s.sendall(b"hello\\n"); s.recv(64)
    socks[port] = s
time.sleep(idle)
out = {}
for port, s in socks.items():
    s.settimeout(4)
    try:
        s.sendall(b"hello again\\n")
        out[port] = "answered " + s.recv(64).decode().strip()
    except ConnectionResetError:
        out[port] = "reset"
    except socket.timeout:
        out[port] = "no answer"
print(json.dumps(out))
"""


def test_idle_timeout_with_and_without_tcp_reset(L):
    names = apply_example(L, "idle.yml")
    try:
        idle = 4 * SECONDS_PER_MINUTE + 2
        L.sh("client1", f"cat > /tmp/idle.py <<'EOF'\n{IDLE_CLIENT}\nEOF")
        # before the timeout both answer
        quick = json.loads(L.sh("client1", "python /tmp/idle.py 1").stdout)
        assert quick == {"81": quick["81"], "82": quick["82"]} and all(v.startswith("answered") for v in quick.values())
        late = json.loads(L.sh("client1", f"python /tmp/idle.py {idle}", timeout=60).stdout)
        print(f"after {idle} s idle (timeout 4 lab minutes = {4 * SECONDS_PER_MINUTE} s): {late}")
        assert late == {"81": "reset", "82": "no answer"}
    finally:
        delete(L, *names)
