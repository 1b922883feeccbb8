"""The load balancers (Azure's shape, for people) compiled into the flat facts agents act
on (muxlab.lb.facts). Pure. Runs in the managers only, once per write: agents read the
result from the southbound tables and never see the Azure model. A rule with protocol All
becomes a Tcp and a Udp rule.
"""
from __future__ import annotations

import ipaddress

from ..fabric.lab import Lab
from .allocation import allocate, outbound_claims
from .azure import LoadBalancer
from .check import protocols
from ..datapath.conventions import GUEST_HEARTBEAT_S
from .facts import GUEST_PROBE, GUEST_PROTOCOL, Backend, Facts, InternalEndpoint, NatPort, Probe, Rule, Snat

IMPLICIT_OUTBOUND_IDLE_MINUTES = 4   # Azure: the idle timeout of outbound flows without an outbound rule
# A classic cloud service (seed 003). Its probes: timeoutInSeconds defaults to two intervals
# and a second, as a ServiceDefinition's (15 -> 31). Its guest agent probe: the host looks at
# the last report twice a heartbeat (fresh: at most 1.5 heartbeats old); three heartbeats
# without one take the instance out.
CLASSIC_TIMEOUT = lambda interval: 2 * interval + 1   # noqa: E731
GUEST_MISSED_HEARTBEATS = 3
# An internal endpoint declared without a port gets the first free one from here, per role.
INTERNAL_PORT_BASE = 20000


def probe_fact(lb_name: str, p, classic: bool) -> Probe:
    pp = p.properties
    threshold = pp.numberOfProbes or pp.probeThreshold
    timeout = min(pp.intervalInSeconds / 2, 5.0)
    path = "/" + (pp.requestPath or "").lstrip("/")   # Azure's own examples write "healthcheck.aspx"
    all_up = pp.noHealthyBackendsBehavior == "AllProbedUp"
    if not classic:
        return Probe(f"{lb_name}/{p.name}", pp.protocol.lower(), pp.port, path, float(pp.intervalInSeconds), timeout,
                     threshold, threshold, all_down_is_up=all_up)
    down_after = pp.timeoutInSeconds or CLASSIC_TIMEOUT(pp.intervalInSeconds)
    return Probe(f"{lb_name}/{p.name}", pp.protocol.lower(), pp.port, path, float(pp.intervalInSeconds), timeout,
                 1, 1, "classic", float(down_after), all_up)


def guest_probe(lb_name: str) -> Probe:
    """The guest agent probe of a classic service: its instances' own reported status."""
    return Probe(f"{lb_name}/{GUEST_PROBE}", GUEST_PROTOCOL, 0, "", GUEST_HEARTBEAT_S / 2, 1.5 * GUEST_HEARTBEAT_S, 1, 1,
                 "classic", GUEST_MISSED_HEARTBEATS * GUEST_HEARTBEAT_S)


def internal_endpoints(lb_name: str, P, pools: dict[str, tuple[Backend, ...]], rules: list[Rule],
                       nat_ports: list[NatPort]) -> list[InternalEndpoint]:
    """A classic service's internal endpoints on each of their role's instances; the peers
    allowed in are every instance of the service. A port-less endpoint gets the role's first
    port from INTERNAL_PORT_BASE that nothing else of the role uses (stable: declaration order)."""
    if P.cloudService is None:
        return []
    peers = tuple(sorted({b.ip for members in pools.values() for b in members}))
    out = []
    for role in sorted({e.role for e in P.cloudService.internalEndpoints}):
        members = pools.get(role, ())
        vms = {b.vm for b in members}
        used = {(r.protocol, r.backend_port) for r in rules if r.lb == lb_name and any(b.vm in vms for b in r.backends)}
        used |= {("tcp", r.probe.port) for r in rules if r.lb == lb_name and r.probe and r.probe.port}
        used |= {(n.protocol, n.backend_port) for n in nat_ports if n.lb == lb_name and n.vm in vms}
        eps = [e for e in P.cloudService.internalEndpoints if e.role == role]
        used |= {(e.protocol.lower(), e.port) for e in eps if e.port}
        for e in eps:
            proto = e.protocol.lower()
            port = e.port
            if port is None:
                port = next(p for p in range(INTERNAL_PORT_BASE, 65536) if (proto, p) not in used)
                used.add((proto, port))
            out += [InternalEndpoint(lb_name, role, e.name, b.vm, b.ip, proto, port, peers) for b in members]
    return out


def compile_facts(lbs: dict[str, LoadBalancer], fabric: Lab, allocations: dict[str, dict] | None = None) -> Facts:
    """Assumes lbs passed check.check (unknown references are skipped, not raised).
    `allocations`: what the manager stored (muxlab.lb.allocation); None computes them
    afresh (the same result for a set of load balancers written at once)."""
    if allocations is None:
        allocations, _ = allocate(lbs, fabric)
    claims, _ = outbound_claims(lbs, fabric)   # whose outbound identity each allocation is
    spm = fabric.seconds_per_minute
    rules: list[Rule] = []
    nat_ports: list[NatPort] = []
    snat: list[Snat] = []
    hairpin: set[ipaddress.IPv4Address] = set()
    vips: set[ipaddress.IPv4Address] = set()
    internal: list[InternalEndpoint] = []
    for lb_name in sorted(lbs):
        P = lbs[lb_name].properties
        alloc = allocations.get(lb_name, {})
        fes = {fe.name: fe.address for fe in P.frontendIPConfigurations}
        vips.update(a for a in fes.values() if a is not None)
        if P.hairpinSnat:
            hairpin.update(a for a in fes.values() if a is not None)
        pools = {}
        for pool in P.backendAddressPools:
            members = []
            for ba in pool.properties.loadBalancerBackendAddresses:
                vm = fabric.vm_by_ip(ba.properties.ipAddress)
                if vm is not None:
                    members.append(Backend(vm.name, str(vm.ip), ba.properties.adminState))
            pools[pool.name] = tuple(members)
        classic = P.cloudService is not None
        probes = {p.name: probe_fact(lb_name, p, classic) for p in P.probes}
        no_probe = guest_probe(lb_name) if classic else None
        for r in P.loadBalancingRules:
            rp = r.properties
            vip = fes.get(rp.frontendIPConfiguration.name)
            if vip is None or rp.pool.name not in pools:
                continue
            split = protocols(rp.protocol)
            for proto in split:
                rules.append(Rule(lb_name, r.name if len(split) == 1 else f"{r.name}-{proto}", vip, proto,
                                  rp.frontendPort, rp.backendPort, f"{lb_name}/{rp.pool.name}", pools[rp.pool.name],
                                  rp.enableFloatingIP, probes.get(rp.probe.name) if rp.probe else no_probe,
                                  rp.loadDistribution, rp.idleTimeoutInMinutes * spm, rp.enableTcpReset, rp.sourceNat,
                                  rp.proxyProtocol == "V2"))
        for n in P.inboundNatRules:
            np_ = n.properties
            vip = fes.get(np_.frontendIPConfiguration.name)
            for vm_name, port in alloc.get("nat", {}).get(n.name, {}).items():
                vm = fabric.vm(vm_name)
                for proto in protocols(np_.protocol):
                    bport = port if np_.enableFloatingIP else np_.backendPort
                    nat_ports.append(NatPort(lb_name, n.name, vip, proto, port, vm.name, str(vm.ip), bport,
                                             np_.enableFloatingIP, np_.idleTimeoutInMinutes * spm, np_.enableTcpReset))
        internal += internal_endpoints(lb_name, P, pools, rules, nat_ports)
        outbound = {o.name: o.properties for o in P.outboundRules}
        for vm_name, (fe, lo, hi) in alloc.get("snat", {}).items():
            vm, claim = fabric.vm(vm_name), claims.get(vm_name)
            if claim is None or claim.lb != lb_name:
                continue
            if claim.explicit:
                o = outbound[claim.rule]
                snat.append(Snat(lb_name, claim.rule, fes[fe], protocols(o.protocol), vm.name, str(vm.ip),
                                 lo, hi, o.idleTimeoutInMinutes * spm, o.enableTcpReset))
            else:
                # the implicit outbound of a load-balancing rule: Azure's default idle timeout
                snat.append(Snat(lb_name, "(load-balancing rules)", fes[fe], tuple(sorted(claim.protocols)), vm.name,
                                 str(vm.ip), lo, hi, IMPLICIT_OUTBOUND_IDLE_MINUTES * spm))
    return Facts(tuple(rules), tuple(sorted(vips)), tuple(nat_ports), tuple(snat), tuple(sorted(hairpin)),
                 tuple(sorted(internal, key=lambda e: (e.ip, e.protocol, e.port))))


def compile_each(lbs: dict[str, LoadBalancer], fabric: Lab,
                 allocations: dict[str, dict]) -> tuple[Facts, dict[str, str]]:
    """compile_facts, except that a load balancer that does not compile is left out and
    named with its reason (one bad load balancer never stops the others)."""
    try:
        return compile_facts(lbs, fabric, allocations), {}
    except Exception:
        pass
    skipped: dict[str, str] = {}
    good = dict(lbs)
    for name in sorted(lbs):   # find the culprits one by one, serve the rest
        try:
            compile_facts({name: lbs[name]}, fabric, {name: allocations.get(name, {})})
        except Exception as exc:
            skipped[name] = f"does not compile: {type(exc).__name__}: {exc}"[:400]
            del good[name]
    return compile_facts(good, fabric, allocations), skipped
