"""Checks across fields, load balancers and the fabric, and public IP allocation. Pure.

`check()` returns every problem as (field path, value, message); the manager applies nothing
while the list is not empty. Paths start at the load balancer's name (`web.properties...`).
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from ..fabric.lab import Lab
from .azure import LoadBalancer, PublicIPAddress, Ref

Problem = tuple[str, Any, str]

CHILD_KINDS = {
    "frontendIPConfigurations": "frontend",
    "backendAddressPools": "backend pool",
    "probes": "probe",
    "loadBalancingRules": "load-balancing rule",
    "inboundNatRules": "inbound NAT rule",
    "outboundRules": "outbound rule",
}

# Azure's default SNAT ports per backend by pool size (used when allocatedOutboundPorts is 0).
DEFAULT_SNAT_PORTS = ((50, 1024), (100, 512), (200, 256), (400, 128), (800, 64), (1000, 32))


def default_outbound_ports(pool_size: int) -> int:
    for upto, ports in DEFAULT_SNAT_PORTS:
        if pool_size <= upto:
            return ports
    return 0


def protocols(p: str) -> tuple[str, ...]:
    return ("tcp", "udp") if p == "All" else (p.lower(),)


def _names(lb: LoadBalancer, kind: str) -> list[str]:
    return [c.name for c in getattr(lb.properties, kind)]


def check(lbs: dict[str, LoadBalancer], fabric: Lab, previous: dict[str, LoadBalancer] | None = None,
          changed: Iterable[str] = ()) -> list[Problem]:
    """Everything wrong with this complete set of load balancers on this fabric. `previous`
    is what the manager holds now (Azure refuses some changes to existing rules); the
    `changed` ones are checked last, so a clash is reported where it was introduced."""
    problems: list[Problem] = []
    previous = previous or {}
    vip_owner: dict[ipaddress.IPv4Address, str] = {}
    dip_use: dict[tuple[str, str, int], tuple[str, bool]] = {}   # (vm, proto, backend port) -> (rule path, floating)
    changed = set(changed)
    for lb_name in sorted(lbs, key=lambda n: (n in changed, n)):
        problems += _check_one(lb_name, lbs[lb_name], fabric, previous.get(lb_name), vip_owner, dip_use)
    return problems


def _check_one(name: str, lb: LoadBalancer, fabric: Lab, before: LoadBalancer | None,
               vip_owner: dict, dip_use: dict) -> list[Problem]:
    bad: list[Problem] = []
    P = lb.properties
    root = f"{name}.properties"

    # names unique per kind
    for kind in CHILD_KINDS:
        seen: set[str] = set()
        for i, n in enumerate(_names(lb, kind)):
            if n in seen:
                bad.append((f"{root}.{kind}[{i}].name", n, f"another {CHILD_KINDS[kind]} of this load balancer has this name"))
            seen.add(n)

    def resolve(ref: Ref | None, kind: str, path: str) -> int | None:
        """Index of the child a reference names, or None after recording why not."""
        if ref is None:
            return None
        if ref.kind != kind:
            bad.append((f"{path}.id", ref.id, f"must reference {kind}/NAME (found {ref.kind}/{ref.name})"))
            return None
        names = _names(lb, kind)
        if ref.name not in names:
            bad.append((f"{path}.id", ref.id, f"no {CHILD_KINDS[kind]} named {ref.name!r} in this load balancer "
                                              f"({kind}: {', '.join(names) or 'none'})"))
            return None
        return names.index(ref.name)

    # frontends
    for i, fe in enumerate(P.frontendIPConfigurations):
        p = f"{root}.frontendIPConfigurations[{i}].properties"
        addr = fe.address
        if fe.internal:
            where = f"{p}.privateIPAddress"
            if addr is None:
                bad.append((where, None, "no address: the manager allocates one for a frontend given only a subnet"))
                continue
            if addr not in fabric.vnet:
                bad.append((where, str(addr), f"an internal frontend comes from the VNet {fabric.vnet}"))
                continue
            clash = next((h for h in fabric.hosts if addr in h.vm_subnet), None)
            if clash is not None:
                bad.append((where, str(addr), f"is inside {clash.name}'s VM subnet {clash.vm_subnet}: pick a VNet "
                                              "address outside every VM subnet"))
                continue
            # a host's secondary subnet may hold one (seed 000's fix), on an address no NIC uses
            used = next((f"{v.name}'s second NIC" for v in fabric.vms if v.nic2 == addr), None) or next(
                (f"{h.name}'s secondary gateway" for h in fabric.hosts if h.secondary_gateway and addr == h.secondary_gateway.ip), None)
            net = next((n for h in fabric.hosts for n in h.subnets if addr in n), None)
            if used or (net is not None and addr in (net.network_address, net.broadcast_address)):
                bad.append((where, str(addr), f"is {used or 'not a usable address of ' + str(net)}: pick a free address"))
                continue
        else:
            where = f"{p}.publicIPAddress.properties.ipAddress"
            if addr is None:
                bad.append((where, None, "no address: the manager allocates one for a publicIPAddress given by id"))
                continue
            if addr not in fabric.public_vips or addr in (fabric.public_vips.network_address, fabric.public_vips.broadcast_address):
                bad.append((where, str(addr), f"a public frontend comes from the lab's public range {fabric.public_vips}"))
                continue
        if addr in vip_owner:
            bad.append((where, str(addr), f"already used by {vip_owner[addr]}"))
        else:
            vip_owner[addr] = f"{name}.frontendIPConfigurations[{i}]"

    # pools: every backend is a VM of the fabric, once
    pool_vms: dict[int, list[str]] = {}
    for i, pool in enumerate(P.backendAddressPools):
        members: list[str] = []
        for j, ba in enumerate(pool.properties.loadBalancerBackendAddresses):
            path = f"{root}.backendAddressPools[{i}].properties.loadBalancerBackendAddresses[{j}].properties.ipAddress"
            vm = fabric.vm_by_ip(ba.properties.ipAddress)
            if vm is None:
                bad.append((path, str(ba.properties.ipAddress), "is no VM of the lab (VMs: "
                            + ", ".join(f"{v.name} {v.ip}" for v in fabric.vms) + ")"))
            elif vm.name in members:
                bad.append((path, str(ba.properties.ipAddress), f"{vm.name} is already in this pool"))
            else:
                members.append(vm.name)
        pool_vms[i] = members

    # frontend ports taken per (frontend, protocol): rules, then NAT rules
    taken: dict[tuple[int, str, int], str] = {}

    def claim(fe: int, proto: str, port: int, path: str, what: str) -> None:
        key = (fe, proto, port)
        if key in taken:
            bad.append((path, port, f"{proto}/{port} on frontend {P.frontendIPConfigurations[fe].name} is already "
                                    f"taken by {taken[key]}"))
        else:
            taken[key] = what

    old_rules = {r.name: r for r in before.properties.loadBalancingRules} if before else {}
    for i, rule in enumerate(P.loadBalancingRules):
        rp = f"{root}.loadBalancingRules[{i}].properties"
        r = rule.properties
        fe = resolve(r.frontendIPConfiguration, "frontendIPConfigurations", f"{rp}.frontendIPConfiguration")
        pool_path = f"{rp}.backendAddressPool" if r.backendAddressPool else f"{rp}.backendAddressPools[0]"
        pool = resolve(r.pool, "backendAddressPools", pool_path)
        resolve(r.probe, "probes", f"{rp}.probe")
        if fe is not None:
            for proto in protocols(r.protocol):
                claim(fe, proto, r.frontendPort, f"{rp}.frontendPort", f"{name}.loadBalancingRules[{i}]")
        old = old_rules.get(rule.name)
        if old is not None and old.properties.enableFloatingIP != r.enableFloatingIP:
            bad.append((f"{rp}.enableFloatingIP", r.enableFloatingIP,
                        f"cannot change on an existing rule (it is {old.properties.enableFloatingIP}); "
                        "delete the rule and create it again, as Azure requires"))
        if pool is not None:
            for vm in pool_vms.get(pool, []):
                for proto in protocols(r.protocol):
                    key = (vm, proto, r.backendPort)
                    prev = dip_use.get(key)
                    if prev and prev[1] != r.enableFloatingIP:
                        bad.append((f"{rp}.enableFloatingIP", r.enableFloatingIP,
                                    f"{vm} {proto}/{r.backendPort} is also the backend of {prev[0]} with "
                                    f"enableFloatingIP={prev[1]}: the host could not tell the two apart"))
                    dip_use.setdefault(key, (f"{name}.loadBalancingRules[{i}]", r.enableFloatingIP))

    for i, nat in enumerate(P.inboundNatRules):
        rp = f"{root}.inboundNatRules[{i}].properties"
        n = nat.properties
        fe = resolve(n.frontendIPConfiguration, "frontendIPConfigurations", f"{rp}.frontendIPConfiguration")
        pool = resolve(n.backendAddressPool, "backendAddressPools", f"{rp}.backendAddressPool")
        field = "frontendPort" if n.frontendPort is not None else "frontendPortRangeStart"
        if fe is not None:
            for proto in protocols(n.protocol):
                clash = next((port for port in n.frontend_ports if (fe, proto, port) in taken), None)
                if clash is not None:
                    bad.append((f"{rp}.{field}", clash if field == "frontendPort" else
                                f"{n.frontendPortRangeStart}-{n.frontendPortRangeEnd}",
                                f"{proto}/{clash} on frontend {P.frontendIPConfigurations[fe].name} is already taken by "
                                f"{taken[(fe, proto, clash)]}"))
                else:
                    for port in n.frontend_ports:
                        taken[(fe, proto, port)] = f"{name}.inboundNatRules[{i}]"
        if n.backendIPAddress is not None and fabric.vm_by_ip(n.backendIPAddress) is None:
            bad.append((f"{rp}.backendIPAddress", str(n.backendIPAddress), "is no VM of the lab"))
        if pool is not None and len(pool_vms.get(pool, [])) > len(n.frontend_ports):
            bad.append((f"{rp}.frontendPortRangeEnd", n.frontendPortRangeEnd,
                        f"the range has {len(n.frontend_ports)} ports but pool {P.backendAddressPools[pool].name} has "
                        f"{len(pool_vms[pool])} backends: one port per backend"))

    for i, out in enumerate(P.outboundRules):
        rp = f"{root}.outboundRules[{i}].properties"
        o = out.properties
        for j, ref in enumerate(o.frontendIPConfigurations):
            k = resolve(ref, "frontendIPConfigurations", f"{rp}.frontendIPConfigurations[{j}]")
            if k is not None and P.frontendIPConfigurations[k].internal:
                # Azure: an internal load balancer does no outbound NAT; outbound rules take public frontends
                bad.append((f"{rp}.frontendIPConfigurations[{j}].id", ref.id,
                            "is an internal frontend: outbound rules need a public one (an internal load balancer "
                            "is no outbound identity)"))
        resolve(o.backendAddressPool, "backendAddressPools", f"{rp}.backendAddressPool")
        # ports per backend x backends against the frontends' room: muxlab.lb.allocation

    if P.cloudService is not None:
        pools = _names(lb, "backendAddressPools")
        seen_eps: dict[tuple[str, str], str] = {}
        for i, e in enumerate(P.cloudService.internalEndpoints):
            ep = f"{root}.cloudService.internalEndpoints[{i}]"
            if e.role not in pools:
                bad.append((f"{ep}.role", e.role, f"a role is a backendAddressPool of this load balancer "
                                                  f"(pools: {', '.join(pools) or 'none'})"))
            if (e.role, e.name) in seen_eps:
                bad.append((f"{ep}.name", e.name, f"role {e.role} already has an internal endpoint of this name"))
            seen_eps[(e.role, e.name)] = ep
            if e.port is not None:
                same = [x for x in P.cloudService.internalEndpoints[:i]
                        if x.role == e.role and x.protocol == e.protocol and x.port == e.port]
                if same:
                    bad.append((f"{ep}.port", e.port, f"role {e.role}'s internal endpoint {same[0].name} has "
                                                      f"{e.protocol.lower()}/{e.port} already"))
    return bad


# ------------------------------------------------------------------ public IP allocation


def _pip_key(pip: PublicIPAddress) -> str:
    return (pip.id or pip.name or "").lower()


def allocate_public_ips(lbs: dict[str, LoadBalancer], fabric: Lab, held: dict[str, LoadBalancer]) -> dict[str, LoadBalancer]:
    """Give every frontend without an address one, as Azure allocates them: a publicIPAddress
    one from the lab's public range (the same resource, by id or name, keeps its address); an
    internal frontend given only a subnet (Dynamic) one of the VNet outside every VM subnet
    (the same load balancer's frontend, by name, keeps its address)."""
    lbs = _allocate_private(lbs, fabric, held)
    known: dict[str, ipaddress.IPv4Address] = {}
    used: set[ipaddress.IPv4Address] = set()
    for lb in [*held.values(), *lbs.values()]:
        for fe in lb.properties.frontendIPConfigurations:
            if fe.address is not None:
                used.add(fe.address)
                if fe.properties.publicIPAddress is not None and _pip_key(fe.properties.publicIPAddress):
                    known.setdefault(_pip_key(fe.properties.publicIPAddress), fe.address)
    free = (a for a in fabric.public_vips.hosts() if a not in used and int(a) & 0xFF >= 100)
    out = {}
    for name, lb in lbs.items():
        if all(fe.address is not None for fe in lb.properties.frontendIPConfigurations):
            out[name] = lb
            continue
        lb = lb.model_copy(deep=True)
        for fe in lb.properties.frontendIPConfigurations:
            pip = fe.properties.publicIPAddress
            if pip is not None and pip.properties.ipAddress is None:
                addr = known.get(_pip_key(pip)) or next(free, None)
                if addr is not None:
                    pip.properties.ipAddress = addr
                    used.add(addr)
                    known[_pip_key(pip)] = addr
        out[name] = lb
    return out


def _allocate_private(lbs: dict[str, LoadBalancer], fabric: Lab, held: dict[str, LoadBalancer]) -> dict[str, LoadBalancer]:
    used = {fe.address for lb in [*held.values(), *lbs.values()] for fe in lb.properties.frontendIPConfigurations
            if fe.address is not None}
    used |= {a for vm in fabric.vms for a in (vm.ip, vm.nic2) if a is not None}
    subnets = [n for h in fabric.hosts for n in h.subnets]
    free = (a for a in fabric.vnet.hosts() if int(a) & 0xFF >= 100 and a not in used and not any(a in n for n in subnets))
    out = {}
    for name, lb in lbs.items():
        dynamic = [fe for fe in lb.properties.frontendIPConfigurations if fe.internal and fe.address is None]
        if not dynamic:
            out[name] = lb
            continue
        before = {fe.name: fe.address for fe in held[name].properties.frontendIPConfigurations} if name in held else {}
        lb = lb.model_copy(deep=True)
        for fe in lb.properties.frontendIPConfigurations:
            if fe.internal and fe.address is None:
                kept = before.get(fe.name)
                addr = kept if kept is not None and kept in fabric.vnet else None
                fe.properties.privateIPAddress = addr or next(free, None)
                fe.properties.privateIPAllocationMethod = "Dynamic"
        out[name] = lb
    return out


def frontend_addresses(lbs: Iterable[LoadBalancer]) -> list[str]:
    return sorted({str(fe.address) for lb in lbs for fe in lb.properties.frontendIPConfigurations if fe.address},
                  key=lambda a: ipaddress.IPv4Address(a))
