"""What a host's kernel should hold for its local VMs. Pure: no netlink, no nft.

Per inbound packet (see docs/datapath.md):
  input:      VXLAN (UDP 4789) from anything but a known MUX is dropped and counted.
  ingress on vxlan<VNI> (netdev): the inner destination MAC names the DIP the MUX chose;
              it becomes the packet mark, and the frame is accepted as addressed to us.
  prerouting: NAT rules rewrite VIP:port to DIP:backend_port (conntrack remembers);
              floating-IP rules leave the packet untouched.
  routing:    `fwmark DIP lookup DIP` -> `default via DIP dev br0`: to the chosen VM.
Replies from the VM are un-NATed by conntrack (source becomes the VIP) and routed to the
edge by the host's default route: Direct Server Return, never through a MUX.

Outbound (a VM's own connections to the internet and to public frontends, its own
included: anything outside the VNet): source-NAT to its VIP and port range
(muxlab.lb.allocation); a connection beyond the range's room towards one destination is
refused and counted per VM (snat_exhausted_<vm>). Replies come back through any MUX. A call
to an internal frontend keeps the VM's DIP (Azure's ILB does no source NAT). A VM with no
outbound identity has no connection out of the VNet: dropped and counted (no_outbound).
Fastpath (overlay table, egress of the uplink; hostagent/fastpath.py installs the elements):
a redirected flow's packets go on the overlay straight to the other end's host.
The management interface (eth0, Docker's) is the platform's, never the tenants': nothing
from a VM is forwarded out of it or delivered to the host's management addresses (counted:
to_management). What a VM may reach on its host is its gateway and the platform addresses
(IMDS 169.254.169.254, 168.63.129.16: the WireServer, where it reports its health).
A classic cloud service's internal endpoint is opened only by the service's own instances
(internal_endpoints, internal_peers; the others are dropped and counted: internal_denied).
Routed traffic only: two VMs of one host's subnet meet on its bridge, unfiltered.
Idle flows: each rule's conntrack timeout is its idleTimeoutInMinutes; a packet of a flow
whose state expired is answered with a TCP reset (enableTcpReset) or dropped, on both sides.

As data (`tables`): the rules name sets and maps only, and every per-VIP, per-rule and
per-VM fact is an element, so the agent changes a loaded table with a few element lines
(muxlab.datapath.nfttable.update). Besides the sets of addresses:
  nat_rules      mark . VIP . proto . port -> DIP . backend port (DNAT)
  floating_rules mark . VIP . proto . port (delivered untouched)
  idle_rules     VIP . proto . port -> jump timeout_<proto>_<s>, the chain setting its ct timeout
  snat_idle      VM . proto -> jump timeout_<proto>_<s> (its outbound flows)
  snat_limits    VM -> jump snat_limit_<vm>: its connections per destination against its range
  snat_ranges    VM . proto -> VIP . LO-HI (SNAT)
(nft 1.0 has no map to a ct timeout object, hence a verdict map to a one-rule chain; the
connection count's limit is a constant of its rule, hence a chain per VM.)
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from muxlab.datapath import nfttable
from muxlab.datapath.conventions import (FASTPATH_PORT, HOST_BRIDGE, HOST_TABLE, LIVENESS_PORT, MGMT_IF, OVERLAY_TABLE,
                                         UPLINK_IF, VXLAN_PORT, ct_timeout_object, dip_mac, dip_mark, vxlan_ifname)
from muxlab.fabric.lab import Lab
from muxlab.lb.facts import Facts


def _ident(vm: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", vm)


SNAT_NEW = "snat_new"   # connections source-NATed (a NAT chain sees each one's first packet only)
FASTPATH_PACKETS = "fastpath_packets"   # packets this host sent straight to another host (Fastpath)
FORGED_REDIRECT = "forged_redirect"     # Fastpath redirects from anything but a MUX, dropped
NO_OUTBOUND = "no_outbound"             # connections out of the VNet from a VM with no outbound identity
INTERNAL_DENIED = "internal_denied"     # a classic service's internal endpoint opened from outside the service


def fastpath_map(idle_s: int) -> str:
    """The map of redirected flows whose idle timeout is idle_s: a packet of one refreshes its
    element for that long (nft refreshes an element by the timeout of the rule that updates it,
    not its own, hence a map per timeout)."""
    return f"fastpath_{idle_s}"


def fastpath_classes(facts: Facts) -> list[int]:
    """The idle timeouts of the TCP load-balancing rules: a redirect names its rule's."""
    return sorted({r.idle_s for r in facts.rules if r.protocol == "tcp"})


FLOW_KEY = "ip saddr . tcp sport . ip daddr . tcp dport"   # a redirected flow as this host sends it


def counter_name(vm: str) -> str:
    return "snat_exhausted_" + _ident(vm)


@dataclass(frozen=True)
class Binding:
    """One (VIP, protocol, port) a local VM serves: a load-balancing rule's backend or an
    inbound NAT rule's port."""
    vip: str
    protocol: str
    port: int
    dip: str
    backend_port: int
    floating_ip: bool
    idle_s: int
    tcp_reset: bool

    @property
    def backend_end(self) -> str:
        """Where the VM's packets of it leave from: the DIP and backend port, or the VIP (floating IP)."""
        return (f"{self.vip} . {self.protocol} . {self.port}" if self.floating_ip
                else f"{self.dip} . {self.protocol} . {self.backend_port}")


def local_bindings(fabric: Lab, facts: Facts, host: str) -> list[Binding]:
    """Every binding served here. Every pool member counts, in rotation or not: a backend
    out of rotation still serves the flows the MUXes have pinned to it."""
    local = {vm.name for vm in fabric.vms_on(host)}
    out = {Binding(str(r.vip), r.protocol, r.port, b.ip, r.backend_port, r.floating_ip, r.idle_s, r.tcp_reset)
           for r in facts.rules for b in r.backends if b.vm in local}
    out |= {Binding(str(n.vip), n.protocol, n.port, n.ip, n.backend_port, n.floating_ip, n.idle_s, n.tcp_reset)
            for n in facts.nat_ports if n.vm in local}
    return sorted(out, key=lambda x: (x.vip, x.protocol, x.port, x.dip))


def local_rules(fabric: Lab, facts: Facts, host: str) -> list[tuple[int, str, str, int, str, int, bool]]:
    """(mark, vip, proto, port, dip, backend_port, floating) for every binding served here."""
    return rules_of(local_bindings(fabric, facts, host))


def rules_of(bindings: list[Binding]) -> list[tuple[int, str, str, int, str, int, bool]]:
    return sorted({(dip_mark(b.dip), b.vip, b.protocol, b.port, b.dip, b.backend_port, b.floating_ip) for b in bindings})


def tables(fabric: Lab, facts: Facts, host: str, remedies: frozenset[str] | None = None,
           management: tuple[str, ...] = ()) -> tuple[nfttable.Table, nfttable.Table]:
    """The host's data path as data: the overlay table (netdev, on the VXLAN device) and the
    host table (ip). An agent loads each whole once, then only its differences
    (muxlab.datapath.nfttable.update): every per-VIP, per-rule and per-VM fact is an element of a
    set or map, so a backend, a NAT port, a SNAT range or a hairpin VIP coming or going is an
    element change, not a rewrite of a chain. What a VM newly given outbound SNAT needs
    besides elements is declared, not rewritten: its counter, its connection-count set and
    the chain that checks it (a range that changes size rewrites that chain's rules, the
    MTU remedies the forward chain's).

    `management`: the host's management addresses or networks (eth0's), which no VM may reach."""
    return overlay_table(fabric, host, facts), host_table(fabric, facts, host, remedies, management)


def render_nft(fabric: Lab, facts: Facts, host: str, remedies: frozenset[str] | None = None,
               management: tuple[str, ...] = ()) -> str:
    """Both tables whole, as one nft script (one transaction)."""
    return "".join(t.render() for t in tables(fabric, facts, host, remedies, management))


def overlay_table(fabric: Lab, host: str, facts: Facts = Facts()) -> nfttable.Table:
    """The inner destination MAC names the DIP the MUX chose: it becomes the packet mark.

    Fastpath (egress of the uplink, after routing and NAT): a packet of a redirected flow is
    not sent to the edge but put on the overlay to the other end's host, its inner MAC the
    other end's DIP MAC (the VXLAN FDB holds every VM's host), as a MUX would have sent it.
    The elements are the host agent's, one per redirect (muxlab.node.fastpath), never in this
    desired state: an update of the table leaves them be."""
    dev = vxlan_ifname(fabric.vni)
    macs = {dip_mac(vm.ip): f"{dip_mark(vm.ip):#010x}" for vm in fabric.vms_on(host)}
    objects = {f"counter {c}": f"counter {c} {{}}" for c in ("unknown_dip", FASTPATH_PACKETS)}
    sets = {"dip_by_mac": nfttable.Set("map", "type ether_addr : mark;", macs)}
    chains = {"ingress": nfttable.Chain(f'type filter hook ingress device "{dev}" priority filter; policy accept;', (
        "meta mark set ether daddr map @dip_by_mac meta pkttype set host accept",
        "counter name unknown_dip drop"))}
    if fabric.fastpath:
        classes = fastpath_classes(facts)
        sets |= {fastpath_map(c): nfttable.Set("map", f"typeof {FLOW_KEY} : ether daddr; flags timeout;") for c in classes}
        chains["fastpath"] = nfttable.Chain(f'type filter hook egress device "{UPLINK_IF}" priority filter; policy accept;', tuple(
            f"ether daddr set {FLOW_KEY} map @{fastpath_map(c)} "
            f"update @{fastpath_map(c)} {{ {FLOW_KEY} timeout {c}s : ether daddr }} counter name {FASTPATH_PACKETS} fwd to \"{dev}\""
            for c in classes))
    return nfttable.Table("netdev", OVERLAY_TABLE, objects, sets, chains)


def timeout_chain(proto: str, idle_s: int) -> str:
    """The chain that gives a new flow the idle timeout idle_<proto>_<seconds>: the verdict
    maps of the timeouts chain jump to it (nft 1.0 has no map from a key to a ct timeout)."""
    return f"timeout_{proto}_{idle_s}"


def snat_chain(vm: str) -> str:
    """The chain that refuses a VM's outbound connection beyond its SNAT range's room."""
    return "snat_limit_" + _ident(vm)


def host_table(fabric: Lab, facts: Facts, host: str, remedies: frozenset[str] | None = None,
               management: tuple[str, ...] = ()) -> nfttable.Table:
    remedies = fabric.mtu_remedies if remedies is None else remedies
    management = tuple(str(n) for n in ipaddress.collapse_addresses(
        ipaddress.IPv4Network(m, strict=False) for m in management))   # an interval set takes no overlaps
    dev = vxlan_ifname(fabric.vni)
    vms = fabric.vms_on(host)
    bindings = local_bindings(fabric, facts, host)
    rules = rules_of(bindings)
    local_names = {vm.name for vm in vms}
    snats = [x for x in facts.snat if x.vm in local_names]
    # (protocol, idle seconds) -> the VIP . proto . port keys of bindings with that timeout
    timeouts: dict[tuple[str, int], set[str]] = {}
    for b in bindings:
        timeouts.setdefault((b.protocol, b.idle_s), set()).add(f"{b.vip} . {b.protocol} . {b.port}")
    idle_rules = {k: f"jump {timeout_chain(*c)}" for c, keys in sorted(timeouts.items()) for k in sorted(keys)}
    # the outbound flows' own idle timeout, per VM and protocol
    snat_idle = {f"{x.ip} . {p}": f"jump {timeout_chain(p, x.idle_s)}" for x in snats for p in x.protocols}
    classes = sorted(set(timeouts) | {(p, x.idle_s) for x in snats for p in x.protocols})
    # a packet of an expired TCP flow leaves a VM from one of these: drop it, or reset it
    every_end = {b.backend_end for b in bindings if b.protocol == "tcp"}
    reset_end = {b.backend_end for b in bindings if b.protocol == "tcp" and b.tcp_reset}

    def members(values) -> dict[str, None]:
        return dict.fromkeys(values)

    addr_tuple = "type ipv4_addr . inet_proto . inet_service;"
    objects = {f"counter {c}": f"counter {c} {{}}" for c in (
        "spoofed_vxlan", "no_rule", "idle_reset", "idle_drop", "to_management", "forged_beacon", SNAT_NEW, FORGED_REDIRECT, NO_OUTBOUND,
        INTERNAL_DENIED)}
    objects |= {f"ct timeout idle_{p}_{idle}": ct_timeout_object(p, idle).strip() for p, idle in classes}
    objects |= {f"counter {counter_name(x.vm)}": f"counter {counter_name(x.vm)} {{}}" for x in snats}
    sets = {
        "muxes": nfttable.Set("set", "type ipv4_addr;", members(str(m.address) for m in fabric.muxes)),
        # the other hosts: with Fastpath they send VXLAN here too
        "peer_hosts": nfttable.Set("set", "type ipv4_addr;", members(
            str(h.address) for h in fabric.hosts if h.name != host and fabric.fastpath)),
        "nat_rules": nfttable.Set("map", "type mark . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;",
                                  {f"{m:#010x} . {vip} . {p} . {port}": f"{dip} . {bport}"
                                   for m, vip, p, port, dip, bport, fip in rules if not fip}),
        "floating_rules": nfttable.Set("set", "type mark . ipv4_addr . inet_proto . inet_service;",
                                       members(f"{m:#010x} . {vip} . {p} . {port}"
                                               for m, vip, p, port, dip, bport, fip in rules if fip)),
        "vips": nfttable.Set("set", "type ipv4_addr;", members(str(v) for v in facts.vips)),
        # (VM, protocol) with an outbound identity: its connections to public frontends are source-NATed
        "snat_sources": nfttable.Set("set", "type ipv4_addr . inet_proto;", members(f"{x.ip} . {p}" for x in snats for p in x.protocols)),
        "backend_ends": nfttable.Set("set", addr_tuple, members(sorted(every_end))),
        "reset_ends": nfttable.Set("set", addr_tuple, members(sorted(reset_end))),
        "hairpin_vips": nfttable.Set("set", "type ipv4_addr;", members(str(v) for v in facts.hairpin_snat_vips)),
        "self_pairs": nfttable.Set("set", "type ipv4_addr . ipv4_addr;", members(f"{vm.ip} . {vm.ip}" for vm in vms)),
        "management": nfttable.Set("set", "type ipv4_addr; flags interval;", members(management)),
        # (VIP, protocol, port) of a binding -> the chain giving its flows their idle timeout
        "idle_rules": nfttable.Set("map", f"{addr_tuple[:-1]} : verdict;", idle_rules),
        # (VM, protocol) -> the chain giving its outbound flows their idle timeout
        "snat_idle": nfttable.Set("map", "type ipv4_addr . inet_proto : verdict;", snat_idle),
        # VM -> the chain refusing its outbound connections beyond its range's room
        "snat_limits": nfttable.Set("map", "type ipv4_addr : verdict;", {x.ip: f"jump {snat_chain(x.vm)}" for x in snats}),
        # (VM, protocol) -> its outbound identity, VIP . LO-HI
        "snat_ranges": nfttable.Set("map", "type ipv4_addr . inet_proto : interval ipv4_addr . inet_service;",
                                    {f"{x.ip} . {p}": f"{x.vip} . {x.lo}-{x.hi}" for x in snats for p in x.protocols}),
        # a classic service's internal endpoints here (DIP . proto . port), and who may open them
        "internal_endpoints": nfttable.Set("set", addr_tuple, members(
            f"{e.ip} . {e.protocol} . {e.port}" for e in facts.internal if e.vm in local_names)),
        "internal_peers": nfttable.Set("set", "type ipv4_addr . ipv4_addr . inet_proto . inet_service;", members(
            f"{peer} . {e.ip} . {e.protocol} . {e.port}" for e in facts.internal if e.vm in local_names for peer in e.peers)),
    }
    # as many concurrent connections to one destination as the range has ports: each VM its
    # own set of them (each as big as it was), counted per destination
    sets |= {f"{counter_name(x.vm)}_use": nfttable.Set("set", f"{addr_tuple[:-1]}; flags dynamic; size 65535;") for x in snats}

    mss = fabric.overlay_mss
    clamp = ((f'iifname "{HOST_BRIDGE}" tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {mss} '
              f"tcp option maxseg size set {mss}",) if "mss-clamp" in remedies else ())
    expired = "ct state new tcp flags & (syn | rst) == 0"
    gateway = fabric.host(host).vm_gateway.ip
    vnet = str(fabric.vnet)
    # a VM's call to a public frontend leaves with its outbound identity, as one to the
    # internet does (Azure: only the internal load balancer keeps the caller's DIP)
    outside = f"ip daddr != {vnet}"
    fastpath_back = (
        # a VIP's reply to such a call, sent by the serving host straight here (Fastpath)
        f'iifname "{dev}" ip saddr @vips ip daddr {vnet} notrack return',) if fabric.fastpath else ()
    chains = {
        # A VM calling an internal frontend keeps its DIP: its packet leaves through this host
        # and may come back through a MUX to a VM here. Tracked on the way out, the return (same tuple) would
        # match that entry and skip the NAT; so it is tracked, and NATed, only on the way back.
        "raw": nfttable.Chain("type filter hook prerouting priority raw; policy accept;", (
            f'iifname "{HOST_BRIDGE}" ip daddr @vips ip daddr {vnet} notrack return',
            # The replies to such a call come straight from the serving host (DSR), source VIP.
            # Tracked, each would leave an entry VIP:80 -> VM:port behind, whose reply direction
            # is the VM's next call from that port: that call's SYN would then skip its NAT.
            f'iifname "{UPLINK_IF}" ip saddr @vips notrack return',
            *fastpath_back)),
        # idle timeouts attach to a new entry before it is confirmed: after conntrack made it
        # (priority -200), which is why they are not in the raw chain above
        "timeouts": nfttable.Chain("type filter hook prerouting priority mangle; policy accept;", (
            f'iifname "{dev}" ip daddr . meta l4proto . th dport vmap @idle_rules',
            f'iifname "{HOST_BRIDGE}" {outside} ip saddr . meta l4proto vmap @snat_idle')),
        "input": nfttable.Chain("type filter hook input priority filter; policy accept;", (
            f"udp dport {VXLAN_PORT} ip saddr != @muxes ip saddr != @peer_hosts counter name spoofed_vxlan drop",
            # Fastpath redirects come from a MUX's underlay address, never from a VM or the internet
            f'iifname "{HOST_BRIDGE}" udp dport {FASTPATH_PORT} counter name {FORGED_REDIRECT} drop',
            f"udp dport {FASTPATH_PORT} ip saddr != @muxes counter name {FORGED_REDIRECT} drop",
            f'iifname "{HOST_BRIDGE}" ip daddr @management counter name to_management drop')),
        "prerouting": nfttable.Chain("type nat hook prerouting priority dstnat; policy accept;", (
            f'iifname "{dev}" dnat ip to meta mark . ip daddr . meta l4proto . th dport map @nat_rules',)),
        "forward": nfttable.Chain("type filter hook forward priority filter; policy accept;", (
            # a VM never reaches the management network, whatever route the host has to it
            f'iifname "{HOST_BRIDGE}" oifname "{MGMT_IF}" counter name to_management drop',
            f'iifname "{HOST_BRIDGE}" ip daddr @management counter name to_management drop',
            # host liveness is the hosts' own word to the MUXes (muxlab.node.liveness): no VM may forge it
            f'iifname "{HOST_BRIDGE}" udp dport {LIVENESS_PORT} counter name forged_beacon drop',
            f'iifname "{HOST_BRIDGE}" udp dport {FASTPATH_PORT} counter name {FORGED_REDIRECT} drop',
            # nor VXLAN in the name of a MUX or a host (which other hosts accept it from)
            f'iifname "{HOST_BRIDGE}" udp dport {VXLAN_PORT} ip saddr @muxes counter name spoofed_vxlan drop',
            f'iifname "{HOST_BRIDGE}" udp dport {VXLAN_PORT} ip saddr @peer_hosts counter name spoofed_vxlan drop',
            # a classic service's internal endpoint: its own instances only (an instance input
            # endpoint NATed to the same port is the load balancer's, and passes)
            f'oifname "{HOST_BRIDGE}" ip daddr . meta l4proto . th dport @internal_endpoints ct status & dnat == 0 '
            f'ip saddr . ip daddr . meta l4proto . th dport != @internal_peers counter name {INTERNAL_DENIED} drop',
            # a packet of a flow whose state expired (idle timeout): a reset, or nothing
            f'iifname "{dev}" {expired} ip daddr . meta l4proto . th dport @reset_ends counter name idle_reset reject with tcp reset',
            f'iifname "{dev}" {expired} counter name idle_drop drop',
            f'iifname "{HOST_BRIDGE}" {expired} ip saddr . meta l4proto . th sport @reset_ends counter name idle_reset reject with tcp reset',
            f'iifname "{HOST_BRIDGE}" {expired} ip saddr . meta l4proto . th sport @backend_ends counter name idle_drop drop',
            *clamp,
            f'iifname "{dev}" ct status dnat accept',
            f'iifname "{dev}" ct direction reply ct status snat accept',
            f'iifname "{dev}" meta mark . ip daddr . meta l4proto . th dport @floating_rules accept',
            *((f'iifname "{dev}" ct state untracked ip saddr @vips accept',) if fabric.fastpath else ()),
            f'iifname "{dev}" counter name no_rule drop',
            # a VM with no outbound identity has no way out of the VNet (Azure: no outbound
            # connectivity), to the internet or to a public frontend
            f'iifname "{HOST_BRIDGE}" oifname "{UPLINK_IF}" {outside} ct state new meta l4proto {{ tcp, udp }} '
            f'ip saddr . meta l4proto != @snat_sources counter name {NO_OUTBOUND} drop',
            # the last rule: a VM's new outbound connection, checked in its own chain
            f'iifname "{HOST_BRIDGE}" oifname "{UPLINK_IF}" {outside} ct state new ip saddr vmap @snat_limits')),
        "postrouting": nfttable.Chain("type nat hook postrouting priority srcnat; policy accept;", (
            # hairpin fix 2 (hairpinSnat): a flow mapped back to the VM that sent it leaves this
            # host with the host's address as source, so the VM answers through the host
            f'oifname "{HOST_BRIDGE}" ct original ip daddr @hairpin_vips ip saddr . ip daddr @self_pairs snat ip to {gateway}',
            f'oifname "{UPLINK_IF}" {outside} meta l4proto {{ tcp, udp }} counter name {SNAT_NEW} snat ip to ip saddr . meta l4proto map @snat_ranges')),
    }
    chains |= {timeout_chain(p, idle): nfttable.Chain("", (f'ct timeout set "idle_{p}_{idle}"',)) for p, idle in classes}
    for x in snats:
        c = counter_name(x.vm)
        # one connection more than the range has ports towards one destination is what
        # exhaustion looks like, refused at once and counted. TCP is refused with a reset:
        # ICMP errors are rate-limited by the kernel, so a burst of refusals would turn into
        # silent drops and connect timeouts.
        chains[snat_chain(x.vm)] = nfttable.Chain("", tuple(
            f"meta l4proto {p} add @{c}_use {{ ip daddr . meta l4proto . th dport ct count over {x.ports} }} "
            f"counter name {c} {'reject with tcp reset' if p == 'tcp' else 'reject'}" for p in x.protocols))
    return nfttable.Table("ip", HOST_TABLE, objects, sets, chains)
