"""The virtual network's boundary, as packets meet it in a real kernel: the edge keeps the
internet from private addresses (and lets a benchmark's allowance through), a MUX refuses an
internal frontend to sources outside the VNet, a host keeps its VMs off the management
network, health probes leave from 168.63.129.16, and IMDS answers a VM on its host's bridge.
Each test builds throwaway network namespaces joined by veth pairs, loads the rendered
ruleset, sends UDP datagrams and reads the nft counters."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from hostagent import datapath as host_dp
from mux import datapath as mux_dp
from muxlab.datapath.conventions import EDGE_TABLE, HOST_TABLE, IMDS_ADDRESS, MUX_TABLE, PLATFORM_ADDRESS
from muxlab.fabric.render import render_edge_nft
from muxlab.lb.azure import load_document
from tests.unit.conftest import REPO, default_facts, default_lbs, fabric


def _netns_ok() -> bool:
    if not shutil.which("nft") or not shutil.which("ip") or os.geteuid() != 0:
        return False
    name = f"mxut{os.getpid()}probe"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


pytestmark = pytest.mark.skipif(not _netns_ok(), reason="needs root, nft and ip netns")
PY = sys.executable


class Lab:
    """Named network namespaces for one test, removed after it."""

    def __init__(self):
        self.prefix = f"mxut{os.getpid()}"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        subprocess.run(["ip", "netns", "del", full], capture_output=True)
        subprocess.run(["ip", "netns", "add", full], check=True)
        self.names.append(full)
        self.sh(full, "ip link set lo up")
        return full

    def sh(self, ns: str, cmd: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True,
                              input=input, timeout=30, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"{ns}: {cmd}: {proc.stderr}")
        return proc.stdout

    def veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        subprocess.run(["ip", "link", "add", "name", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b],
                       check=True)
        self.sh(a, f"ip link set {a_if} up")
        self.sh(b, f"ip link set {b_if} up")

    def python(self, ns: str, code: str, *args: str) -> str:
        return self.sh(ns, " ".join([PY, "-c", _quote(code), *map(_quote, args)]))

    def background(self, ns: str, code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", code, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.procs.append(proc)
        return proc

    def nft(self, ns: str, ruleset: str) -> None:
        self.sh(ns, "nft -f /dev/stdin", input=ruleset)

    def counter(self, ns: str, table: str, name: str) -> int:
        out = json.loads(self.sh(ns, f"nft -j list counter ip {table} {name}"))
        return next(x["counter"]["packets"] for x in out["nftables"] if "counter" in x)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for n in self.names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"




SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 3:
    s.bind((sys.argv[3], 0))
s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
"""

# a named counter of UDP datagrams to port 9999, in the receiving namespace
GOT = """table ip got {
  counter got {}
  chain pre { type filter hook prerouting priority -400; policy accept; udp dport 9999 counter name got; }
}
"""


def send(L: Lab, ns: str, dst: str, src: str | None = None, port: int = 9999) -> None:
    L.python(ns, SEND, dst, str(port), *([src] if src else []))


def settle(read, want: int, timeout: float = 3.0) -> int:
    """A counter's value once it reaches `want` (the first datagram waits for ARP), or its last."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# ---------------------------------------------------------------- the edge


def test_edge_drops_the_internet_to_private_addresses_and_lets_the_bench_allowance_through(lab):
    L = lab
    edge, client, inside = L.ns("edge"), L.ns("client"), L.ns("inside")
    L.veth(edge, "eth7", client, "c0")      # client1's port: an internet port
    L.veth(edge, "eth4", inside, "f0")      # host1's port
    L.sh(edge, "sysctl -qw net.ipv4.ip_forward=1 && ip addr add 192.0.2.1/24 dev eth7 && ip addr add 10.0.2.0/31 dev eth4"
               " && ip route add 10.1.0.0/16 via 10.0.2.1 && ip route add 203.0.113.0/24 via 10.0.2.1")
    L.sh(client, "ip addr add 192.0.2.10/24 dev c0 && ip route add default via 192.0.2.1")
    L.sh(inside, "ip addr add 10.0.2.1/31 dev f0 && ip addr add 10.1.1.11/32 dev lo && ip addr add 10.1.0.100/32 dev lo"
                 " && ip addr add 203.0.113.10/32 dev lo && ip route add default via 10.0.2.0")
    L.nft(edge, render_edge_nft(fabric()))
    L.nft(inside, GOT)

    def dropped():
        return L.counter(edge, EDGE_TABLE, "internet_to_private")

    def arrived():
        return L.counter(inside, "got", "got")

    send(L, client, "203.0.113.10")                     # a public VIP: through
    assert settle(arrived, 1) == 1 and dropped() == 0
    for n, private in enumerate(["10.1.1.11", "10.1.0.100", "10.0.2.1", "10.0.2.0"], start=1):
        send(L, client, private)                         # DIP, internal frontend, host underlay, the edge's own
        assert settle(dropped, n) == n, private
    assert arrived() == 1
    # bench/datapath_bench.py's direct path: the DIP in the allowance set, for the run only
    L.sh(edge, "nft add element ip muxlab_edge bench_direct { 10.1.1.11 }")
    send(L, client, "10.1.1.11")
    assert settle(arrived, 2) == 2 and dropped() == 4
    send(L, client, "10.1.0.100")                        # only what the set holds
    assert settle(dropped, 5) == 5
    L.sh(edge, "nft delete element ip muxlab_edge bench_direct { 10.1.1.11 }")
    send(L, client, "10.1.1.11")
    assert settle(dropped, 6) == 6 and arrived() == 2
    assert L.counter(edge, EDGE_TABLE, "spoofed_from_internet") == 0


def test_edge_ruleset_checks_and_keeps_the_anti_spoofing_filter():
    text = render_edge_nft(fabric())
    assert "set bench_direct { type ipv4_addr; }" in text
    forward = text.split("chain forward {")[1].split("}")[0].splitlines()
    rules = [r.strip() for r in forward if r.strip().startswith("iifname")]
    assert rules == ["iifname @internet_ports ip saddr @internal counter name spoofed_from_internet drop",
                     "iifname @internet_ports ip saddr @vips counter name spoofed_from_internet drop",
                     "iifname @internet_ports ip daddr @bench_direct accept",
                     "iifname @internet_ports ip daddr != @vips counter name internet_to_private drop"]
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "/dev/stdin"], input=text, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the MUX


def ilb_facts():
    lbs = {**default_lbs(), **load_document(REPO / "containerlab" / "examples" / "ilb-hairpin.yml")}
    return default_facts(lbs)


def test_mux_refuses_an_internal_frontend_to_sources_outside_the_vnet(lab):
    L = lab
    mux, edge = L.ns("mux"), L.ns("edge")
    L.veth(mux, "eth1", edge, "e0")
    L.sh(mux, "ip addr add 10.0.1.1/31 dev eth1 && ip link add vxlan4242 type vxlan id 4242 dstport 4789")
    # the edge side holds an internet client's address and a VM's (a VM's packet to an ILB
    # reaches the MUX from the edge with its DIP as source)
    L.sh(edge, "ip addr add 10.0.1.0/31 dev e0 && ip addr add 192.0.2.10/32 dev lo && ip addr add 10.1.2.13/32 dev lo"
               " && ip route add 10.1.0.100/32 via 10.0.1.1 && ip route add 203.0.113.10/32 via 10.0.1.1")
    facts = ilb_facts()
    assert any(str(r.vip) == "10.1.0.100" for r in facts.rules)
    L.nft(mux, mux_dp.ruleset(fabric(), facts, mux_dp.rule_tables(fabric(), facts, mux_dp.Health())).render())

    def refused():
        return L.counter(mux, MUX_TABLE, "ilb_not_vnet")

    def vip_packets():
        return L.counter(mux, MUX_TABLE, "vip_packets")

    send(L, edge, "10.1.0.100", src="192.0.2.10", port=80)     # the internet to the ILB: refused
    assert settle(refused, 1) == 1 and vip_packets() == 1
    send(L, edge, "10.1.0.100", src="10.1.2.13", port=80)      # a VM to the ILB: served
    assert settle(vip_packets, 2) == 2 and refused() == 1
    send(L, edge, "203.0.113.10", src="192.0.2.10", port=80)   # the internet to a public VIP: served
    assert settle(vip_packets, 3) == 3 and refused() == 1
    # refused before any lookup: no_service/no_backend did not count the refused datagram
    text = L.sh(mux, f"nft list chain ip {MUX_TABLE} prerouting")
    assert text.index("ilb_not_vnet") < text.index("vmap @services") and text.index("ilb_not_vnet") < text.index("ct mark")


# ---------------------------------------------------------------- the host: management, probes, IMDS


def host_with_vm(L: Lab):
    """host1 with its bridge (gateway and platform addresses), a management interface eth0 to
    a management peer, and vm1 behind the bridge as the lab wires it (a /32, on-link gateway)."""
    host, vm, mgmt = L.ns("host"), L.ns("vm"), L.ns("mgmt")
    L.veth(host, "eth2", vm, "eth1")
    L.veth(host, "eth0", mgmt, "m0")
    L.sh(host, "sysctl -qw net.ipv4.ip_forward=1 && ip link add br0 type bridge && ip link set eth2 master br0"
               " && ip link set br0 up && ip addr add 10.1.1.1/24 dev br0"
               f" && ip addr add {IMDS_ADDRESS}/32 dev br0 scope link && ip addr add {PLATFORM_ADDRESS}/32 dev br0 scope link"
               " && ip addr add 172.30.9.5/24 dev eth0 && ip link add vxlan4242 type vxlan id 4242 dstport 4789")
    L.sh(vm, "ip addr add 10.1.1.11/32 dev eth1 && ip route add default via 10.1.1.1 dev eth1 onlink")
    L.sh(mgmt, "ip addr add 172.30.9.1/24 dev m0 && ip addr add 172.30.9.201/32 dev lo")
    L.nft(host, host_dp.render_nft(fabric(), default_facts(), "host1", management=("172.30.9.5/24",)))
    return host, vm, mgmt


def test_host_keeps_vms_off_the_management_network(lab):
    L = lab
    host, vm, mgmt = host_with_vm(L)
    L.sh(mgmt, "ip route add 10.1.1.0/24 via 172.30.9.5")
    L.nft(mgmt, GOT)

    def dropped():
        return L.counter(host, HOST_TABLE, "to_management")

    send(L, vm, "172.30.9.5")       # the host's management address
    assert settle(dropped, 1) == 1
    send(L, vm, "172.30.9.1")       # forwarded out eth0 towards the management network
    assert settle(dropped, 2) == 2
    L.sh(host, "ip route add 172.30.99.0/24 via 172.30.9.1")
    send(L, vm, "172.30.99.7")      # out eth0 by any route
    assert settle(dropped, 3) == 3
    assert L.counter(mgmt, "got", "got") == 0
    # the platform addresses and the gateway are not management
    for addr in (IMDS_ADDRESS, PLATFORM_ADDRESS, "10.1.1.1"):
        send(L, vm, addr)
    time.sleep(0.3)
    assert dropped() == 3
    # the host itself still reaches the management network (its agents' control traffic)
    send(L, host, "172.30.9.1")
    assert settle(lambda: L.counter(mgmt, "got", "got"), 1) == 1


ACCEPT_ONE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(10)
c, peer = s.accept()
print(peer[0], flush=True)
data = c.recv(1024)
if data.startswith(b"GET"):
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
c.close()
"""

PROBE = """
import sys
from hostagent.probes import check
from muxlab.lb.facts import Probe
proto, port = sys.argv[1], int(sys.argv[2])
print(check(Probe("t/p", proto, port, "/health", 1.0, 2.0, 2, 2), "10.1.1.11"))
"""


@pytest.mark.parametrize("proto", ["tcp", "http"])
def test_health_probes_come_from_the_platform_address(lab, proto):
    L = lab
    host, vm, _ = host_with_vm(L)
    server = L.background(vm, ACCEPT_ONE, "8080")
    time.sleep(0.3)
    assert L.python(host, PROBE, proto, "8080").strip() == "(True, '', False)"
    out, _ = server.communicate(timeout=10)
    assert out.strip() == PLATFORM_ADDRESS


def test_check_without_the_platform_address_fails_and_says_why(lab):
    L = lab
    ns = L.ns("bare")
    L.background(ns, ACCEPT_ONE, "8080")
    time.sleep(0.3)
    code = ("from hostagent.probes import check; from muxlab.lb.facts import Probe; "
            "p = Probe('t/p', 'tcp', 8080, '/', 1.0, 1.0, 2, 2); "
            "print(check(p, '127.0.0.1')[0], check(p, '127.0.0.1', source=None)[0])")
    assert L.python(ns, code).split() == ["False", "True"]


IMDS_SERVER = """
import time
from hostagent import imds
from tests.unit.conftest import default_facts, fabric
meta = imds.Metadata(fabric(), "host1")
meta.update(default_facts())
imds.serve(meta)
print("ready", flush=True)
time.sleep(60)
"""

IMDS_CLIENT = """
import http.client, json, sys
from muxlab.lb.metadata import guest_config
from muxlab.node.vmservice import fetch_loadbalancer
out = {}
for name, headers in (("bare", {}), ("proxied", {"Metadata": "true", "X-Forwarded-For": "10.9.9.9"}),
                      ("ok", {"Metadata": "true"})):
    c = http.client.HTTPConnection("169.254.169.254", 80, timeout=3, source_address=(sys.argv[1], 0))
    c.request("GET", "/metadata/instance?api-version=2021-02-01", headers=headers)
    r = c.getresponse()
    out[name] = [r.status, json.loads(r.read())]
tcp, udp, fips = guest_config(fetch_loadbalancer()[0])
out["guest"] = [sorted(tcp), sorted(udp), fips]
print(json.dumps(out))
"""


def test_imds_answers_a_vm_on_its_hosts_bridge(lab):
    from muxlab.lb.facts import guest_config
    L = lab
    host, vm, _ = host_with_vm(L)
    L.sh(vm, "ip addr add 10.1.1.21/32 dev eth1")   # vm1's second address (its second NIC's, in the lab)
    server = L.background(host, IMDS_SERVER)
    assert server.stdout.readline().strip() == "ready"
    for source in ("10.1.1.11", "10.1.1.21"):
        out = json.loads(L.python(vm, IMDS_CLIENT, source))
        assert out["bare"][0] == 400 and out["proxied"][0] == 400
        status, doc = out["ok"]
        assert status == 200 and doc["compute"]["name"] == "vm1"
        addrs = [a["privateIpAddress"] for i in doc["network"]["interface"] for a in i["ipv4"]["ipAddress"]]
        assert addrs == ["10.1.1.11", "10.1.1.21"]
        tcp, udp, fips = guest_config(default_facts(), "vm1")
        assert out["guest"] == [sorted(tcp), sorted(udp), fips]
