"""The data path: Maglev on every MUX, VXLAN to hosts, NAT or floating IP, Direct Server Return."""
import ipaddress
import json
import subprocess
import time

import pytest

from muxlab.cli.capture import CHATTER

CLIENTS = ("client1", "client2")
VIPS = {"web": "203.0.113.10", "direct": "203.0.113.20", "bench": "203.0.113.30"}
DOC_CLIENTS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")]


def is_client(addr):
    return any(ipaddress.ip_address(addr) in n for n in DOC_CLIENTS)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("vip,proto,port", [("web", "tcp", 80), ("web", "udp", 53), ("direct", "tcp", 7000),
                                            ("direct", "udp", 7000), ("bench", "tcp", 5201), ("bench", "udp", 5201)])
def test_every_rule_answers_from_both_clients(L, client, vip, proto, port):
    if port == 5201:   # iperf3 owns the port, not the VM application: a short transfer, then the kernel's word
        bench_rule_reaches_vm1(L, client, proto)
        return
    res = L.flows(client, vip, port, 20, udp=(proto == "udp"))
    assert res["failures"] == 0, res["errors"]
    pool = {"web": {"vm1", "vm2", "vm3", "vm4", "vm5", "vm6"}, "direct": {"vm2", "vm4", "vm6"}}[vip]
    assert set(res["by_dip"]) <= pool


def bench_rule_reaches_vm1(L, client, proto):
    """The bench VIP's rules promise vm1, its only backend: iperf3 moves data through them,
    and vm1's host holds the flow NATed to vm1's DIP (conntrack: the reply comes from it)."""
    vip, dip = VIPS["bench"], str(L.ref.lab.vm("vm1").ip)
    out = json.loads(L.sh(client, f"iperf3 -c {vip} -t 1 -J" + (" -u -b 10M" if proto == "udp" else ""), timeout=60).stdout)
    end = out["end"]
    if proto == "udp":
        assert end["sum"]["packets"] > 0 and end["sum"]["lost_percent"] < 50, end["sum"]
    else:
        assert end["sum_received"]["bytes"] > 0, end["sum_received"]
    flows = L.sh("host1", f"conntrack -L -p {proto} --orig-dst {vip} --dport 5201 2>/dev/null", check=False).stdout
    assert f"src={dip} " in flows, flows   # the reply direction's source: the DIP the host NATed to


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_thousand_flows_spread_over_every_dip(L, proto):
    res = L.flows("client1", "web", 80 if proto == "tcp" else 53, 1200, udp=(proto == "udp"))
    assert res["failures"] == 0, res["errors"]
    assert set(res["by_dip"]) == {"vm1", "vm2", "vm3", "vm4", "vm5", "vm6"}
    fair = res["served"] / 6
    assert max(res["by_dip"].values()) <= 2 * fair, res["by_dip"]


def test_no_reply_crosses_a_mux_and_underlay_carries_vni(L):
    def traffic():
        return [L.flows("client1", "web", 80, 150), L.flows("client2", "web", 53, 150, udp=True)]

    results, caps = L.capture(["mux1", "mux2", "mux3", "host1", "host2", "host3"], f"{CHATTER} and not icmp6", traffic)
    assert all(r["failures"] == 0 for r in results)
    muxes = {m: caps[m] for m in ("mux1", "mux2", "mux3")}
    assert all(len(p) > 20 for p in muxes.values()), {m: len(p) for m, p in muxes.items()}  # ECMP used all three
    for mux, pkts in muxes.items():
        for p in pkts:
            flow = p.get("inner", p)  # VXLAN leaving the MUX carries the client's packet
            assert is_client(flow["src"]) and flow["dst"] == "203.0.113.10", (mux, p)
            if "vni" in p:
                assert p["vni"] == 4242 and p["dst"].startswith("10.0.2.")
    # the underlay on the hosts: VXLAN with our VNI, inner MAC naming a local DIP
    local_macs = {"host1": {"02:00:0a:01:01:0b", "02:00:0a:01:01:0c"}, "host2": {"02:00:0a:01:02:0d", "02:00:0a:01:02:0e"},
                  "host3": {"02:00:0a:01:03:0f", "02:00:0a:01:03:10"}}
    for host in ("host1", "host2", "host3"):
        vx = [p for p in caps[host] if "vni" in p]
        assert vx, f"no VXLAN seen on {host}"
        assert {p["vni"] for p in vx} == {4242}
        assert {p["inner_dmac"] for p in vx} <= local_macs[host]
        assert {p["src"] for p in vx} <= {"10.0.1.1", "10.0.1.3", "10.0.1.5"}
        # replies leave the host from the VIP, straight to the client (DSR)
        replies = [p for p in caps[host] if p["src"] == "203.0.113.10"]
        assert replies and all(is_client(p["dst"]) for p in replies)


def test_replies_come_from_the_vip(L):
    res, caps = L.capture("client1", "tcp port 80 or udp port 53", lambda: [L.flows("client1", "web", 80, 30),
                                                                           L.flows("client1", "web", 53, 30, udp=True)])
    inbound = [p for p in caps["client1"] if p["dst"] == "192.0.2.10"]
    assert inbound and {p["src"] for p in inbound} == {"203.0.113.10"}


def pin(L, sport, mux_addr, proto="tcp"):
    """On the edge, steer one client 5-tuple to one MUX (policy routing beats ECMP)."""
    L.sh("edge", f"ip rule del pref 10 2>/dev/null; ip rule add pref 10 from 192.0.2.10 ipproto {6 if proto == 'tcp' else 17} sport {sport} lookup 4100 && "
                 f"ip route replace 203.0.113.10/32 via {mux_addr} table 4100")


def vip_packets(L, mux):
    out = L.sh(mux, "nft -j list counter ip muxlab_mux vip_packets").stdout
    return json.loads(out)["nftables"][1]["counter"]["packets"]


@pytest.mark.parametrize("proto,port", [("tcp", 80), ("udp", 53)])
def test_same_five_tuple_same_dip_through_every_mux(L, proto, port):
    served = {}
    try:
        for mux, addr in (("mux1", "10.0.1.1"), ("mux2", "10.0.1.3"), ("mux3", "10.0.1.5")):
            pin(L, 41000, addr, proto)
            before = vip_packets(L, mux)
            res = L.flows("client1", "web", port, 1, udp=(proto == "udp"), sport=41000)
            assert res["failures"] == 0, res["errors"]
            assert vip_packets(L, mux) > before, f"flow did not cross {mux}"
            served[mux] = next(iter(res["by_dip"]))
    finally:
        L.sh("edge", "ip rule del pref 10; ip route flush table 4100", check=False)
    assert len(set(served.values())) == 1, served


def test_floating_ip_delivers_the_vip_untouched(L):
    res, caps = L.capture(["vm2", "vm4", "vm6"], "tcp port 7000", lambda: L.flows("client2", "direct", 7000, 60))
    assert res["failures"] == 0
    for vm, pkts in caps.items():
        to_vm = [p for p in pkts if p.get("dport") == 7000]
        assert to_vm, f"{vm} got no flows"
        assert {p["dst"] for p in to_vm} == {"203.0.113.20"}  # no NAT: the VM sees the VIP
        assert {p["src"] for p in pkts if p.get("sport") == 7000} == {"203.0.113.20"}


def test_nat_rule_rewrites_vip_to_dip(L):
    res, caps = L.capture("vm1", "tcp port 8080", lambda: L.flows("client1", "web", 80, 60))
    to_vm = [p for p in caps["vm1"] if p.get("dport") == 8080]
    assert to_vm and {p["dst"] for p in to_vm} == {"10.1.1.11"}


def test_spoofed_vxlan_never_reaches_a_vm(L):
    def spoofed_count():
        out = L.sh("host1", "nft -j list counter ip muxlab_host spoofed_vxlan").stdout
        return json.loads(out)["nftables"][1]["counter"]["packets"]

    before = spoofed_count()
    scapy = ("from scapy.all import *; from scapy.layers.vxlan import VXLAN; "
             "inner=Ether(dst='02:00:0a:01:01:0b')/IP(src='192.0.2.10',dst='203.0.113.10')/TCP(sport=55555,dport=80,flags='S'); "
             "send(IP(src='10.1.2.13',dst='10.0.2.1')/UDP(sport=12345,dport=4789)/VXLAN(vni=4242,flags=8)/inner, count=5, verbose=0)")
    # from inside the VNet (vm3): from the internet the edge drops it first (test_10_boundary)
    _, caps = L.capture("vm1", "tcp port 55555 or tcp port 8080", lambda: L.sh("vm3", f'python -c "{scapy}"'))
    assert not [p for p in caps["vm1"] if p.get("sport") == 55555]
    assert spoofed_count() >= before + 5


def test_full_size_tcp_transfer_both_ways(L):
    n = 4_000_000
    code = ("import socket; s=socket.create_connection(('203.0.113.10',80),5); s.settimeout(20); "
            f"s.sendall(b'SINK {n}\\n'+b'x'*{n}); print(s.recv(200).decode().strip()); s.close(); "
            f"s=socket.create_connection(('203.0.113.10',80),5); s.settimeout(20); s.sendall(b'SEND {n}\\n'); got=0\n"
            "while True:\n  d=s.recv(1<<20)\n  if not d: break\n  got+=len(d)\n"
            f"  if got>={n}: break\nprint(got)")
    out, caps = L.capture(["host1", "host2", "host3"], "udp port 4789", lambda: L.sh("client1", f"python -c \"{code}\"", timeout=60))
    vm, got, received, sent = out.stdout.split()
    assert got == "got" and int(received) == n and int(sent) == n, out.stdout
    vx = [p for pkts in caps.values() for p in pkts if "inner" in p]
    # full-size inner packets crossed the underlay whole: never fragmented, VXLAN adding its
    # 50 bytes to each. (With offloads on, a capture shows segments still merged: >= 1500.)
    assert max(p["inner"]["len"] for p in vx) >= 1500
    assert all(p["len"] == p["inner"]["len"] + 50 and not p["fragment"] for p in vx)


def test_a_burst_of_small_datagrams_arrives_datagram_for_datagram(L):
    """Lab links forward UDP with GRO (docs/performance.md): a burst from one socket may cross
    the edge, a MUX and VXLAN as fewer, merged packets. The VM's socket must still get every
    datagram as sent: each is answered, by one VM (one 5-tuple)."""
    n = 150   # within a VM socket's default receive buffer, so the burst cannot overflow it
    code = ("import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.connect(('203.0.113.10',53)); "
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1<<20)\n"
            f"for i in range({n}): s.send(b'burst %04d' % i)\n"
            "s.settimeout(3); names=[]\n"
            "try:\n  while True: names.append(s.recv(256).decode().strip())\n"
            "except socket.timeout: pass\n"
            "print(len(names), ' '.join(sorted(set(names))))")
    before = sum(vip_packets(L, m) for m in ("mux1", "mux2", "mux3"))
    answered, *vms = L.sh("client1", f"python -c \"{code}\"", timeout=30).stdout.split()
    crossed = sum(vip_packets(L, m) for m in ("mux1", "mux2", "mux3")) - before
    assert int(answered) == n and len(vms) == 1, (answered, vms)
    # merged or not, the MUXes saw the burst (as at most n packets)
    assert 0 < crossed <= n + 20, crossed


@pytest.mark.parametrize("node,agent", [("host2", "hostagent.agent"), ("mux1", "mux.agent")])
def test_agent_restart_rebuilds_state_idempotently_and_keeps_flows(L, node, agent):
    def kernel_state():
        # nft's lines sorted: a table loaded whole lists its chains in another order than one
        # grown by updates; anything missing or twice still shows
        return L.sh(node, "ip rule; ip route show table all | grep -v '^local\\|^broadcast\\|^multicast\\|fe80\\|ff00'; "
                          "bridge fdb show | grep -c permanent; nft list ruleset | grep -v 'packets [0-9]' | sort").stdout

    # a settled lab: the previous case's restarted host may still be coming back into the
    # MUXes' tables (a host silent for 3 s leaves them)
    settled = []
    L.wait_for("the kernel state to settle", lambda: settled.append(kernel_state()) or
               (len(settled) > 1 and settled[-1] == settled[-2]) or time.sleep(1), timeout=30)
    before = settled[-1]
    hold = L.hold(conns=24, duration=6)
    from muxlab.cli.lab import docker_exec
    since = f"{time.time():.3f}"
    docker_exec(L.ref, node, ["pkill", "-9", "-f", agent])  # its supervisor starts a fresh agent, which re-applies all

    def reapplied():   # the new agent's own word that it loaded its tables whole (it knows nothing of the old one's)
        logs = subprocess.run(["docker", "logs", "--since", since, L.ref.container(node)],
                              capture_output=True, text=True, timeout=30)
        return "data path programmed" in logs.stdout + logs.stderr and "whole table loaded" in logs.stdout + logs.stderr
    L.wait_for(f"a new {agent} that programmed the data path", reapplied, timeout=30)
    run = hold.result()
    assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]
    # the new agent re-applied everything: the same state again, nothing duplicated, nothing lost
    after = []
    try:
        L.wait_for("the same kernel state as before", lambda: after.append(kernel_state()) or after[-1] == before, timeout=20)
    except AssertionError:
        assert after[-1] == before


def test_vxlan_forging_a_mux_source_is_stopped_at_the_edge(L):
    """A client that forges a MUX's address would pass the host's check; the edge's ingress
    filter (no lab-internal source from the internet) stops it first (seed 004)."""
    def counter(node, table, name):
        return json.loads(L.sh(node, f"nft -j list counter ip {table} {name}").stdout)["nftables"][1]["counter"]["packets"]

    edge_before = counter("edge", "muxlab_edge", "spoofed_from_internet")
    scapy = ("from scapy.all import *; from scapy.layers.vxlan import VXLAN; "
             "inner=Ether(dst='02:00:0a:01:01:0b')/IP(src='192.0.2.10',dst='203.0.113.10')/TCP(sport=55556,dport=80,flags='S'); "
             "send(IP(src='10.0.1.1',dst='10.0.2.1')/UDP(sport=12345,dport=4789)/VXLAN(vni=4242,flags=8)/inner, count=5, verbose=0)")
    _, caps = L.capture("vm1", "tcp port 55556 or tcp port 8080", lambda: L.sh("client1", f'python -c "{scapy}"'))
    assert not [p for p in caps["vm1"] if p.get("sport") == 55556]
    assert counter("edge", "muxlab_edge", "spoofed_from_internet") >= edge_before + 5
