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
"""
from __future__ import annotations

from muxlab.model.compiled import Services
from muxlab.model.conventions import dip_mac, dip_mark, vxlan_ifname
from muxlab.model.fabric import Lab

TABLE = "muxlab_host"
OVERLAY_TABLE = "muxlab_overlay"
BRIDGE = "br0"


def local_rules(fabric: Lab, svc: Services, host: str) -> list[tuple[int, str, str, int, str, int, bool]]:
    """(mark, vip, proto, port, dip, backend_port, floating) for every rule served here.
    Every pool member counts, in rotation or not: a backend out of rotation still serves
    the flows the MUXes have pinned to it."""
    local = {vm.name for vm in fabric.vms_on(host)}
    out = []
    for r in svc.rules:
        for b in r.backends:
            if b.vm in local:
                out.append((dip_mark(b.ip), str(r.vip), r.protocol, r.port, b.ip, r.backend_port, r.floating_ip))
    return sorted(set(out))


def render_nft(fabric: Lab, svc: Services, host: str) -> str:
    dev = vxlan_ifname(fabric.vni)
    vms = fabric.vms_on(host)
    macs = ", ".join(f"{dip_mac(vm.ip)} : {dip_mark(vm.ip):#010x}" for vm in vms)
    rules = local_rules(fabric, svc, host)
    nat = ", ".join(f"{m:#010x} . {vip} . {p} . {port} : {dip} . {bport}" for m, vip, p, port, dip, bport, fip in rules if not fip)
    fips = ", ".join(f"{m:#010x} . {vip} . {p} . {port}" for m, vip, p, port, dip, bport, fip in rules if fip)
    muxes = ", ".join(str(m.address) for m in fabric.muxes)
    vips = ", ".join(str(v) for v in svc.vips)

    def elems(s: str) -> str:
        return f" elements = {{ {s} }};" if s else ""

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
        # A VM calling a VIP: its packet leaves through this host and may come back through
        # a MUX to a VM here. Tracked on the way out, the return (same tuple) would match that
        # entry and skip the NAT; so it is tracked, and NATed, only on the way back.
        "  chain raw {",
        "    type filter hook prerouting priority raw; policy accept;",
        f'    iifname "{BRIDGE}" ip daddr @vips notrack',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        "    udp dport 4789 ip saddr != @muxes counter name spoofed_vxlan drop",
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "{dev}" dnat ip to meta mark . ip daddr . meta l4proto . th dport map @nat_rules',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f'    iifname "{dev}" ct status dnat accept',
        f'    iifname "{dev}" meta mark . ip daddr . meta l4proto . th dport @floating_rules accept',
        f'    iifname "{dev}" counter name no_rule drop',
        "  }",
        "}",
    ]) + "\n"
