"""What a MUX's kernel should hold, computed from a Snapshot. Pure: no netlink, no nft.

Per packet (all in the kernel, see docs/datapath.md):
  raw:        a bare SYN to a VIP is not tracked (this MUX never sees the SYN-ACK, so
              conntrack would call the next ACK invalid); the flow is pinned from its
              first non-SYN packet on.
  prerouting: an internal frontend (a VIP inside the VNet) refuses any source outside the
              VNet first (ilb_not_vnet). A packet of a pinned flow takes its DIP from the
              conntrack mark; otherwise (VIP, proto, port) picks the rule, jhash(fields)
              mod M picks a Maglev bucket, and the bucket's DIP becomes the packet mark (= the
              DIP as a u32).
              The hashed fields are the rule's loadDistribution: Default the 5-tuple,
              SourceIP (client, VIP), SourceIPProtocol (client, VIP, protocol).
              Stateless, no hash and no conntrack: an inbound NAT rule's port goes to its one
              backend, and return traffic of outbound SNAT to the backend whose port range
              holds the destination port (any MUX can take any packet of it).
  routing:    `ip rule fwmark DIP lookup DIP` -> `default via DIP dev vxlan<VNI> onlink`;
              the DIP's neighbour entry holds its overlay MAC and the VXLAN FDB maps that
              MAC to the DIP's host: the host learns the chosen DIP from the inner MAC.
  postrouting: a rule with sourceNat (seed 004's second design, not DSR): the client becomes
              this MUX's own address, so the backend answers the MUX, which un-NATs the reply
              to the client. Such a flow is tracked from its SYN, and lives on this MUX only.
  proxyProtocol V2 (seed 004's fix for the client address source NAT loses): the client's
              connection is sent to HAProxy on this MUX (dstnat, proxy_listen), which opens
              its own to the VIP, PROXY v2 header first (mux/proxy.py); that connection takes
              its DIP from the same Maglev table in the output path (chain reroute).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field

from muxlab.datapath import maglev, nfttable
from muxlab.datapath.conventions import FASTPATH_NFLOG_GROUP, MUX_TABLE, ct_timeout_object, dip_mac, dip_mark, vxlan_ifname
from muxlab.fabric.lab import Lab
from muxlab.lb.facts import Backend, Facts, Rule

from . import proxy

FASTPATH_LOGGED = "fastpath_logged"   # handshakes of VMs' connections handed to the agent for a redirect
SOURCE_NAT_FLOWS = "source_nat_flows"  # flows of sourceNat rules this MUX source-NATed to itself

HASH_FIELDS = {
    "Default": "ip saddr . th sport . ip daddr . th dport",
    "SourceIP": "ip saddr . ip daddr",
    "SourceIPProtocol": "ip saddr . ip daddr . meta l4proto",
}


@dataclass(frozen=True)
class Health:
    """What decides rotation, besides the load balancers: probe results reported by host
    agents, hosts whose agent went silent, and whether this MUX is drained."""
    probes: dict[tuple[str, str], bool] = field(default_factory=dict, hash=False)   # (vm, probe key) -> up
    dead_hosts: frozenset[str] = frozenset()
    drained: bool = False


def in_rotation(fabric: Lab, health: Health, rule: Rule, b: Backend) -> bool:
    """May this backend get new flows of this rule? adminState Down: never; a dead host:
    never; adminState Up: yes whatever the probe says; else the probe decides (no probe: yes)."""
    if b.admin == "Down" or fabric.vm(b.vm).host in health.dead_hosts:
        return False
    if b.admin == "Up" or rule.probe is None:
        return True
    return health.probes.get((b.vm, rule.probe.key), True)


@dataclass(frozen=True)
class RuleTable:
    """A rule and the Maglev table this MUX hashes its new flows into, given the health."""
    rule: Rule
    size: int
    table: tuple[str | None, ...]     # Maglev table of VM names (None: no backend in rotation)
    # Named by what decides its contents besides health: the table size, the pool's members
    # (with their adminState) and the probe. Rules alike in these share one nft map, however
    # many VIPs and ports use it, and a probe flap rewrites that map's moved buckets in place.
    table_name: str = ""

    @property
    def chain(self) -> str:
        """The chain that hashes into the table: one per (hashed fields, table)."""
        return f"pick_{self.rule.distribution.lower()}_{self.table_name[7:]}"


def rule_tables(fabric: Lab, facts: Facts, health: Health) -> list[RuleTable]:
    out, computed = [], {}
    for rule in facts.rules:
        # Size from the whole pool, not the healthy part: a table that keeps its size only
        # moves the buckets of the backends that left.
        size = fabric.effective_table_size(len(rule.backends))
        identity = (size, tuple(sorted((b.vm, b.admin) for b in rule.backends)),
                    None if rule.probe is None else (rule.probe.key, "AllProbedUp") if rule.probe.all_down_is_up
                    else rule.probe.key)
        if identity not in computed:   # a table depends on these and health alone: compute it once
            names = sorted(b.vm for b in rule.backends if in_rotation(fabric, health, rule, b))
            if not names and rule.probe and rule.probe.all_down_is_up:
                # noHealthyBackendsBehavior AllProbedUp: the probe has no say when it says no to all
                names = sorted(b.vm for b in rule.backends if in_rotation(fabric, health, dataclasses.replace(rule, probe=None), b))
            computed[identity] = (maglev_table(tuple(names), size),
                                  "maglev_" + hashlib.sha1(repr(identity).encode()).hexdigest()[:12])
        table, name = computed[identity]
        out.append(RuleTable(rule, size, table, name))
    return out


# A flap computes the table without the failed backend, then the healthy one again: both stay
# cached, so a backend's return (and every other MUX step) costs a lookup, not a recompute.
@functools.lru_cache(maxsize=32)
def maglev_table(names: tuple[str, ...], size: int) -> tuple[str | None, ...]:
    return tuple(maglev.lookup_table(list(names), size))


@functools.lru_cache(maxsize=32)
def bucket_elements(table: tuple[str | None, ...], marks: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """A Maglev map's elements, bucket -> DIP mark (a bucket with no backend has none).
    Cached: at 65537 buckets building them is most of a MUX's work for a change."""
    mark = dict(marks)
    return {str(i): mark[vm] for i, vm in enumerate(table) if vm}


def announceable_vips(tables: list[RuleTable], health: Health, facts: Facts = Facts()) -> list[str]:
    """VIPs this MUX should announce: not drained, and some rule has a backend in rotation,
    or the VIP carries inbound NAT ports or outbound SNAT (their return traffic)."""
    if health.drained:
        return []
    live = {s.rule.vip for s in tables if any(s.table)}
    live |= {n.vip for n in facts.nat_ports} | {s.vip for s in facts.snat}
    return [f"{v}/32" for v in sorted(live)]


def idle_classes(tables: list[RuleTable]) -> dict[tuple[str, int], list[str]]:
    """(protocol, idle seconds) -> the (VIP . protocol . port) keys of rules with that idle timeout."""
    out: dict[tuple[str, int], list[str]] = {}
    for s in tables:
        out.setdefault((s.rule.protocol, s.rule.idle_s), []).append(f"{s.rule.vip} . {s.rule.protocol} . {s.rule.port}")
    return dict(sorted(out.items()))


def ruleset(fabric: Lab, facts: Facts, tables: list[RuleTable], remedies: frozenset[str] | None = None,
            address: str | None = None) -> nfttable.Table:
    """The MUX's whole nft table as data: the agent loads it whole once, then only its
    differences (muxlab.datapath.nfttable.update). `address`: this MUX's own, the source of
    sourceNat rules' flows (None: the first MUX's, for a table to look at)."""
    address = address or str(fabric.muxes[0].address)
    listen = proxy.listen_ports(facts)   # the one place rule -> HAProxy port is decided
    remedies = fabric.mtu_remedies if remedies is None else remedies
    classes = idle_classes(tables)
    objects = {f"counter {c}": f"counter {c} {{}}" for c in (
        "vip_packets", "no_service", "no_backend", "nat_port_packets", "snat_return_packets", "icmp_frag_needed_suppressed",
        "ilb_not_vnet", FASTPATH_LOGGED, SOURCE_NAT_FLOWS)}
    objects |= {f"ct timeout idle_{proto}_{idle}": ct_timeout_object(proto, idle).strip() for proto, idle in classes}
    sets = {
        "vips": nfttable.Set("set", "type ipv4_addr;", {str(v): None for v in facts.vips}),
        "nat_ports": nfttable.Set("map", "type ipv4_addr . inet_proto . inet_service : mark;",
                                  {f"{n.vip} . {n.protocol} . {n.port}": f"{dip_mark(n.ip):#010x}" for n in facts.nat_ports}),
        "snat_returns": nfttable.Set("map", "type ipv4_addr . inet_proto . inet_service : mark; flags interval;",
                                     {f"{s.vip} . {p} . {s.lo}-{s.hi}": f"{dip_mark(s.ip):#010x}" for s in facts.snat for p in s.protocols}),
    }
    # (VIP, proto, port) of the rules this MUX source-NATs (sourceNat): tracked from their SYN
    sets["source_nat_rules"] = nfttable.Set("set", "type ipv4_addr . inet_proto . inet_service;", dict.fromkeys(
        f"{s.rule.vip} . {s.rule.protocol} . {s.rule.port}" for s in tables if s.rule.source_nat))
    # proxyProtocol rules: their clients go to HAProxy on this MUX's address, one port per rule
    proxied = proxy.proxied(facts)
    sets["proxy_rules"] = nfttable.Set("set", "type ipv4_addr . inet_proto . inet_service;", dict.fromkeys(
        f"{r.vip} . {r.protocol} . {r.port}" for r in proxied))
    sets["proxy_listen"] = nfttable.Set("map", "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;",
                                        {f"{r.vip} . {r.protocol} . {r.port}": f"{address} . {listen[r.key]}" for r in proxied})
    sets |= {f"idle_{proto}_{idle}_rules": nfttable.Set("set", "type ipv4_addr . inet_proto . inet_service;", dict.fromkeys(keys))
             for (proto, idle), keys in classes.items()}
    sets["services"] = nfttable.Set("map", "type ipv4_addr . inet_proto . inet_service : verdict;",
                                    {f"{s.rule.vip} . {s.rule.protocol} . {s.rule.port}": f"goto {s.chain}" for s in tables})
    marks = tuple((vm.name, f"{dip_mark(vm.ip):#010x}") for vm in fabric.vms)
    for s in {s.table_name: s for s in tables}.values():   # a shared table is written once
        # a bucket with no backend in rotation has no element: the lookup misses, the packet drops
        sets[s.table_name] = nfttable.Set("map", "typeof numgen inc mod 2 : meta mark;", bucket_elements(s.table, marks))
    chains = {
        "raw": nfttable.Chain("type filter hook prerouting priority raw; policy accept;", (
            "ip daddr != @vips return",
            # stateless paths keep no state
            "ip daddr . meta l4proto . th dport @nat_ports notrack return",
            "ip daddr . meta l4proto . th dport @snat_returns notrack return",
            # a source-NATed or proxied flow must be tracked from its first packet (NAT binds there)
            "ip daddr . meta l4proto . th dport @source_nat_rules return",
            "ip daddr . meta l4proto . th dport @proxy_rules return",
            "tcp flags & (syn | ack) == syn notrack return")),
        "prerouting": nfttable.Chain("type filter hook prerouting priority mangle; policy accept;", (
            "ip daddr != @vips return",
            "counter name vip_packets",
            # an internal frontend (a VIP inside the VNet) serves the VNet only, as Azure's
            # internal load balancer: any other source is refused before any lookup
            f"ip daddr {fabric.vnet} ip saddr != {fabric.vnet} counter name ilb_not_vnet drop",
            # a timeout policy attaches to a new, unconfirmed entry: after conntrack (priority -200),
            # so here and never in the raw chain, where the packet has no entry yet
            *(f'ip daddr . meta l4proto . th dport @idle_{proto}_{idle}_rules ct timeout set "idle_{proto}_{idle}"'
              for proto, idle in classes),
            "meta mark set ip daddr . meta l4proto . th dport map @nat_ports counter name nat_port_packets accept",
            "meta mark set ip daddr . meta l4proto . th dport map @snat_returns counter name snat_return_packets accept",
            "ct mark != 0 meta mark set ct mark accept",
            # a proxied rule's client talks to HAProxy here (proxy_dnat), not to a DIP
            "ip daddr . meta l4proto . th dport @proxy_rules accept",
            "ip daddr . meta l4proto . th dport vmap @services",
            "counter name no_service drop")),
        "proxy_dnat": nfttable.Chain("type nat hook prerouting priority dstnat; policy accept;", (
            "ip daddr . meta l4proto . th dport @proxy_rules dnat ip to ip daddr . meta l4proto . th dport map @proxy_listen",)),
        # HAProxy's own connection to the VIP picks its DIP as a client's would (mark, then
        # the DIP's policy route); mux.agent routes its first lookup past the VIP blackholes
        "reroute": nfttable.Chain("type route hook output priority mangle; policy accept;", (
            "ip daddr != @vips return",
            "ct mark != 0 meta mark set ct mark accept",
            "ip daddr . meta l4proto . th dport @proxy_rules ip daddr . meta l4proto . th dport vmap @services")),
    }
    for s in tables:
        chains[s.chain] = nfttable.Chain("", (
            f"meta mark set jhash {HASH_FIELDS[s.rule.distribution]} mod {s.size} seed {fabric.hash_seed:#x} "
            f"map @{s.table_name} ct mark set meta mark accept",
            "counter name no_backend drop"))
    mss = fabric.overlay_mss
    # a SYN may not promise more than the overlay carries (the SYN-ACK's clamp is on the host)
    clamp = (f'oifname "{vxlan_ifname(fabric.vni)}" tcp flags syn tcp option maxseg size > {mss} '
             f'tcp option maxseg size set {mss}',) if "mss-clamp" in remedies else ()
    # Fastpath (mux/fastpath.py): the first packet this MUX tracks of a VM's TCP connection is
    # the one completing its handshake (a bare SYN is not tracked): log it, with the chosen
    # DIP as its mark, for the agent to redirect. A VM's source is its DIP (an internal
    # frontend) or a port of its outbound SNAT range (a public one).
    dev = vxlan_ifname(fabric.vni)
    log = f"counter name {FASTPATH_LOGGED} log group {FASTPATH_NFLOG_GROUP} queue-threshold 1"
    # (a source-NATed flow stays on its MUX: the MUX is its other end)
    own = "ip daddr . meta l4proto . th dport != @source_nat_rules"
    fastpath = (f'oifname "{dev}" ct state new meta l4proto tcp ip saddr {fabric.vnet} {own} {log}',
                f'oifname "{dev}" ct state new meta l4proto tcp ip saddr . meta l4proto . th sport @snat_returns {own} {log}',
                ) if fabric.fastpath else ()
    chains["forward"] = nfttable.Chain("type filter hook forward priority filter; policy accept;", clamp + fastpath)
    chains["postrouting"] = nfttable.Chain("type nat hook postrouting priority srcnat; policy accept;", (
        f'oifname "{dev}" ip daddr . meta l4proto . th dport @source_nat_rules counter name {SOURCE_NAT_FLOWS} '
        f"snat ip to {address}",))
    # the black hole of seed 004: the too-big packet dies here and nobody tells the client
    black_hole = () if "icmp" in remedies else (
        "icmp type destination-unreachable icmp code frag-needed counter name icmp_frag_needed_suppressed drop",)
    chains["output"] = nfttable.Chain("type filter hook output priority filter; policy accept;", black_hole)
    return nfttable.Table("ip", MUX_TABLE, objects, sets, chains)


@dataclass(frozen=True)
class DipRoute:
    """Policy route to one DIP through the overlay."""
    mark: int
    dip: str
    mac: str
    host_vtep: str


def dip_routes(fabric: Lab) -> list[DipRoute]:
    """A route to every VM, pooled or not: a DIP that leaves a pool keeps serving the flows
    its conntrack marks still pin to it."""
    return [DipRoute(dip_mark(vm.ip), str(vm.ip), dip_mac(vm.ip), str(fabric.host(vm.host).address)) for vm in fabric.vms]
