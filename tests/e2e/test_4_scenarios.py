"""Workshop scenarios from the seeds, reproduced for real."""
import time

from muxlab.datapath.conventions import PLATFORM_ADDRESS
from tests.e2e.test_6_seed_behaviour import ILB_VIP, apply_example, delete


def test_backend_calling_its_own_vip_fails_only_when_mapped_back_to_itself(L):
    """Seeds 000/001: a backend that calls the internal load balancer it sits behind fails
    when the hash maps the flow back to itself: after NAT the packet has its own address as
    source and destination (an ILB does no source NAT), and the VM drops it. Every other
    mapping works; so does the same call to a public frontend, which leaves through the VM's
    outbound SNAT (test_11)."""
    names = apply_example(L, "ilb-hairpin.yml")
    try:
        res, caps = L.capture("vm1", "tcp port 8080", lambda: L.flows("vm1", ILB_VIP, 80, 300))
        assert "vm1" not in res["by_dip"] and set(res["by_dip"]) == {"vm2", "vm3", "vm4", "vm5", "vm6"}
        assert 0.05 < res["failures"] / res["flows"] < 0.35, res  # about 1/6: the flows that hashed to vm1
        mapped_back = [p for p in caps["vm1"] if p["src"] == p["dst"] == "10.1.1.11"]
        assert mapped_back, "the self-mapped SYN should reach vm1 with src == dst"
    finally:
        delete(L, *names)
    # a client outside the pool never has that problem, nor vm1 calling the public frontend
    assert L.flows("client1", "web", 80, 300)["failures"] == 0
    assert L.flows("vm1", "web", 80, 300)["failures"] == 0


def rp_filter_drops(L) -> int:
    """The edge kernel's count of packets its reverse-path filter dropped."""
    out = L.sh("edge", "nstat -az TcpExtIPReversePathFilter").stdout
    return int(out.split("TcpExtIPReversePathFilter")[1].split()[0])


def test_strict_reverse_path_filter_drops_dsr_replies_and_loose_heals(L):
    """Seed 004: DSR needs reverse-path filtering relaxed. A reply leaves the host with the
    VIP as source and reaches the edge on the host's link, while the edge routes the VIP to
    the MUXes: strict filtering drops every reply (counted by the kernel), loose lets them by."""
    assert L.flows("client1", "web", 80, 20)["failures"] == 0
    before = rp_filter_drops(L)
    L.fail("edge", "rp-filter-strict")
    try:
        res = L.flows("client1", "web", 80, 10)
        assert res["failures"] == res["flows"] == 10, res
        assert rp_filter_drops(L) >= before + 10   # at least each connection's SYN-ACK
    finally:
        L.heal("edge")
    assert "2" == L.sh("edge", "cat /proc/sys/net/ipv4/conf/eth4/rp_filter").stdout.strip()
    assert L.flows("client1", "web", 80, 20)["failures"] == 0


def share(L, rule: str, vm: str) -> float:
    """`vm`'s share of the rule's Maglev table (the flows mapped back to it)."""
    table = L.assert_mux_tables_identical()[rule]
    return table.count(vm) / len(table)


def test_seed_000_s_fix_the_frontend_in_the_second_nic_s_subnet(L):
    """Seed 000: a second NIC alone changes nothing (the VM still calls from its first NIC's
    address); moving the internal frontend into the second NIC's subnet does, with no route:
    that subnet is on-link through the second NIC, so its address is the source, and a flow
    mapped back to the VM no longer reads vm -> vm."""
    names = apply_example(L, "ilb-hairpin.yml") + apply_example(L, "ilb-subnet.yml")
    try:
        one_nic = L.flows("vm3", "10.1.102.100", 80, 300)             # vm3 has one NIC
        naive = L.flows("vm4", ILB_VIP, 80, 300)                      # vm4's second NIC, the frontend elsewhere
        fixed, caps = L.capture("vm4", "tcp dst port 8080", lambda: L.flows("vm4", "10.1.102.100", 80, 300))
        for res, vm, rule in ((one_nic, "vm3", "ilb2/app"), (naive, "vm4", "ilb/app")):
            rate, expected = res["failures"] / res["flows"], share(L, rule, vm)
            print(f"{vm} -> {res['vip']}: {rate:.3f} failed, its share of the table {expected:.3f}")
            assert expected / 2 < rate < expected * 2 and vm not in res["by_dip"], res
        assert fixed["failures"] == 0 and "vm4" in fixed["by_dip"], fixed
        # what vm4 received from itself came from its second NIC's address, to its first NIC's
        mine = [p for p in caps["vm4"] if p["dst"] == "10.1.2.14" and p["src"].startswith("10.1.102.")]
        assert mine and {p["src"] for p in mine} == {"10.1.102.24"}, caps["vm4"][:5]
    finally:
        delete(L, *names)


SNAT_VIP = "203.0.113.50"


def test_source_nat_mode_hides_the_client_crosses_the_mux_and_dies_with_it(L):
    """Seed 004's other design, beside DSR: the MUX source-NATs the client to its own address.
    The backend sees a MUX, the reply crosses that MUX, and the MUX's failure breaks the
    connections it held (a DSR MUX holds nothing: test_3)."""
    from muxlab.cli.failover import analyse
    names = apply_example(L, "source-nat.yml")
    muxes = {str(m.address): m.name for m in L.ref.lab.muxes}
    try:
        res, caps = L.capture(["vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "mux1", "mux2", "mux3"], "tcp port 8080 or tcp port 80",
                              lambda: L.flows("client1", SNAT_VIP, 80, 60))
        assert res["failures"] == 0 and len(res["by_dip"]) >= 4, res
        seen_by_vms = {p["src"] for vm in ("vm1", "vm2", "vm3", "vm4", "vm5", "vm6") for p in caps[vm]
                        if p["dport"] == 8080 and p["src"] != PLATFORM_ADDRESS}   # (web's probes come from the host)
        assert seen_by_vms and seen_by_vms <= set(muxes), seen_by_vms    # the client's address is gone
        replies = [p for m in ("mux1", "mux2", "mux3") for p in caps[m] if p["src"] == SNAT_VIP and p["dst"] == "192.0.2.10"]
        assert replies, "the replies should cross a MUX on their way to the client"
        assert sum(int(L.sh(m, "nft list counter ip muxlab_mux source_nat_flows").stdout.split("packets ")[1].split()[0])
                   for m in ("mux1", "mux2", "mux3")) >= 60
        # a MUX dies: the connections it held break; the other MUXes know nothing of them
        hold = L.hold(vip=SNAT_VIP, port=80, conns=24, duration=10)
        hold.steady()
        t = time.time()
        L.fail("mux2", "kill")
        try:
            r = analyse(hold.result(), t)
        finally:
            L.heal("mux2")
        print(f"source NAT: {r['broken']} of 24 held connections broke when mux2 died")
        assert 0 < r["broken"] < 24, r
        L.converged()
    finally:
        delete(L, *names)


def x_client(L, source, address, port, prefix=b"") -> str:
    """What the VM answering `address:port` believes is its client (its X-Client header)."""
    code = (f"import socket; s=socket.create_connection(({address!r},{port}),timeout=5); "
            f"s.sendall({prefix!r}+b'GET / HTTP/1.0\\r\\n\\r\\n'); d=b''\n"
            "while True:\n c=s.recv(4096)\n if not c: break\n d+=c\n"
            "print([l for l in d.decode().split(chr(13)+chr(10)) if l.startswith('X-Client:')][0].split()[1])")
    return L.sh(source, f"python -c \"{code}\"").stdout.strip()


def test_a_proxy_v2_header_gives_the_vm_its_client_back_and_is_trusted_only_from_a_mux(L):
    """Seed 004's discussion: a proxy that hides the client must tell it (X-Forwarded-For at
    layer 7; the PROXY protocol at layer 4), and the server may believe that only from the
    proxy. The MUX's HAProxy sends a PROXY v2 header; a header from anything else is ignored
    by the VM and counted."""
    from tests.unit.test_proxy import header
    names = apply_example(L, "source-nat.yml")
    try:
        L.wait_for("HAProxy listening on every MUX", lambda: all(
            "40000" in L.sh(m.name, "ss -ltn", check=False).stdout for m in L.ref.lab.muxes), timeout=30)
        res = L.flows("client1", SNAT_VIP, 8000, 60)
        assert res["failures"] == 0 and len(res["by_dip"]) >= 4, res
        assert x_client(L, "client1", SNAT_VIP, 8000).startswith("192.0.2.10:")   # the client, from the header
        assert x_client(L, "client1", SNAT_VIP, 80).split(":")[0] in {str(m.address) for m in L.ref.lab.muxes}
        # a client writes its own header through a DSR rule: the VM ignores it and counts it
        before = {vm.name: untrusted(L, vm.name) for vm in L.ref.lab.vms}
        forged = header(src="198.51.100.99", sport=1)
        for _ in range(6):
            assert x_client(L, "client1", "203.0.113.10", 80, forged).startswith("192.0.2.10:")
        assert sum(untrusted(L, vm.name) - before[vm.name] for vm in L.ref.lab.vms) == 6
    finally:
        delete(L, *names)


def untrusted(L, vm) -> int:
    out = L.sh(vm, "cat /run/muxlab/proxy-untrusted 2>/dev/null || echo 0").stdout.strip()
    return int(out or 0)
