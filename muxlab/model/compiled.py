"""What the agents act on, compiled from the load balancers and the fabric. Pure.

Azure's shape is for people; agents want flat facts: per (VIP, protocol, port) a rule with
its backends (VM names, in pool order), distribution mode, probe and floating-IP flag. A
rule with protocol All becomes a Tcp and a Udp rule. Every agent compiles the same input the
same way, so every MUX builds the same Maglev tables.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .fabric import Lab
from .lbcheck import protocols
from .service import LoadBalancer

DISTRIBUTIONS = ("Default", "SourceIP", "SourceIPProtocol")


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

    @property
    def key(self) -> str:
        return f"{self.lb}/{self.name}"


@dataclass(frozen=True)
class Services:
    rules: tuple[Rule, ...] = ()
    vips: tuple[ipaddress.IPv4Address, ...] = ()      # every frontend address, with or without rules

    def probes(self) -> dict[str, Probe]:
        return {r.probe.key: r.probe for r in self.rules if r.probe}


def compile_services(lbs: dict[str, LoadBalancer], fabric: Lab) -> Services:
    """Assumes lbs passed lbcheck.check (unknown references are skipped, not raised)."""
    rules: list[Rule] = []
    vips: set[ipaddress.IPv4Address] = set()
    for lb_name in sorted(lbs):
        P = lbs[lb_name].properties
        fes = {fe.name: fe.address for fe in P.frontendIPConfigurations}
        vips.update(a for a in fes.values() if a is not None)
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
                                  rp.loadDistribution))
    return Services(tuple(rules), tuple(sorted(vips)))


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
    return tcp, udp, sorted(fips, key=ipaddress.IPv4Address)
