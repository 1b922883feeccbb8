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
from .facts import Backend, Facts, NatPort, Probe, Rule, Snat

IMPLICIT_OUTBOUND_IDLE_MINUTES = 4   # Azure: the idle timeout of outbound flows without an outbound rule


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
        probes = {}
        for p in P.probes:
            pp = p.properties
            threshold = pp.numberOfProbes or pp.probeThreshold
            probes[p.name] = Probe(f"{lb_name}/{p.name}", pp.protocol.lower(), pp.port, pp.requestPath or "/",
                                   float(pp.intervalInSeconds), min(pp.intervalInSeconds / 2, 5.0), threshold, threshold)
        for r in P.loadBalancingRules:
            rp = r.properties
            vip = fes.get(rp.frontendIPConfiguration.name)
            if vip is None or rp.pool.name not in pools:
                continue
            split = protocols(rp.protocol)
            for proto in split:
                rules.append(Rule(lb_name, r.name if len(split) == 1 else f"{r.name}-{proto}", vip, proto,
                                  rp.frontendPort, rp.backendPort, f"{lb_name}/{rp.pool.name}", pools[rp.pool.name],
                                  rp.enableFloatingIP, probes.get(rp.probe.name) if rp.probe else None,
                                  rp.loadDistribution, rp.idleTimeoutInMinutes * spm, rp.enableTcpReset))
        for n in P.inboundNatRules:
            np_ = n.properties
            vip = fes.get(np_.frontendIPConfiguration.name)
            for vm_name, port in alloc.get("nat", {}).get(n.name, {}).items():
                vm = fabric.vm(vm_name)
                for proto in protocols(np_.protocol):
                    bport = port if np_.enableFloatingIP else np_.backendPort
                    nat_ports.append(NatPort(lb_name, n.name, vip, proto, port, vm.name, str(vm.ip), bport,
                                             np_.enableFloatingIP, np_.idleTimeoutInMinutes * spm, np_.enableTcpReset))
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
    return Facts(tuple(rules), tuple(sorted(vips)), tuple(nat_ports), tuple(snat), tuple(sorted(hairpin)))


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
