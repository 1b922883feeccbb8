"""What the agents act on, compiled from the load balancers and the fabric. Pure.

Azure's shape is for people; agents want flat facts: per (VIP, protocol, port) a rule with
its backends (VM names, in pool order), distribution mode, probe and floating-IP flag. A
rule with protocol All becomes a Tcp and a Udp rule. Every agent compiles the same input the
same way, so every MUX builds the same Maglev tables.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .allocation import allocate, outbound_claims
from .fabric import Lab
from .lbcheck import protocols
from .service import LoadBalancer

DISTRIBUTIONS = ("Default", "SourceIP", "SourceIPProtocol")
IMPLICIT_OUTBOUND_IDLE_MINUTES = 4   # Azure: the idle timeout of outbound flows without an outbound rule


@dataclass(frozen=True)
class Probe:
    key: str              # "LB/probe": unique in the lab
    protocol: str         # tcp | http
    port: int
    path: str
    interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int


@dataclass(frozen=True)
class Backend:
    vm: str
    ip: str
    admin: str = "None"   # None: probes decide; Up: always in rotation; Down: no new flows


@dataclass(frozen=True)
class Rule:
    lb: str
    name: str             # the Azure rule's name (+ "-udp"/"-tcp" when protocol All was split)
    vip: ipaddress.IPv4Address
    protocol: str         # tcp | udp
    port: int
    backend_port: int
    pool: str             # "LB/pool"
    backends: tuple[Backend, ...]
    floating_ip: bool = False
    probe: Probe | None = None
    distribution: str = "Default"
    idle_s: int = 240     # idleTimeoutInMinutes, in lab seconds (Lab.seconds_per_minute)
    tcp_reset: bool = False

    @property
    def key(self) -> str:
        return f"{self.lb}/{self.name}"


@dataclass(frozen=True)
class NatPort:
    """An inbound NAT rule's port: (VIP, protocol, port) always goes to this one backend."""
    lb: str
    rule: str
    vip: ipaddress.IPv4Address
    protocol: str
    port: int
    vm: str
    ip: str
    backend_port: int
    floating_ip: bool = False
    idle_s: int = 240
    tcp_reset: bool = False


@dataclass(frozen=True)
class Snat:
    """A backend's outbound identity: its connections leave as VIP:LO-HI."""
    lb: str
    rule: str
    vip: ipaddress.IPv4Address
    protocols: tuple[str, ...]
    vm: str
    ip: str
    lo: int
    hi: int
    idle_s: int = 240
    tcp_reset: bool = False

    @property
    def ports(self) -> int:
        return self.hi - self.lo + 1


@dataclass(frozen=True)
class Services:
    rules: tuple[Rule, ...] = ()
    vips: tuple[ipaddress.IPv4Address, ...] = ()      # every frontend address, with or without rules
    nat_ports: tuple[NatPort, ...] = ()
    snat: tuple[Snat, ...] = ()
    hairpin_snat_vips: tuple[ipaddress.IPv4Address, ...] = ()   # LBs with hairpinSnat: their frontends

    def probes(self) -> dict[str, Probe]:
        return {r.probe.key: r.probe for r in self.rules if r.probe}


def compile_services(lbs: dict[str, LoadBalancer], fabric: Lab, allocations: dict[str, dict] | None = None) -> Services:
    """Assumes lbs passed lbcheck.check (unknown references are skipped, not raised).
    `allocations`: what the manager stored (muxlab.model.allocation); None computes them
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
    return Services(tuple(rules), tuple(sorted(vips)), tuple(nat_ports), tuple(snat), tuple(sorted(hairpin)))


def guest_config(services: Services, vm: str) -> tuple[set[int], set[int], list[str]]:
    """What a backend VM must serve: TCP ports (backend and probe ports), UDP ports, and the
    floating-IP VIPs it holds on its loopback."""
    tcp, udp, fips = set(), set(), set()
    for r in services.rules:
        if any(b.vm == vm for b in r.backends):
            (tcp if r.protocol == "tcp" else udp).add(r.backend_port)
            if r.probe:
                tcp.add(r.probe.port)
            if r.floating_ip:
                fips.add(str(r.vip))
    for n in services.nat_ports:
        if n.vm == vm:
            (tcp if n.protocol == "tcp" else udp).add(n.backend_port)
            if n.floating_ip:
                fips.add(str(n.vip))
    return tcp, udp, sorted(fips, key=ipaddress.IPv4Address)
