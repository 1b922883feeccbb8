"""Render a validated Lab into the files a deployment needs. Pure: strings in, strings out.

- muxlab.clab.yml: the containerlab topology (nodes, groups, links);
- configs/edge/frr.conf: the edge router (BGP to every MUX, ECMP, blackhole for non-lab space);
- configs/<mux>/exabgp.conf: one BGP speaker per MUX;
- node_plan(): what each lab container configures on its interfaces at start.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .. import versions
from ..model.fabric import Lab

GENERATED = "# Generated from lab.yml by `muxlab render`; edit lab.yml and re-render, not this file.\n"

# Links that carry VXLAN run jumbo frames (lab.yml mtu.underlay, 9000 unless a lab shows the
# MTU problem) so an encapsulated 1500-byte packet never fragments; links to clients and VMs
# are ordinary 1500-byte Ethernet (docs/datapath.md).
ACCESS_MTU = 1500


@dataclass(frozen=True)
class Link:
    a: str
    a_if: str
    b: str
    b_if: str
    mtu: int


def links(lab: Lab) -> list[Link]:
    """Every point-to-point link; the edge numbers its ports MUXes, hosts, clients, in model order."""
    out = []
    port = 1
    for m in lab.muxes:
        out.append(Link("edge", f"eth{port}", m.name, "eth1", lab.underlay_mtu))
        port += 1
    for h in lab.hosts:
        out.append(Link("edge", f"eth{port}", h.name, "eth1", lab.underlay_mtu))
        port += 1
    for c in lab.clients:
        out.append(Link("edge", f"eth{port}", c.name, "eth1", ACCESS_MTU))
        port += 1
    for h in lab.hosts:
        vms = lab.vms_on(h.name)
        for i, vm in enumerate(vms, start=2):
            out.append(Link(h.name, f"eth{i}", vm.name, "eth1", ACCESS_MTU))
        for i, vm in enumerate([v for v in vms if v.nic2], start=2 + len(vms)):
            out.append(Link(h.name, f"eth{i}", vm.name, "eth2", ACCESS_MTU))
    return out


def edge_port(lab: Lab, node: str) -> str:
    return next(l.a_if for l in links(lab) if l.a == "edge" and l.b == node)


# ---------------------------------------------------------------- per-node plan


@dataclass
class NodePlan:
    """What a lab container sets up on itself before its role's processes start."""

    name: str
    role: str
    addresses: list[tuple[str, str]] = field(default_factory=list)   # (ifname, cidr)
    default_via: str | None = None                                    # replaces Docker's default route
    default_onlink: bool = False                                      # gateway outside the interface's prefix
    bridge: tuple[str, list[str], str] | None = None                  # (name, ports, cidr) on hosts
    interfaces: list[str] = field(default_factory=list)               # lab ports to wait for
    second_nic: tuple[str, str, str, str] | None = None               # VM: (ifname, address, gateway, DIP)


def node_plan(lab: Lab, name: str) -> NodePlan:
    role = lab.role_of(name)
    plan = NodePlan(name, role)
    ports = sorted({l.b_if for l in links(lab) if l.b == name} | {l.a_if for l in links(lab) if l.a == name},
                   key=lambda s: int(s[3:]))
    plan.interfaces = ports
    if role == "mux":
        m = next(m for m in lab.muxes if m.name == name)
        plan.addresses.append(("eth1", str(m.underlay)))
        plan.default_via = str(m.edge_address)
    elif role == "host":
        h = lab.host(name)
        plan.addresses.append(("eth1", str(h.underlay)))
        plan.default_via = str(h.edge_address)
        plan.bridge = ("br0", [p for p in ports if p != "eth1"], str(h.vm_gateway))
    elif role == "vm":
        # A /32 and an on-link gateway, as a cloud vSwitch does it: every packet of a VM,
        # even to its neighbour on the same host, is routed by the host (and so passes its
        # NAT); VMs are never bridged to each other.
        vm = lab.vm(name)
        h = lab.host(vm.host)
        plan.addresses.append(("eth1", f"{vm.ip}/32"))
        plan.default_onlink = True
        plan.default_via = str(h.vm_gateway.ip)
        if vm.nic2:
            plan.second_nic = ("eth2", str(vm.nic2), str(h.vm_gateway.ip), str(vm.ip))
    elif role == "client":
        c = next(c for c in lab.clients if c.name == name)
        plan.addresses.append(("eth1", str(c.address)))
        plan.default_via = str(c.gateway.ip)
    return plan


# ---------------------------------------------------------------- edge router (FRR)


def render_frr(lab: Lab) -> str:
    lines = [GENERATED.replace("# ", "! ", 1).rstrip(), "frr defaults datacenter", "hostname edge",
             "log file /var/log/frr/frr.log informational", "service integrated-vtysh-config",
             "! ECMP must follow BGP's multipath set after a link flap, so no kernel nexthop groups.",
             "no zebra nexthop kernel enable", "!"]
    for l in links(lab):
        if l.a != "edge":
            continue
        if lab.role_of(l.b) == "mux":
            m = next(m for m in lab.muxes if m.name == l.b)
            addr = f"{m.edge_address}/{m.underlay.network.prefixlen}"
        elif lab.role_of(l.b) == "host":
            h = lab.host(l.b)
            addr = f"{h.edge_address}/{h.underlay.network.prefixlen}"
        else:
            c = next(c for c in lab.clients if c.name == l.b)
            addr = str(c.gateway)
        lines += [f"interface {l.a_if}", f" description {l.b}", f" ip address {addr}", "exit", "!"]
    lines += ["! BFD with every MUX: a frozen MUX leaves ECMP in interval x multiplier", "bfd", " profile mux",
              f"  detect-multiplier {lab.bfd_multiplier}", f"  receive-interval {lab.bfd_interval_ms}",
              f"  transmit-interval {lab.bfd_interval_ms}", " exit", "exit", "!"]
    lines.append("! Lab space is reachable; everything else is dropped here, never sent to the management network.")
    for h in lab.hosts:
        lines.append(f"ip route {h.vm_subnet} {h.address}")
    lines += ["ip route 0.0.0.0/0 blackhole", "!"]
    lines += [
        f"router bgp {lab.edge_asn}",
        f" bgp router-id {lab.router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp default ipv4-unicast",
        " bgp bestpath as-path multipath-relax",
        f" timers bgp {lab.keepalive} {lab.hold_time}",
        " neighbor MUXES peer-group",
        f" neighbor MUXES remote-as {lab.mux_asn}",
        f" neighbor MUXES timers {lab.keepalive} {lab.hold_time}",
        " neighbor MUXES timers connect 1",
        " neighbor MUXES advertisement-interval 0",
        " neighbor MUXES bfd",
        " neighbor MUXES bfd profile mux",
    ]
    for m in lab.muxes:
        lines += [f" neighbor {m.address} peer-group MUXES", f" neighbor {m.address} description {m.name}"]
    lines += [" !", " address-family ipv4 unicast", "  neighbor MUXES activate",
              "  ! learn VIPs from MUXes; announce nothing back",
              "  neighbor MUXES route-map NONE out", "  maximum-paths 64", " exit-address-family",
              "exit", "!", "route-map NONE deny 10", "exit", "!", "line vty", "!"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- MUX BGP speaker (ExaBGP)


def render_exabgp(lab: Lab, mux_name: str) -> str:
    m = next(m for m in lab.muxes if m.name == mux_name)
    return GENERATED + f"""
# The helper announces each VIP /32 with next-hop self while this MUX can serve it,
# and withdraws it otherwise (mux/bgp_helper.py).
process vip-announcer {{
    run /opt/muxlab/bin/python -m mux.bgp_helper;
    encoder text;
}}

neighbor {m.edge_address} {{
    description "edge";
    router-id {m.address};
    local-address {m.address};
    local-as {lab.mux_asn};
    peer-as {lab.edge_asn};
    hold-time {lab.hold_time};
    connect 179;
    family {{
        ipv4 unicast;
    }}
    api {{
        processes [ vip-announcer ];
    }}
}}
"""


# ---------------------------------------------------------------- containerlab topology

CAPS = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]

GROUP_SYSCTLS = {
    # edge: route, hash ECMP on the L4 5-tuple, and accept DSR replies whose source is a
    # VIP arriving from a host (strict reverse-path filtering would drop them: loose mode).
    "edge": {"net.ipv4.ip_forward": 1, "net.ipv4.fib_multipath_hash_policy": 1,
             "net.ipv4.conf.all.rp_filter": 2, "net.ipv4.conf.default.rp_filter": 2},
    # MUX: forward; conntrack sees only client->VIP packets (no replies), so be liberal.
    "mux": {"net.ipv4.ip_forward": 1, "net.netfilter.nf_conntrack_tcp_be_liberal": 1,
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0},
    # host: a router for its VMs. Decapsulated packets arrive on the address-less VXLAN
    # device from any client, and replies leave by the underlay: reverse-path filtering
    # (even loose, which rejects address-less interfaces) cannot apply, so it is off.
    # Its bridge is a plain switch: with Docker's br_netfilter on, bridged frames pass the IP
    # hooks, and a hairpinned reply un-NATed to the VM it came from would have to leave by
    # the port it arrived on, which a bridge never does (hairpinSnat, docs/scenarios.md).
    "host": {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
             "net.bridge.bridge-nf-call-iptables": 0},
    "vm": {},
    "client": {},
    "manager": {},
}

# The management network: a Docker bridge per lab that carries only control traffic
# (agents <-> managers' OVSDB, the operator <-> the managers' API). `muxlab up` picks a free
# /24 per lab and passes it in these variables; plain `containerlab deploy` gets the defaults.
MGMT_DEFAULTS = {"MUXLAB_MGMT_NET": "muxlab-mgmt", "MUXLAB_MGMT_SUBNET": "172.30.1.0/24",
                 "MUXLAB_MGMT_RANGE": "172.30.1.0/25", "MUXLAB_MGMT_PREFIX": "172.30.1"}


def env(var: str) -> str:
    return "${%s:=%s}" % (var, MGMT_DEFAULTS[var])


def render_topology(lab: Lab) -> str:
    out = [GENERATED.rstrip(), "# Read docs/addressing.md for the plan; `muxlab up` deploys it.", f"name: {lab.name}", "",
           "# Control traffic only: agents reach the managers' OVSDB, the operator their API (port 8080).",
           "mgmt:", f"  network: {env('MUXLAB_MGMT_NET')}", f"  ipv4-subnet: {env('MUXLAB_MGMT_SUBNET')}",
           "  # dynamic addresses from the lower half; managers are pinned at .201, .202, ...",
           f"  ipv4-range: {env('MUXLAB_MGMT_RANGE')}", "",
           "topology:", "  defaults:", "    kind: linux", f"    image: {versions.NODE_IMAGE}",
           "    # Unprivileged with explicit capabilities: enough for netlink, nftables and FRR.",
           "    privileged: false", "    cap-add: [" + ", ".join(CAPS) + "]",
           "    binds:", "      - lab.yml:/etc/muxlab/lab.yml:ro",
           "    env:", f"      MUXLAB_MGMT_SUBNET: {env('MUXLAB_MGMT_SUBNET')}", "", "  groups:"]
    for group, sysctls in GROUP_SYSCTLS.items():
        out.append(f"    {group}:")
        out.append(f"      labels: {{muxlab-role: {group}}}")
        if sysctls:
            out.append("      sysctls:")
            out += [f"        {k}: {v}" for k, v in sysctls.items()]
    out += ["", "  nodes:", "    edge:", "      group: edge", f"      image: {versions.ROUTER_IMAGE}",
            "      binds:", "        - configs/edge/frr.conf:/etc/frr/frr.conf:ro",
            "        - configs/edge/edge.nft:/etc/muxlab/edge.nft:ro"]
    for i, name in enumerate(lab.managers, start=1):
        out += [f"    {name}:", "      group: manager", f"      mgmt-ipv4: {env('MUXLAB_MGMT_PREFIX')}.{200 + i}",
                "      binds:", "        - lab.yml:/etc/muxlab/lab.yml:ro",
                "        # the load balancers a new cluster starts with (manager1 stores them once)",
                "        - loadbalancers.yml:/etc/muxlab/loadbalancers.yml:ro"]
    for m in lab.muxes:
        out += [f"    {m.name}:", "      group: mux", "      binds:",
                f"        - configs/{m.name}/exabgp.conf:/etc/exabgp/exabgp.conf:ro"]
    for group, nodes in (("host", lab.hosts), ("vm", lab.vms), ("client", lab.clients)):
        for n in nodes:
            out += [f"    {n.name}:", f"      group: {group}"]
    out += ["", "  links:"]
    for l in links(lab):
        out.append(f'    - endpoints: ["{l.a}:{l.a_if}", "{l.b}:{l.b_if}"]' + (f"\n      mtu: {l.mtu}" if l.mtu else ""))
    return "\n".join(out) + "\n"


def render_edge_nft(lab: Lab) -> str:
    """Ingress filtering on the edge's internet ports (BCP 38): nothing from the internet may
    claim a lab-internal source (underlay, VM subnets) or a public VIP (the whole range:
    VIPs come and go with the load balancers, this file is static). DSR over tunnels cannot run
    strict reverse-path filtering inside the lab (seed 004); this is the filter it can keep."""
    internet = ", ".join(f'"{edge_port(lab, c.name)}"' for c in lab.clients)
    internal = [m.underlay.network for m in lab.muxes] + [h.underlay.network for h in lab.hosts] + [h.vm_subnet for h in lab.hosts]
    internal_txt = ", ".join(str(n) for n in ipaddress.collapse_addresses(internal))
    return GENERATED + "\n".join([
        "table ip muxlab_edge", "delete table ip muxlab_edge", "table ip muxlab_edge {",
        "  counter spoofed_from_internet {}",
        f"  set internet_ports {{ type ifname; elements = {{ {internet} }}; }}",
        f"  set internal {{ type ipv4_addr; flags interval; elements = {{ {internal_txt} }}; }}",
        f"  set vips {{ type ipv4_addr; flags interval; elements = {{ {lab.public_vips} }}; }}",
        "  chain forward {", "    type filter hook forward priority filter; policy accept;",
        "    iifname @internet_ports ip saddr @internal counter name spoofed_from_internet drop",
        "    iifname @internet_ports ip saddr @vips counter name spoofed_from_internet drop",
        "  }", "}", ""])


def render_lab_files(lab: Lab, model_text: str) -> dict[str, str]:
    """All files of a lab folder, by path relative to it."""
    files = {"lab.yml": model_text, "muxlab.clab.yml": render_topology(lab), "configs/edge/frr.conf": render_frr(lab),
             "configs/edge/edge.nft": render_edge_nft(lab)}
    for m in lab.muxes:
        files[f"configs/{m.name}/exabgp.conf"] = render_exabgp(lab, m.name)
    return files
