"""A host's data path as nft tables (hostagent.datapath.tables): what a change in the load
balancers makes of them (elements, not chains), the kernel's proof that loading the old
tables and applying the difference leaves exactly what loading the new ones whole would,
packets through them in throwaway network namespaces, and nft_converge, the one way both
agents bring the kernel to a table."""
import dataclasses
import importlib
import importlib.util
import ipaddress
import re
import subprocess
import sys
import time
import types

import pytest

from hostagent import datapath as host_dp
from muxlab.datapath import nfttable
from muxlab.datapath.conventions import HOST_TABLE, OVERLAY_TABLE
from muxlab.lb.facts import Backend, NatPort
from tests.unit.conftest import default_facts, fabric
from tests.unit.test_boundary import GOT, _netns_ok, send, settle
from tests.unit.test_datapath import needs_nft
from tests.unit.test_nfttable import canonical

HOST = "host1"
VXLAN = "ip link add vxlan4242 type vxlan id 4242 dstport 4789"


def tables(facts=None, remedies=None, management=("172.30.1.7/24",)):
    return host_dp.tables(fabric(), default_facts() if facts is None else facts, HOST, remedies, management)


# ---------------------------------------------------------------- changes in the facts


def with_backend(facts, rule_key: str, vm: str):
    """`vm` joins the pool of the rule `rule_key` (and of every rule sharing that pool)."""
    pool = next(r.pool for r in facts.rules if r.key == rule_key)
    ip = str(fabric().vm(vm).ip)
    return dataclasses.replace(facts, rules=tuple(dataclasses.replace(r, backends=r.backends + (Backend(vm, ip),))
                                                  if r.pool == pool else r for r in facts.rules))


def without_vm(facts, vm: str):
    """`vm` leaves every pool, and with it its NAT ports and outbound SNAT."""
    return dataclasses.replace(facts, rules=tuple(dataclasses.replace(r, backends=tuple(b for b in r.backends if b.vm != vm))
                                                  for r in facts.rules),
                               nat_ports=tuple(n for n in facts.nat_ports if n.vm != vm),
                               snat=tuple(x for x in facts.snat if x.vm != vm))


def with_nat_port(facts, port=2201, idle_s=240, tcp_reset=True):
    ssh = NatPort("web", "ssh", ipaddress.IPv4Address("203.0.113.10"), "tcp", port, "vm1", "10.1.1.11", 22,
                  idle_s=idle_s, tcp_reset=tcp_reset)
    return dataclasses.replace(facts, nat_ports=facts.nat_ports + (ssh,))


def with_snat(facts, vm: str, shift=0, ports=None):
    """`vm`'s outbound SNAT range moved by `shift` ports, or resized to `ports`."""
    def change(x):
        lo = x.lo + shift
        return dataclasses.replace(x, lo=lo, hi=lo + (ports or x.ports) - 1)
    return dataclasses.replace(facts, snat=tuple(change(x) if x.vm == vm else x for x in facts.snat))


def with_hairpin(facts, vip="203.0.113.10"):
    return dataclasses.replace(facts, hairpin_snat_vips=facts.hairpin_snat_vips + (ipaddress.IPv4Address(vip),))


CHANGES = {
    # name: (before, after)
    "backend added": lambda: (default_facts(), with_backend(default_facts(), "bench/iperf", "vm2")),
    "backend removed": lambda: (with_backend(default_facts(), "bench/iperf", "vm2"), default_facts()),
    "backend with outbound SNAT added": lambda: (without_vm(default_facts(), "vm2"), default_facts()),
    "backend with outbound SNAT removed": lambda: (default_facts(), without_vm(default_facts(), "vm2")),
    "NAT port added": lambda: (default_facts(), with_nat_port(default_facts())),
    "NAT port with its own idle timeout added": lambda: (default_facts(), with_nat_port(default_facts(), idle_s=600)),
    "NAT port with its own idle timeout removed": lambda: (with_nat_port(default_facts(), idle_s=600), default_facts()),
    "SNAT range moved": lambda: (default_facts(), with_snat(default_facts(), "vm1", shift=8192)),
    "SNAT range resized": lambda: (default_facts(), with_snat(default_facts(), "vm1", ports=512)),
    "hairpin VIP": lambda: (default_facts(), with_hairpin(default_facts())),
    "everything back": lambda: (with_hairpin(with_snat(with_nat_port(without_vm(default_facts(), "vm2"), idle_s=600), "vm1", 64)),
                                default_facts()),
}

ELEMENT = re.compile(r"^(add|delete) element |^flush (set|map) ")


def updates(before, after) -> list[str]:
    """The difference of each table; every one of them can be done in place."""
    scripts = [nfttable.update(o, n) for o, n in zip(before, after)]
    assert None not in scripts
    return scripts


def test_the_tables_hold_every_fact_in_sets_and_maps():
    overlay, host = tables()
    assert (overlay.ref, host.ref) == (f"netdev {OVERLAY_TABLE}", f"ip {HOST_TABLE}")
    assert overlay.sets["dip_by_mac"].elements == {"02:00:0a:01:01:0b": "0x0a01010b", "02:00:0a:01:01:0c": "0x0a01010c"}
    assert host.sets["nat_rules"].elements["0x0a01010b . 203.0.113.10 . tcp . 80"] == "10.1.1.11 . 8080"
    assert host.sets["idle_rules"].elements["203.0.113.10 . tcp . 80"] == "jump timeout_tcp_240"
    assert host.sets["snat_idle"].elements["10.1.1.11 . udp"] == "jump timeout_udp_240"
    assert host.sets["snat_limits"].elements == {"10.1.1.11": "jump snat_limit_vm1", "10.1.1.12": "jump snat_limit_vm2"}
    assert host.sets["snat_ranges"].elements["10.1.1.12 . tcp"] == "203.0.113.11 . 2048-3071"
    # the counters other code reads keep their names
    assert {"counter spoofed_vxlan", "counter to_management", "counter snat_exhausted_vm1"} <= host.objects.keys()
    # no rule names a VIP, a DIP, a VM or a port range: they are all elements
    rules = "\n".join(r for c in host.chains.values() for r in c.rules)
    assert not re.search(r"203\.0\.113\.|10\.1\.1\.1[12]|\d-\d", rules), rules
    assert host_dp.render_nft(fabric(), default_facts(), HOST) == "".join(t.render() for t in tables(management=()))


def test_a_backend_added_to_a_pool_is_only_elements():
    overlay, host = updates(tables(default_facts()), tables(with_backend(default_facts(), "bench/iperf", "vm2")))
    assert overlay == ""
    lines = host.splitlines()
    assert lines and all(line.startswith(("add element ", "delete element ")) for line in lines), host
    assert "0x0a01010c . 203.0.113.30 . tcp . 5201 : 10.1.1.12 . 5201" in host


@pytest.mark.parametrize("change", ["backend added", "backend removed", "NAT port added", "SNAT range moved", "hairpin VIP"])
def test_typical_changes_are_only_elements(change):
    before, after = CHANGES[change]()
    scripts = updates(tables(before), tables(after))
    assert scripts[0] == "" and scripts[1], scripts
    assert all(ELEMENT.match(line) for line in scripts[1].splitlines()), scripts[1]


def declared(script: str) -> list[tuple[str, str]]:
    """What an update declares anew (or rewrites): (kind, name) of its table block's members."""
    return re.findall(r"^  (counter|ct timeout|set|map|chain) (\S+) \{", script, re.M)


def test_what_a_vm_new_to_outbound_snat_needs_is_declared_beside_its_elements():
    """Its counter (read by the agent), its connection-count set and the chain checking it are
    new declarations; no chain already there is rewritten."""
    _, script = updates(tables(without_vm(default_facts(), "vm2")), tables())
    assert "flush chain" not in script and "delete" not in script
    assert declared(script) == [("counter", "snat_exhausted_vm2"), ("set", "snat_exhausted_vm2_use"),
                                ("chain", "snat_limit_vm2")]
    assert "add element ip muxlab_host snat_limits { 10.1.1.12 : jump snat_limit_vm2 }" in script
    # and when it goes, they go after whatever pointed at them
    _, script = updates(tables(), tables(without_vm(default_facts(), "vm2")))
    lines = script.splitlines()
    assert declared(script) == [] and "flush chain" not in script
    assert lines[-3:] == ["delete chain ip muxlab_host snat_limit_vm2", "delete set ip muxlab_host snat_exhausted_vm2_use",
                          "delete counter ip muxlab_host snat_exhausted_vm2"]
    assert all(ELEMENT.match(line) for line in lines[:-3]), script


def test_a_new_idle_timeout_is_declared_not_rewritten():
    """A NAT port with an idle timeout no other binding has: its ct timeout object and the
    chain applying it are new; the timeouts chain's verdict map points there."""
    _, script = updates(tables(), tables(with_nat_port(default_facts(), idle_s=600)))
    assert "flush chain" not in script and declared(script) == [("ct timeout", "idle_tcp_600"), ("chain", "timeout_tcp_600")]
    assert "add element ip muxlab_host idle_rules { 203.0.113.10 . tcp . 2201 : jump timeout_tcp_600 }" in script
    _, script = updates(tables(with_nat_port(default_facts(), idle_s=600)), tables())
    assert script.splitlines()[-2:] == ["delete chain ip muxlab_host timeout_tcp_600", "delete ct timeout ip muxlab_host idle_tcp_600"]


def test_a_resized_snat_range_rewrites_only_that_vms_check():
    _, script = updates(tables(), tables(with_snat(default_facts(), "vm1", ports=512)))
    assert [line for line in script.splitlines() if "chain" in line and not line.startswith("add element")] == [
        f"flush chain ip {HOST_TABLE} snat_limit_vm1", "  chain snat_limit_vm1 {"]
    assert "ct count over 512" in script


def test_nothing_changed_is_an_empty_update():
    assert updates(tables(), tables()) == ["", ""]


@needs_nft
def test_the_tables_load_in_the_kernel(tmp_path):
    text = "".join(t.render() for t in tables())
    (tmp_path / "whole").write_text(text)
    proc = subprocess.run(["unshare", "--net", "sh", "-c", f"{VXLAN} && nft -f whole && nft -f whole && nft list ruleset"],
                          cwd=tmp_path, capture_output=True, text=True)   # twice: an idempotent replace
    assert proc.returncode == 0, proc.stderr
    assert "jump snat_limit_vm1" in proc.stdout and "203.0.113.11 . 1024-2047" in proc.stdout


@needs_nft
@pytest.mark.parametrize("change", list(CHANGES) + ["mtu remedies off"])
def test_the_kernel_ends_where_a_whole_load_would(change, tmp_path):
    if change == "mtu remedies off":
        before, after = tables(), tables(remedies=frozenset())
    else:
        old, new = CHANGES[change]()
        before, after = tables(old), tables(new)
    scripts = updates(before, after)
    assert any(scripts), change
    (tmp_path / "before").write_text("".join(t.render() for t in before))
    (tmp_path / "update").write_text("".join(scripts))
    (tmp_path / "after").write_text("".join(t.render() for t in after))

    def listing(to: str) -> str:
        return " && ".join(f"nft -j list table {t.ref} > {to}_{t.name}" for t in before)
    proc = subprocess.run(["unshare", "--net", "sh", "-c", f"{VXLAN} && nft -f before && nft -f update && {listing('updated')}"
                           f" && nft -f after && {listing('whole')}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for t in before:
        assert canonical(tmp_path / f"updated_{t.name}") == canonical(tmp_path / f"whole_{t.name}"), t.name


# ---------------------------------------------------------------- packets




def snat_of(facts, ports: int):
    """Every VM's SNAT range cut to `ports` ports (from its own start)."""
    return dataclasses.replace(facts, snat=tuple(dataclasses.replace(x, hi=x.lo + ports - 1) for x in facts.snat))


def conntrack(L, ns) -> str:
    return L.sh(ns, "cat /proc/net/nf_conntrack")


@pytest.mark.skipif(not _netns_ok(), reason="needs root, nft and ip netns")
def test_packets_meet_the_maps_as_they_met_the_rules(lab):
    """host1 with vm1 behind its bridge, and a peer on its uplink that is a MUX (VXLAN to the
    host, inner MAC vm1's) and the internet. Inbound: DNAT to the DIP and the rule's idle
    timeout (idle_rules). Outbound: SNAT to the VM's VIP and range (snat_ranges), its idle
    timeout (snat_idle), and one connection more than the range's ports to one destination
    refused and counted (snat_limits)."""
    L = lab
    host, vm, net = L.ns("host"), L.ns("vm"), L.ns("net")
    L.veth(host, "eth2", vm, "eth1")
    L.veth(host, "eth1", net, "e0")
    L.sh(host, "sysctl -qw net.ipv4.ip_forward=1 && ip link add br0 type bridge && ip link set eth2 master br0"
               " && ip link set br0 up && ip addr add 10.1.1.1/24 dev br0 && ip addr add 10.0.2.1/31 dev eth1"
               " && ip route add default via 10.0.2.0"
               " && ip link add vxlan4242 type vxlan id 4242 local 10.0.2.1 dstport 4789 nolearning && ip link set vxlan4242 up")
    L.sh(vm, "ip addr add 10.1.1.11/32 dev eth1 && ip route add default via 10.1.1.1 dev eth1 onlink")
    L.sh(net, "ip addr add 10.0.2.0/31 dev e0 && ip addr add 192.0.2.10/32 dev lo && ip addr add 10.0.1.1/32 dev lo"
              " && ip route add 203.0.113.11/32 via 10.0.2.1"
              " && ip link add vxlan4242 type vxlan id 4242 local 10.0.1.1 remote 10.0.2.1 dstport 4789 nolearning"
              " && ip link set vxlan4242 up && ip addr add 169.254.9.1/30 dev vxlan4242"
              " && ip neigh add 169.254.9.2 lladdr 02:00:0a:01:01:0b dev vxlan4242 nud permanent"
              " && ip route add 203.0.113.10/32 via 169.254.9.2 dev vxlan4242 onlink")
    facts = snat_of(default_facts(), 8)
    x = next(s for s in facts.snat if s.vm == "vm1")
    L.nft(host, host_dp.render_nft(fabric(), facts, HOST))
    L.nft(vm, GOT.replace("9999", "5353"))
    L.nft(net, GOT)

    send(L, net, "203.0.113.10", src="192.0.2.10", port=53)       # web/dns, as a MUX sends it
    assert settle(lambda: L.counter(vm, "got", "got"), 1) == 1
    inbound = re.search(r"udp\s+17 (\d+) src=192\.0\.2\.10 dst=203\.0\.113\.10 sport=\d+ dport=53 .*"
                        r"src=10\.1\.1\.11 dst=192\.0\.2\.10 sport=5353 ", conntrack(L, host))
    assert inbound and int(inbound.group(1)) > 200, inbound    # idle_udp_240, not the kernel's 30 s

    for _ in range(x.ports + 1):
        send(L, vm, "192.0.2.10", port=9999)                      # each from its own source port
    assert settle(lambda: L.counter(net, "got", "got"), x.ports) == x.ports
    time.sleep(0.2)
    assert L.counter(net, "got", "got") == x.ports
    assert L.counter(host, HOST_TABLE, host_dp.counter_name("vm1")) == 1
    outbound = re.findall(r"udp\s+17 (\d+) src=10\.1\.1\.11 dst=192\.0\.2\.10 sport=\d+ dport=9999 .*?"
                          r"src=192\.0\.2\.10 dst=(\S+) sport=9999 dport=(\d+)", conntrack(L, host))
    assert len(outbound) == x.ports
    assert all(int(t) > 200 and dst == str(x.vip) and x.lo <= int(p) <= x.hi for t, dst, p in outbound), outbound

    # TCP: the connection beyond the range is refused with a reset at once; the others, held
    # open, have the outbound idle timeout (idle_tcp_240, not the kernel's five days)
    L.background(net, "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                      "s.bind(('192.0.2.10', 9998)); s.listen(64)\nheld = []\nwhile True: held.append(s.accept())")
    time.sleep(0.3)
    client = L.background(vm, "import socket, sys, time\nheld, out = [], []\nfor i in range(int(sys.argv[1])):\n"
                              "  s = socket.socket(); s.settimeout(3)\n"
                              "  try: s.connect(('192.0.2.10', 9998)); held.append(s); out.append('ok')\n"
                              "  except OSError as e: out.append(type(e).__name__)\n"
                              "print(' '.join(out), flush=True)\ntime.sleep(30)", str(x.ports + 1))
    assert client.stdout.readline().split() == ["ok"] * x.ports + ["ConnectionRefusedError"]
    assert L.counter(host, HOST_TABLE, host_dp.counter_name("vm1")) == 2
    tcp = re.findall(r"tcp\s+6 (\d+) ESTABLISHED src=10\.1\.1\.11 dst=192\.0\.2\.10 sport=\d+ dport=9998 .*?"
                     r"src=192\.0\.2\.10 dst=\S+ sport=9998 dport=(\d+)", conntrack(L, host))
    assert len(tcp) == x.ports and all(200 < int(t) <= 240 and x.lo <= int(p) <= x.hi for t, p in tcp), tcp


# ---------------------------------------------------------------- nft_converge


@pytest.fixture
def kernel(monkeypatch, lab):
    """muxlab.node.kernel with its nft running in a throwaway network namespace (and pyroute2,
    which only the lab's images install, stood in for when it is missing)."""
    if importlib.util.find_spec("pyroute2") is None:
        ndmsg = types.ModuleType("pyroute2.netlink.rtnl.ndmsg")
        ndmsg.NUD_PERMANENT = 0x80
        stubs = {"pyroute2": types.ModuleType("pyroute2"), "pyroute2.netlink": types.ModuleType("pyroute2.netlink"),
                 "pyroute2.netlink.rtnl": types.ModuleType("pyroute2.netlink.rtnl"), "pyroute2.netlink.rtnl.ndmsg": ndmsg}
        stubs["pyroute2"].IPRoute = object
        for name, module in stubs.items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.delitem(sys.modules, "muxlab.node.kernel", raising=False)
    k = importlib.import_module("muxlab.node.kernel")
    # gone again after the test, stand-ins and all
    monkeypatch.setitem(sys.modules, "muxlab.node.kernel", k)
    monkeypatch.setattr(sys.modules["muxlab.node"], "kernel", k, raising=False)
    ns = lab.ns("nft")
    lab.sh(ns, VXLAN)

    class InNamespace:
        @staticmethod
        def run(cmd, **kw):
            return subprocess.run(["ip", "netns", "exec", ns, *cmd], **kw)
    monkeypatch.setattr(k, "subprocess", InNamespace)
    return k, lambda table: lab.sh(ns, f"nft -j list table {table.ref}")


@pytest.mark.skipif(not _netns_ok(), reason="needs root, nft and ip netns")
def test_nft_converge_updates_in_place_and_loads_whole_when_it_must(kernel, tmp_path):
    k, listing = kernel
    logged = []
    before, after = tables()[1], tables(with_nat_port(default_facts()))[1]

    def holds(table) -> tuple:
        (tmp_path / "listing").write_text(listing(table))
        return canonical(tmp_path / "listing")

    assert k.nft_converge(before, None, logged.append) == "whole table loaded"
    assert k.nft_converge(before, before, logged.append) == "nft unchanged"
    how = k.nft_converge(after, before, logged.append)
    assert how == f"nft update of {len(nfttable.update(before, after).splitlines())} commands" and not logged
    updated = holds(after)
    k.nft_converge(after, None, logged.append)
    assert updated == holds(after)
    # the kernel no longer holds what the agent last loaded (changed by hand): the whole table
    k.nft_apply(f"delete table {after.ref}\n")
    assert k.nft_converge(before, after, logged.append) == "whole table loaded"
    assert len(logged) == 1 and "incremental update refused" in logged[0]
    fell_back = holds(before)
    k.nft_converge(before, None, logged.append)
    assert fell_back == holds(before) and len(logged) == 1
