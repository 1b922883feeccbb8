"""A VM's traffic to a VIP, carried as Ananta carries it: SNAT at the source for a public
frontend (so the public hairpin works, where the internal load balancer's fails), and Fastpath:
once a VM's TCP handshake completes, the two hosts carry the flow between them and the MUX
tier drops out of its path. Every claim is read from the kernel or the wire: nft counters and
maps, captures on the underlay and on the serving VM."""
import json
import subprocess
import sys
import time

import pytest

from muxlab.cli import lab as labmod
from muxlab.datapath.conventions import FASTPATH_PORT, HOST_TABLE, OVERLAY_TABLE, dip_mac
from muxlab.observe import flowcount
from tests.e2e.conftest import REPO
from tests.e2e.test_6_seed_behaviour import ILB_VIP, apply_example, delete

WEB, OUT = "203.0.113.10", "203.0.113.11"      # web's frontend; the web pool's outbound identity
SIZE, RATE = 20_000_000, 5_000_000             # 20 MB in about 4 s: long enough to act during it
CALLER, CALLER_HOST, CALLER_UNDERLAY = "vm3", "host2", "10.0.2.3"
SAME_HOST = "vm3,vm4"                          # backends Fastpath has nothing to bypass for
# connections opened towards a backend's port, less the platform's health probes
CALLS = "tcp dst port 8080 and tcp[tcpflags] & tcp-syn != 0 and not src host 168.63.129.16"


def counter(L, node, family, table, name, ref=None):
    run = (lambda n, c: labmod.docker_exec(ref, n, ["sh", "-c", c]).stdout) if ref else (lambda n, c: L.sh(n, c).stdout)
    return json.loads(run(node, f"nft -j list counter {family} {table} {name}"))["nftables"][1]["counter"]["packets"]


def fastpath_sent(L, ref=None):
    hosts = (ref or L.ref).lab.hosts
    return {h.name: counter(L, h.name, "netdev", OVERLAY_TABLE, "fastpath_packets", ref) for h in hosts}


def count_flows(run, muxes, src, vip, port):
    """Counters of the source's connections to the VIP, both ways, on each MUX, ahead of the lab's tables."""
    for m in muxes:
        run(m, f"nft -f - <<'EOF'\n{flowcount.script(src, vip, port)}EOF")


def mux_packets(run, muxes) -> dict[str, int]:
    return {m: flowcount.packets(run(m, flowcount.LIST)) for m in muxes}


class Fetch:
    """A 20 MB download on CALLER from a backend on another host (muxlab.node.fetch)."""

    def __init__(self, container, vip=WEB, port=80, size=SIZE, rate=RATE):
        self.proc = subprocess.Popen(["docker", "exec", container, "python", "-m", "muxlab.node.fetch", vip, str(port),
                                      str(size), "--rate", str(rate), "--avoid", SAME_HOST],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()
        self.start = json.loads(line)

    def result(self) -> dict:
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def muxes_counted(L):
    run = lambda n, c: L.sh(n, c).stdout   # noqa: E731
    muxes = [m.name for m in L.ref.lab.muxes]
    count_flows(run, muxes, OUT, WEB, 80)
    yield lambda: mux_packets(run, muxes)
    for m in muxes:
        L.sh(m, flowcount.REMOVE, check=False)


# ---------------------------------------------------------------- outbound SNAT towards public frontends


def test_a_vm_reaches_its_own_public_frontend_through_its_outbound_snat(L):
    """The public hairpin works, as in Azure: vm1's calls to web's frontend leave with its
    outbound identity, so the self-mapped share comes back in as any internet client's."""
    share = L.assert_mux_tables_identical()["web/http"].count("vm1")
    res, caps = L.capture("vm1", CALLS, lambda: L.flows("vm1", WEB, 80, 300))
    print(f"vm1 -> its own public VIP: {res['failures']}/{res['flows']} failed; served by {res['by_dip']} (vm1's share {share})")
    assert res["failures"] == 0 and res["by_dip"].get("vm1", 0) > 0
    sources = {p["src"] for p in caps["vm1"]}
    assert sources == {OUT}, sources                 # never its own DIP


def test_a_call_to_the_internal_frontend_keeps_the_callers_dip(L):
    """The internal load balancer does no source NAT: the serving VM sees the caller's DIP
    (which is why its hairpin fails: test_6 measures that, and both fixes)."""
    names = apply_example(L, "ilb-hairpin.yml")
    try:
        res, caps = L.capture(["vm2", "vm5"], CALLS,
                              lambda: L.flows("vm1", ILB_VIP, 80, 60))
        seen = {p["src"] for pk in caps.values() for p in pk}
        assert seen == {"10.1.1.11"}, seen
        assert res["by_dip"].get("vm2", 0) + res["by_dip"].get("vm5", 0) > 0
    finally:
        delete(L, *names)


# ---------------------------------------------------------------- Fastpath


def test_fastpath_takes_the_mux_out_of_a_vms_connection(L, muxes_counted):
    """During a 20 MB download vm3 -> web, after its first packets no MUX sees the flow; the
    underlay carries it host to host, both ways."""
    sent = fastpath_sent(L)
    start = muxes_counted()
    fetch = Fetch(L.ref.container(CALLER))
    served = fetch.start["served_by"]
    server_host = L.ref.lab.vm(served).host
    peer = str(L.ref.lab.host(server_host).address)
    time.sleep(0.5)
    _, caps = L.capture(CALLER_HOST, "udp port 4789", lambda: time.sleep(1.0), iface="eth1")
    mid = muxes_counted()
    got = fetch.result()
    end = muxes_counted()
    first = {m: mid[m] - start[m] for m in mid}
    later = {m: end[m] - mid[m] for m in end}
    print(f"served by {served} on {server_host}; MUX packets of the flow: first {first}, during the transfer {later}")
    assert got == {"got": SIZE, "seconds": got["seconds"], "error": ""}, got
    assert all(n <= 3 for n in later.values()), later
    # host to host on the underlay, the inner packets those of the flow, both directions
    there = [p for p in caps[CALLER_HOST] if p["src"] == CALLER_UNDERLAY and p["dst"] == peer
             and p.get("inner", {}).get("dst") == WEB and p["inner"].get("src") == OUT]
    back = [p for p in caps[CALLER_HOST] if p["src"] == peer and p["dst"] == CALLER_UNDERLAY
            and p.get("inner", {}).get("src") == WEB and p["inner"].get("dst") == OUT]
    assert there and back, (len(there), len(back))
    assert {p["inner_dmac"] for p in there} == {dip_mac(L.ref.lab.vm(served).ip)}
    after = fastpath_sent(L)
    assert after[CALLER_HOST] > sent[CALLER_HOST] and after[server_host] > sent[server_host]


def test_a_fastpath_flow_outlives_every_mux(L):
    """Every MUX frozen mid-transfer: the flow is between the hosts, and does not notice."""
    fetch = Fetch(L.ref.container(CALLER))
    sent = fastpath_sent(L)
    time.sleep(0.8)
    assert fastpath_sent(L)[CALLER_HOST] > sent[CALLER_HOST]
    muxes = [m.name for m in L.ref.lab.muxes]
    try:
        for m in muxes:
            L.fail(m, "pause")
        time.sleep(2.0)
    finally:
        for m in muxes:
            L.heal(m)
    got = fetch.result()
    assert got["got"] == SIZE and not got["error"], got
    L.converged()


def test_a_backend_leaving_its_pool_keeps_its_fastpath_flow_and_gets_no_new_ones(L):
    api = L.api
    original = api.get("/loadBalancers/web")
    fetch = Fetch(L.ref.container(CALLER))
    served = fetch.start["served_by"]
    server_host = L.ref.lab.vm(served).host
    time.sleep(0.8)
    mac = dip_mac(L.ref.lab.vm(served).ip)
    maps = lambda host: L.sh(host, f"nft list table netdev {OVERLAY_TABLE}").stdout   # noqa: E731
    assert mac in maps(CALLER_HOST)                   # the redirect is in
    lb = json.loads(json.dumps(original))
    pool = next(p for p in lb["properties"]["backendAddressPools"] if p["name"] == "web")
    pool["properties"]["loadBalancerBackendAddresses"] = [
        b for b in pool["properties"]["loadBalancerBackendAddresses"] if b["name"] != served]
    try:
        api.put("/loadBalancers/web", lb)
        L.synced(api)
        # both ends' elements gone: the flow is back on the MUX path, still pinned to its backend
        L.wait_for("the redirect withdrawn", lambda: mac not in maps(CALLER_HOST)
                   and f"{WEB} . 80 . {OUT}" not in maps(server_host), timeout=10)
        got = fetch.result()
        assert got["got"] == SIZE and not got["error"], got
        fresh = L.flows("client1", WEB, 80, 60)
        assert fresh["failures"] == 0 and served not in fresh["by_dip"], fresh
    finally:
        api.put("/loadBalancers/web", original)
        L.synced(api)


def test_fastpath_carries_a_call_to_the_internal_frontend(L):
    """Internal frontend: the caller's DIP is the flow's source, the same redirect applies."""
    names = apply_example(L, "ilb-hairpin.yml")
    try:
        sent = fastpath_sent(L)
        fetch = Fetch(L.ref.container(CALLER), vip=ILB_VIP, rate=RATE * 4)
        server_host = L.ref.lab.vm(fetch.start["served_by"]).host
        got = fetch.result()
        after = fastpath_sent(L)
        assert got["got"] == SIZE and not got["error"], got
        assert after[CALLER_HOST] > sent[CALLER_HOST] and after[server_host] > sent[server_host], (sent, after)
    finally:
        delete(L, *names)


def send_redirect(L, mux, redirect: dict, hosts: list[str]):
    """A redirect sent from a MUX's own underlay address, as its agent would."""
    addr = str(next(m.address for m in L.ref.lab.muxes if m.name == mux))
    code = (f"import socket,sys; s=socket.socket(2,2); s.bind(('{addr}',0)); "
            f"[s.sendto(sys.argv[1].encode(), (a, {FASTPATH_PORT})) for a in sys.argv[2:]]")
    L.sh(mux, f"python -c \"{code}\" '{json.dumps(redirect)}' {' '.join(hosts)}")


def test_a_lost_redirect_leaves_the_flow_on_the_mux_path(L, muxes_counted):
    """Redirects to vm3's host dropped on the way: the download completes, every packet on a MUX."""
    L.sh(CALLER_HOST, f"nft add table ip muxlab_test; nft add chain ip muxlab_test in '{{ type filter hook input "
                      f"priority -400; }}'; nft add rule ip muxlab_test in udp dport {FASTPATH_PORT} drop")
    try:
        sent = fastpath_sent(L)
        start = muxes_counted()
        fetch = Fetch(L.ref.container(CALLER), rate=RATE * 4)
        got = fetch.result()
        carried = sum(muxes_counted().values()) - sum(start.values())
    finally:
        L.sh(CALLER_HOST, "nft delete table ip muxlab_test", check=False)
    assert got["got"] == SIZE and not got["error"], got
    assert fastpath_sent(L)[CALLER_HOST] == sent[CALLER_HOST]
    # hundreds of (offload-merged) packets, where a redirected download leaves about 20 on the MUXes
    assert carried > 100, carried


def test_a_duplicate_redirect_changes_nothing_and_one_for_a_backend_outside_the_pool_is_not_installed(L):
    facts = L.facts()
    idle = next(r.idle_s for r in facts.rules if r.key == "web/http")
    fetch = Fetch(L.ref.container(CALLER))
    served = fetch.start["served_by"]
    server_host = L.ref.lab.vm(served).host
    time.sleep(0.5)
    maps = lambda host: L.sh(host, f"nft list table netdev {OVERLAY_TABLE}").stdout   # noqa: E731
    held = [line for line in maps(CALLER_HOST).split("elements = {")[-1].split(",") if f"{WEB} . 80" in line]
    assert held, maps(CALLER_HOST)
    # the same redirect again, from a MUX, for the flow in progress (its SNAT port from the element)
    sport = int(held[0].split(" . ")[1])
    again = {"op": "redirect", "src": OUT, "sport": sport, "vip": WEB, "port": 80, "src_dip": "10.1.2.13",
             "dst_dip": str(L.ref.lab.vm(served).ip), "idle_s": idle}
    hosts = [str(L.ref.lab.host(h).address) for h in (CALLER_HOST, server_host)]
    send_redirect(L, "mux1", again, hosts)
    got = fetch.result()
    assert got["got"] == SIZE and not got["error"], got
    # vm5 is no backend of the bench VIP (its pool is vm1): vm5's host does not install its end
    # (the source's host cannot tell: it sees its own VMs' rows only; a MUX never sends one)
    bench = next(r for r in facts.rules if r.key == "bench/iperf")
    assert "vm5" not in {b.vm for b in bench.backends}
    stray = dict(again, sport=sport + 1, vip=str(bench.vip), port=bench.port, dst_dip=str(L.ref.lab.vm("vm5").ip),
                 idle_s=bench.idle_s)
    send_redirect(L, "mux1", stray, [str(L.ref.lab.host("host3").address)])
    time.sleep(0.5)
    assert f"{bench.vip} . {bench.port} . {OUT} . {sport + 1}" not in maps("host3")
    # the refusal is the host's, not the wire's: a well-formed one for vm5's own rule is taken
    taken = dict(stray, vip=WEB, port=80, idle_s=idle)
    send_redirect(L, "mux1", taken, [str(L.ref.lab.host("host3").address)])
    L.wait_for("host3 to take a redirect for its own backend",
               lambda: f"{WEB} . 80 . {OUT} . {sport + 1}" in maps("host3"), timeout=5)


FORGED = {"op": "redirect", "src": OUT, "sport": 4444, "vip": WEB, "port": 80,
          "src_dip": "10.1.2.13", "dst_dip": "10.1.1.11", "idle_s": 16}


def test_a_forged_redirect_is_dropped_and_counted(L):
    data = json.dumps(FORGED)
    hosts = {h.name: str(h.address) for h in L.ref.lab.hosts}
    before = counter(L, CALLER_HOST, "ip", HOST_TABLE, "forged_redirect")
    edge_before = counter(L, "edge", "ip", "muxlab_edge", "internet_to_private")
    send = "import socket,sys; s=socket.socket(2,2); [s.sendto(sys.argv[1].encode(), (a, {p})) for a in sys.argv[2:]]"
    L.sh(CALLER, f"python -c '{send.format(p=FASTPATH_PORT)}' '{data}' {' '.join(hosts.values())}")
    L.sh("client1", f"python -c '{send.format(p=FASTPATH_PORT)}' '{data}' {' '.join(hosts.values())}")
    L.wait_for("the VM's forgeries counted", lambda: counter(L, CALLER_HOST, "ip", HOST_TABLE, "forged_redirect")
               >= before + len(hosts), timeout=5)
    assert counter(L, "edge", "ip", "muxlab_edge", "internet_to_private") >= edge_before + len(hosts)
    for h in hosts:
        assert "4444" not in L.sh(h, f"nft list table netdev {OVERLAY_TABLE}").stdout, h


# ---------------------------------------------------------------- fastpath: false

OFF_NAME = "muxlab-e2e-nofp"
OFF_FOLDER = REPO / ".labs" / "e2e-nofastpath"


def off(*args, check=True, topology=None):
    p = subprocess.run([sys.executable, "-m", "muxlab", *args, "-t", str(topology), "--name", OFF_NAME],
                       capture_output=True, text=True, timeout=600)
    assert not check or p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def no_fastpath_lab(lab):   # after the main lab is up: one deployment at a time
    topology = labmod.write_variant(OFF_FOLDER, lambda fabric: fabric.__setitem__("fastpath", False))
    off("down", check=False, topology=topology)
    try:
        off("up", "--wait", "240", topology=topology)
        yield labmod.resolve(topology, OFF_NAME)
    finally:
        off("down", check=False, topology=topology)


def test_without_fastpath_every_packet_crosses_a_mux(L, no_fastpath_lab):
    ref = no_fastpath_lab
    run = lambda n, c: labmod.docker_exec(ref, n, ["sh", "-c", c]).stdout   # noqa: E731
    muxes = [m.name for m in ref.lab.muxes]
    count_flows(run, muxes, OUT, WEB, 80)
    sent = fastpath_sent(L, ref)
    fetch = Fetch(ref.container(CALLER), rate=0)
    got = fetch.result()
    carried = sum(mux_packets(run, muxes).values())
    print(f"fastpath off: {carried} packets of the download crossed the MUXes")
    assert got["got"] == SIZE and not got["error"], got
    assert fastpath_sent(L, ref) == sent
    assert "hook egress" not in run(CALLER_HOST, f"nft list table netdev {OVERLAY_TABLE}")
    # 20 MB is 13800 segments of 1448 bytes, which offloads merge into a few hundred packets
    # each way; with Fastpath on the same download costs the MUXes about 20 (the test above)
    assert carried > 300, carried
