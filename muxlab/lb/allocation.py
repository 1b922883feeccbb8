"""What the manager hands out and keeps: outbound SNAT port ranges and inbound NAT ports. Pure.

Outbound SNAT (Ananta §3.5.1, Azure's outbound rules): every backend VM has at most one
outbound identity, a frontend address (the VIP) and a range of source ports on it that is
its alone, so a MUX can send return traffic to the right host by the destination port
alone, statelessly. Which identity: the first explicit outbound rule covering the VM (by
load balancer name, then rule order; two explicit rules for one VM are refused), else the
first load-balancing rule on a public frontend without `disableOutboundSnat` (an internal
frontend is never one: Azure's internal load balancer does no outbound NAT). Ports come in blocks of 8 from
1024-65535, less the blocks holding a frontend port of an inbound rule on that address.
`allocatedOutboundPorts: 0` takes Azure's default by pool size (muxlab.lb.check.DEFAULT_SNAT_PORTS).
A backend's range is one contiguous run of blocks: the kernel's SNAT takes one range per rule.

Inbound NAT rules, pool form: one frontend port per backend from the rule's range, kept
while the backend stays in the pool (so a shrinking pool moves nobody).

Both are kept across writes: `previous` is what the manager stored, and a backend keeps
what it had while it can. Stored per load balancer as
  {"snat": {VM: [FRONTEND, LO, HI]}, "nat": {RULE: {VM: PORT}}}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..fabric.lab import Lab
from .azure import LoadBalancer
from .check import default_outbound_ports, protocols

Problem = tuple[str, Any, str]

FIRST_PORT, LAST_PORT, BLOCK = 1024, 65535, 8
BLOCKS = (LAST_PORT - FIRST_PORT + 1) // BLOCK


@dataclass
class Claim:
    """One VM's outbound identity, before ports."""
    lb: str
    rule: str                 # outbound rule name, or the load-balancing rule's for implicit SNAT
    explicit: bool
    frontends: list[str]      # in order of preference
    vm: str
    ports: int
    protocols: set[str] = field(default_factory=set)
    path: str = ""            # the field to blame when ports run out


def pool_members(lb: LoadBalancer, fabric: Lab) -> dict[str, list[str]]:
    """Pool name -> the VM names of its backends, in pool order (addresses that are no VM skipped)."""
    return {p.name: [vm.name for b in p.properties.loadBalancerBackendAddresses
                     if (vm := fabric.vm_by_ip(b.properties.ipAddress)) is not None]
            for p in lb.properties.backendAddressPools}


def outbound_claims(lbs: dict[str, LoadBalancer], fabric: Lab) -> tuple[dict[str, Claim], list[Problem]]:
    claims: dict[str, Claim] = {}
    problems: list[Problem] = []
    for lb_name in sorted(lbs):
        P = lbs[lb_name].properties
        pools = pool_members(lbs[lb_name], fabric)
        for i, o in enumerate(P.outboundRules):
            op = o.properties
            vms = pools.get(op.backendAddressPool.name, [])
            per = op.allocatedOutboundPorts or default_outbound_ports(len(vms))
            rp = f"{lb_name}.properties.outboundRules[{i}].properties"
            for vm in vms:
                if vm in claims:
                    c = claims[vm]
                    problems.append((f"{rp}.backendAddressPool.id", op.backendAddressPool.id,
                                     f"{vm} already gets outbound SNAT from {c.lb} outbound rule {c.rule!r}: "
                                     "a VM has one outbound identity"))
                    continue
                claims[vm] = Claim(lb_name, o.name, True, [f.name for f in op.frontendIPConfigurations], vm, per,
                                   set(protocols(op.protocol)), f"{rp}.allocatedOutboundPorts")
    for lb_name in sorted(lbs):
        P = lbs[lb_name].properties
        pools = pool_members(lbs[lb_name], fabric)
        for i, r in enumerate(P.loadBalancingRules):
            rp = r.properties
            fe = next((f for f in P.frontendIPConfigurations if f.name == rp.frontendIPConfiguration.name), None)
            # an internal frontend is never an outbound identity (Azure's ILB does no outbound NAT)
            if rp.disableOutboundSnat or fe is None or fe.internal:
                continue
            vms = pools.get(rp.pool.name, [])
            for vm in vms:
                c = claims.get(vm)
                if c is None:
                    claims[vm] = Claim(lb_name, r.name, False, [rp.frontendIPConfiguration.name], vm,
                                       default_outbound_ports(len(vms)), set(protocols(rp.protocol)),
                                       f"{lb_name}.properties.loadBalancingRules[{i}].properties.disableOutboundSnat")
                elif not c.explicit and c.lb == lb_name and c.frontends == [rp.frontendIPConfiguration.name]:
                    c.protocols |= set(protocols(rp.protocol))
    return claims, problems


def inbound_ports(lb: LoadBalancer, frontend: str) -> set[int]:
    """Frontend ports that inbound traffic owns on this frontend (any protocol)."""
    P = lb.properties
    ports = {r.properties.frontendPort for r in P.loadBalancingRules if r.properties.frontendIPConfiguration.name == frontend}
    for n in P.inboundNatRules:
        if n.properties.frontendIPConfiguration.name == frontend:
            ports.update(n.properties.frontend_ports)
    return ports


def _blocks_free(lb: LoadBalancer, frontend: str) -> list[bool]:
    free = [True] * BLOCKS
    for port in inbound_ports(lb, frontend):
        if port >= FIRST_PORT:
            free[(port - FIRST_PORT) // BLOCK] = False
    return free


def _first_fit(free: list[bool], n: int) -> int | None:
    run = 0
    for i, f in enumerate(free):
        run = run + 1 if f else 0
        if run == n:
            return i - n + 1
    return None


def allocate(lbs: dict[str, LoadBalancer], fabric: Lab, previous: dict[str, dict] | None = None
             ) -> tuple[dict[str, dict], list[Problem]]:
    """Allocations for every load balancer (see the module's doc), and every problem."""
    previous = previous or {}
    claims, problems = outbound_claims(lbs, fabric)
    out: dict[str, dict] = {name: {"snat": {}, "nat": {}} for name in lbs}

    # SNAT: per frontend address a bitmap of blocks. Kept ranges first, then new ones.
    bitmaps: dict[tuple[str, str], list[bool]] = {}

    def bitmap(lb: str, fe: str) -> list[bool]:
        if (lb, fe) not in bitmaps:
            bitmaps[(lb, fe)] = _blocks_free(lbs[lb], fe)
        return bitmaps[(lb, fe)]

    def take(bm: list[bool], start: int, n: int) -> None:
        for b in range(start, start + n):
            bm[b] = False

    pending = []
    for vm in sorted(claims, key=lambda v: (claims[v].lb, claims[v].rule, v)):
        c = claims[vm]
        n = c.ports // BLOCK
        old = previous.get(c.lb, {}).get("snat", {}).get(vm)
        if old and old[0] in c.frontends and old[2] - old[1] + 1 == c.ports:
            bm = bitmap(c.lb, old[0])
            start = (old[1] - FIRST_PORT) // BLOCK
            if all(bm[start:start + n]) and len(bm[start:start + n]) == n:
                take(bm, start, n)
                out[c.lb]["snat"][vm] = list(old)
                continue
        pending.append(c)
    short: dict[str, list[Claim]] = {}
    for c in pending:
        n = c.ports // BLOCK
        for fe in c.frontends:
            bm = bitmap(c.lb, fe)
            start = _first_fit(bm, n)
            if start is not None:
                take(bm, start, n)
                lo = FIRST_PORT + start * BLOCK
                out[c.lb]["snat"][c.vm] = [fe, lo, lo + c.ports - 1]
                break
        else:
            short.setdefault(c.path, []).append(c)
    for path, cs in short.items():
        c = cs[0]
        users = [x for x in claims.values() if x.path == c.path]
        have = sum(_blocks_free(lbs[c.lb], fe).count(True) for fe in c.frontends) * BLOCK
        value = c.ports if c.explicit else False
        problems.append((path, value, f"{len(users)} backends x {c.ports} ports = {len(users) * c.ports} is more than "
                                      f"the {have} SNAT ports frontend {' + '.join(c.frontends)} has "
                                      f"(ports {FIRST_PORT}-{LAST_PORT} in blocks of {BLOCK}, less its inbound ports)"))

    # Inbound NAT rules
    for lb_name, lb in lbs.items():
        pools = pool_members(lb, fabric)
        for n in lb.properties.inboundNatRules:
            np_ = n.properties
            if np_.frontendPort is not None:
                vm = fabric.vm_by_ip(np_.backendIPAddress) if np_.backendIPAddress else None
                out[lb_name]["nat"][n.name] = {vm.name: np_.frontendPort} if vm else {}
                continue
            members = pools.get(np_.backendAddressPool.name, [])
            rng = np_.frontend_ports
            old = previous.get(lb_name, {}).get("nat", {}).get(n.name, {})
            mapping = {vm: port for vm, port in old.items() if vm in members and port in rng}
            used = set(mapping.values())
            free = (p for p in rng if p not in used)
            for vm in members:
                if vm not in mapping:
                    port = next(free, None)
                    if port is None:   # check reports the pool outgrowing the range
                        break
                    mapping[vm] = port
            out[lb_name]["nat"][n.name] = dict(sorted(mapping.items(), key=lambda kv: kv[1]))
    return out, problems
