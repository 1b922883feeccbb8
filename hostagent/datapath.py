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

Outbound (a VM's own connections to the internet): source-NAT to its VIP and port range
(muxlab.model.allocation); a connection beyond the range's room towards one destination is
refused and counted per VM (snat_exhausted_<vm>). Replies come back through any MUX.
The management interface (eth0, Docker's) is the platform's, never the tenants': nothing
from a VM is forwarded out of it or delivered to the host's management addresses (counted:
to_management). What a VM may reach on its host is its gateway and the platform addresses
(IMDS 169.254.169.254, 168.63.129.16).
Idle flows: each rule's conntrack timeout is its idleTimeoutInMinutes; a packet of a flow
whose state expired is answered with a TCP reset (enableTcpReset) or dropped, on both sides.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from muxlab.model.compiled import Services
from muxlab.model.conventions import ct_timeout_object, dip_mac, dip_mark, vxlan_ifname
from muxlab.model.fabric import Lab

TABLE = "muxlab_host"
OVERLAY_TABLE = "muxlab_overlay"
BRIDGE = "br0"
UPLINK = "eth1"
MANAGEMENT = "eth0"   # Docker's interface on the management network


def counter_name(vm: str) -> str:
    return "snat_exhausted_" + re.sub(r"[^A-Za-z0-9]", "_", vm)


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


def local_bindings(fabric: Lab, svc: Services, host: str) -> list[Binding]:
    """Every binding served here. Every pool member counts, in rotation or not: a backend
    out of rotation still serves the flows the MUXes have pinned to it."""
    local = {vm.name for vm in fabric.vms_on(host)}
    out = {Binding(str(r.vip), r.protocol, r.port, b.ip, r.backend_port, r.floating_ip, r.idle_s, r.tcp_reset)
           for r in svc.rules for b in r.backends if b.vm in local}
    out |= {Binding(str(n.vip), n.protocol, n.port, n.ip, n.backend_port, n.floating_ip, n.idle_s, n.tcp_reset)
            for n in svc.nat_ports if n.vm in local}
    return sorted(out, key=lambda x: (x.vip, x.protocol, x.port, x.dip))


def local_rules(fabric: Lab, svc: Services, host: str) -> list[tuple[int, str, str, int, str, int, bool]]:
    """(mark, vip, proto, port, dip, backend_port, floating) for every binding served here."""
    return rules_of(local_bindings(fabric, svc, host))


def rules_of(bindings: list[Binding]) -> list[tuple[int, str, str, int, str, int, bool]]:
    return sorted({(dip_mark(b.dip), b.vip, b.protocol, b.port, b.dip, b.backend_port, b.floating_ip) for b in bindings})


def render_nft(fabric: Lab, svc: Services, host: str, remedies: frozenset[str] | None = None,
               management: tuple[str, ...] = ()) -> str:
    """`management`: the host's management addresses or networks (eth0's), which no VM may reach."""
    remedies = fabric.mtu_remedies if remedies is None else remedies
    management = tuple(str(n) for n in ipaddress.collapse_addresses(
        ipaddress.IPv4Network(m, strict=False) for m in management))   # an interval set takes no overlaps
    dev = vxlan_ifname(fabric.vni)
    vms = fabric.vms_on(host)
    macs = ", ".join(f"{dip_mac(vm.ip)} : {dip_mark(vm.ip):#010x}" for vm in vms)
    bindings = local_bindings(fabric, svc, host)
    rules = rules_of(bindings)
    local_names = {vm.name for vm in vms}
    snats = [x for x in svc.snat if x.vm in local_names]
    # (protocol, idle seconds) -> the VIP . proto . port keys of bindings with that timeout
    timeouts: dict[tuple[str, int], set[str]] = {}
    for b in bindings:
        timeouts.setdefault((b.protocol, b.idle_s), set()).add(f"{b.vip} . {b.protocol} . {b.port}")
    timeouts = dict(sorted(timeouts.items()))
    # a packet of an expired TCP flow leaves a VM from one of these: drop it, or reset it
    every_end = {b.backend_end for b in bindings if b.protocol == "tcp"}
    reset_end = {b.backend_end for b in bindings if b.protocol == "tcp" and b.tcp_reset}
    lab_space = f"{fabric.vnet}, {fabric.public_vips}"
    gateway = fabric.host(host).vm_gateway.ip
    hairpin_vips = ", ".join(str(v) for v in svc.hairpin_snat_vips)
    self_pairs = ", ".join(f"{vm.ip} . {vm.ip}" for vm in vms)
    nat = ", ".join(f"{m:#010x} . {vip} . {p} . {port} : {dip} . {bport}" for m, vip, p, port, dip, bport, fip in rules if not fip)
    fips = ", ".join(f"{m:#010x} . {vip} . {p} . {port}" for m, vip, p, port, dip, bport, fip in rules if fip)
    muxes = ", ".join(str(m.address) for m in fabric.muxes)
    vips = ", ".join(str(v) for v in svc.vips)

    def elems(s) -> str:
        s = s if isinstance(s, str) else ", ".join(sorted(s))
        return f" elements = {{ {s} }};" if s else ""

    per_class, timeout_rules = [], []
    for (proto, idle), front in timeouts.items():
        name = f"idle_{proto}_{idle}"
        per_class += [ct_timeout_object(proto, idle),
                      f"  set {name}_rules {{ type ipv4_addr . inet_proto . inet_service;{elems(front)} }}"]
        timeout_rules.append(f'    iifname "{dev}" ip daddr . meta l4proto . th dport @{name}_rules ct timeout set "{name}"')
    snat_sets, snat_fwd, snat_nat = [], [], []
    for x in snats:
        protos = ", ".join(x.protocols)
        c = counter_name(x.vm)
        snat_sets += [f"  counter {c} {{}}",
                      f"  set {c}_use {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; size 65535; }}"]
        # as many concurrent connections to one destination as the range has ports; one
        # more is what exhaustion looks like, refused at once and counted. TCP is refused
        # with a reset: ICMP errors are rate-limited by the kernel, so a burst of refusals
        # would turn into silent drops and connect timeouts.
        for proto in x.protocols:
            refuse = "reject with tcp reset" if proto == "tcp" else "reject"
            snat_fwd.append(f'    iifname "{BRIDGE}" oifname "{UPLINK}" ip saddr {x.ip} ip daddr != @lab_space meta l4proto {proto} '
                            f"ct state new add @{c}_use {{ ip daddr . meta l4proto . th dport ct count over {x.ports} }} "
                            f"counter name {c} {refuse}")
            # the outbound flows' own idle timeout; its timeout object, unless a binding made it
            name = f"idle_{proto}_{x.idle_s}"
            if (proto, x.idle_s) not in timeouts:
                timeouts[(proto, x.idle_s)] = set()
                per_class.append(ct_timeout_object(proto, x.idle_s))
            timeout_rules.append(f'    iifname "{BRIDGE}" ip saddr {x.ip} ip daddr != @lab_space meta l4proto {proto} '
                             f'ct timeout set "{name}"')
        snat_nat.append(f'    oifname "{UPLINK}" ip saddr {x.ip} ip daddr != @lab_space meta l4proto {{ {protos} }} '
                        f"snat ip to {x.vip}:{x.lo}-{x.hi}")
    mss = fabric.overlay_mss
    clamp = ([f'    iifname "{BRIDGE}" tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {mss} '
              f"tcp option maxseg size set {mss}"] if "mss-clamp" in remedies else [])
    expired = "ct state new tcp flags & (syn | rst) == 0"

    return "\n".join([
        f"table netdev {OVERLAY_TABLE}", f"delete table netdev {OVERLAY_TABLE}",
        f"table ip {TABLE}", f"delete table ip {TABLE}",
        f"table netdev {OVERLAY_TABLE} {{",
        "  counter unknown_dip {}",
        f"  map dip_by_mac {{ type ether_addr : mark;{elems(macs)} }}",
        "  chain ingress {",
        f'    type filter hook ingress device "{dev}" priority filter; policy accept;',
        "    meta mark set ether daddr map @dip_by_mac meta pkttype set host accept",
        "    counter name unknown_dip drop",
        "  }",
        "}",
        f"table ip {TABLE} {{",
        "  counter spoofed_vxlan {}", "  counter no_rule {}",
        f"  set muxes {{ type ipv4_addr;{elems(muxes)} }}",
        f"  map nat_rules {{ type mark . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;{elems(nat)} }}",
        f"  set floating_rules {{ type mark . ipv4_addr . inet_proto . inet_service;{elems(fips)} }}",
        f"  set vips {{ type ipv4_addr;{elems(vips)} }}",
        f"  set lab_space {{ type ipv4_addr; flags interval;{elems(lab_space)} }}",
        f"  set backend_ends {{ type ipv4_addr . inet_proto . inet_service;{elems(every_end)} }}",
        f"  set reset_ends {{ type ipv4_addr . inet_proto . inet_service;{elems(reset_end)} }}",
        f"  set hairpin_vips {{ type ipv4_addr;{elems(hairpin_vips)} }}",
        f"  set self_pairs {{ type ipv4_addr . ipv4_addr;{elems(self_pairs)} }}",
        "  counter idle_reset {}", "  counter idle_drop {}", "  counter to_management {}",
        f"  set management {{ type ipv4_addr; flags interval;{elems(management)} }}",
        *per_class, *snat_sets,
        # A VM calling a VIP: its packet leaves through this host and may come back through
        # a MUX to a VM here. Tracked on the way out, the return (same tuple) would match that
        # entry and skip the NAT; so it is tracked, and NATed, only on the way back.
        "  chain raw {",
        "    type filter hook prerouting priority raw; policy accept;",
        f'    iifname "{BRIDGE}" ip daddr @vips notrack return',
        # The replies to such a call come straight from the serving host (DSR), source VIP.
        # Tracked, each would leave an entry VIP:80 -> VM:port behind, whose reply direction
        # is the VM's next call from that port: that call's SYN would then skip its NAT.
        f'    iifname "{UPLINK}" ip saddr @vips notrack return',
        "  }",
        # idle timeouts attach to a new entry before it is confirmed: after conntrack made it
        # (priority -200), which is why they are not in the raw chain above
        "  chain timeouts {",
        "    type filter hook prerouting priority mangle; policy accept;",
        *timeout_rules,
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        "    udp dport 4789 ip saddr != @muxes counter name spoofed_vxlan drop",
        f'    iifname "{BRIDGE}" ip daddr @management counter name to_management drop',
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "{dev}" dnat ip to meta mark . ip daddr . meta l4proto . th dport map @nat_rules',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        # a VM never reaches the management network, whatever route the host has to it
        f'    iifname "{BRIDGE}" oifname "{MANAGEMENT}" counter name to_management drop',
        f'    iifname "{BRIDGE}" ip daddr @management counter name to_management drop',
        # a packet of a flow whose state expired (idle timeout): a reset, or nothing
        f'    iifname "{dev}" {expired} ip daddr . meta l4proto . th dport @reset_ends counter name idle_reset reject with tcp reset',
        f'    iifname "{dev}" {expired} counter name idle_drop drop',
        f'    iifname "{BRIDGE}" {expired} ip saddr . meta l4proto . th sport @reset_ends counter name idle_reset reject with tcp reset',
        f'    iifname "{BRIDGE}" {expired} ip saddr . meta l4proto . th sport @backend_ends counter name idle_drop drop',
        *clamp,
        f'    iifname "{dev}" ct status dnat accept',
        f'    iifname "{dev}" ct direction reply ct status snat accept',
        f'    iifname "{dev}" meta mark . ip daddr . meta l4proto . th dport @floating_rules accept',
        f'    iifname "{dev}" counter name no_rule drop',
        *snat_fwd,
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        # hairpin fix 2 (hairpinSnat): a flow mapped back to the VM that sent it leaves this
        # host with the host's address as source, so the VM answers through the host
        f'    oifname "{BRIDGE}" ct original ip daddr @hairpin_vips ip saddr . ip daddr @self_pairs snat ip to {gateway}',
        *snat_nat,
        "  }",
        "}",
    ]) + "\n"
