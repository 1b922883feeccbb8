"""What a MUX's kernel should hold, computed from a Snapshot. Pure: no netlink, no nft.

Per packet (all in the kernel, see docs/datapath.md):
  raw:        a bare SYN to a VIP is not tracked (this MUX never sees the SYN-ACK, so
              conntrack would call the next ACK invalid); the flow is pinned from its
              first non-SYN packet on.
  prerouting: a packet of a pinned flow takes its DIP from the conntrack mark; otherwise
              (VIP, proto, port) picks the service, jhash(5-tuple) mod M picks a Maglev
              bucket, and the bucket's DIP becomes the packet mark (= the DIP as a u32).
  routing:    `ip rule fwmark DIP lookup DIP` -> `default via DIP dev vxlan<VNI> onlink`;
              the DIP's neighbour entry holds its overlay MAC and the VXLAN FDB maps that
              MAC to the DIP's host: the host learns the chosen DIP from the inner MAC.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from muxlab import maglev
from muxlab.model import Lab, Rule, Vip
from muxlab.state import Snapshot

TABLE = "muxlab_mux"
RULE_PRIORITY = 100  # ip rule preference of our fwmark rules (both MUX and host)


def dip_mark(ip: ipaddress.IPv4Address | str) -> int:
    return int(ipaddress.IPv4Address(ip))


def vxlan_ifname(lab: Lab) -> str:
    return f"vxlan{lab.vni}"


@dataclass(frozen=True)
class Service:
    vip: Vip
    rule: Rule
    size: int
    table: tuple[str | None, ...]     # Maglev table of VM names (None: no healthy backend)

    @property
    def chain(self) -> str:
        return f"svc_{self.vip.name}_{self.rule.name}".replace("-", "_")


def healthy_backends(snap: Snapshot, rule: Rule) -> list[str]:
    return [vm for vm in snap.lab.pools[rule.pool] if snap.healthy(vm, rule.probe)]


def services(snap: Snapshot) -> list[Service]:
    out = []
    for vip in snap.lab.vips:
        for rule in vip.rules:
            # Size from the whole pool, not the healthy part: a table that keeps its size
            # only moves the buckets of the backends that left.
            size = snap.lab.effective_table_size(rule.pool)
            out.append(Service(vip, rule, size, tuple(maglev.lookup_table(healthy_backends(snap, rule), size))))
    return out


def announceable_vips(snap: Snapshot, mux: str, svcs: list[Service] | None = None) -> list[str]:
    """VIPs this MUX should announce: not drained, and some rule has a healthy DIP.
    (`svcs`: the snapshot's services, when the caller has computed them already.)"""
    if mux in snap.drained:
        return []
    live = {s.vip.name for s in (svcs if svcs is not None else services(snap)) if any(s.table)}
    return [f"{v.address}/32" for v in snap.lab.vips if v.name in live]


def render_nft(snap: Snapshot, svcs: list[Service] | None = None) -> str:
    lab = snap.lab
    svcs = svcs if svcs is not None else services(snap)
    vips = ", ".join(str(v.address) for v in lab.vips)
    lines = [
        # create-then-delete-then-define in one transaction: an atomic replace, so a
        # re-apply never leaves a window without rules (and conntrack keeps its marks)
        f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{",
        "  counter vip_packets {}", "  counter no_service {}", "  counter no_backend {}",
        f"  set vips {{ type ipv4_addr; elements = {{ {vips} }}; }}" if vips else "  set vips { type ipv4_addr; }",
    ]
    if svcs:
        entries = ", ".join(f"{s.vip.address} . {s.rule.protocol} . {s.rule.port} : goto {s.chain}" for s in svcs)
        lines.append(f"  map services {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {entries} }}; }}")
    for s in svcs:
        elems = ", ".join(f"{i} : {dip_mark(lab.vm(vm).ip):#010x}" for i, vm in enumerate(s.table) if vm)
        body = f" elements = {{ {elems} }};" if elems else ""
        lines.append(f"  map {s.chain}_table {{ typeof numgen inc mod 2 : meta mark;{body} }}")
    lines += [
        "  chain raw {", "    type filter hook prerouting priority raw; policy accept;",
        "    ip daddr @vips tcp flags & (syn | ack) == syn notrack", "  }",
        "  chain prerouting {", "    type filter hook prerouting priority mangle; policy accept;",
        "    ip daddr != @vips return",
        "    counter name vip_packets",
        "    ct mark != 0 meta mark set ct mark accept",
    ]
    if svcs:
        lines.append("    ip daddr . meta l4proto . th dport vmap @services")
    lines += ["    counter name no_service drop", "  }"]
    for s in svcs:
        lines += [
            f"  chain {s.chain} {{",
            f"    meta mark set jhash ip saddr . th sport . ip daddr . th dport mod {s.size} seed {lab.hash_seed:#x} map @{s.chain}_table ct mark set meta mark accept",
            "    counter name no_backend drop", "  }",
        ]
    lines += [
        "  chain forward {", "    type filter hook forward priority filter; policy accept;",
        # belt and braces: the underlay is jumbo, but never let a SYN promise more than
        # the overlay carries
        f'    oifname "{vxlan_ifname(lab)}" tcp flags syn tcp option maxseg size set rt mtu', "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DipRoute:
    """Policy route to one DIP through the overlay."""
    mark: int
    dip: str
    mac: str
    host_vtep: str


def dip_routes(lab: Lab) -> list[DipRoute]:
    """A route to every VM, pooled or not: a DIP that leaves a pool keeps serving the flows
    its conntrack marks still pin to it."""
    return [DipRoute(dip_mark(vm.ip), str(vm.ip), vm.mac, str(lab.host(vm.host).address)) for vm in lab.vms]
