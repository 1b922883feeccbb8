"""The flat facts agents act on: per (VIP, protocol, port) a rule with its backends (VM
names, in pool order), distribution mode, probe and floating-IP flag; inbound NAT ports;
outbound SNAT ranges. Pure dataclasses, with nothing of the Azure model: the managers compile
the load balancers into these once (muxlab.lb.compiler), store them as southbound rows
(muxlab.lb.southbound, docs/southbound.md) and agents read them back from those rows.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


DISTRIBUTIONS = ("Default", "SourceIP", "SourceIPProtocol")
# How a probe's answers move a backend (hostagent/probes.py has both state machines):
# "threshold": Azure Load Balancer's probeThreshold (consecutive answers, either way);
# "classic": a classic cloud service's (seed 003): timeoutInSeconds without a positive answer,
# or one definite refusal, takes it out; the first positive answer brings it back unless it flaps.
SEMANTICS = ("threshold", "classic")
# A classic service's rules without a probe follow the instance's own reported status: this
# probe's protocol, and its name under the load balancer (not an Azure name: it cannot clash).
GUEST_PROTOCOL = "guest"
GUEST_PROBE = "(guest agent)"


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
    semantics: str = "threshold"   # SEMANTICS
    down_after: float = 0.0        # classic: seconds without a positive answer that take a backend out
    all_down_is_up: bool = False   # noHealthyBackendsBehavior AllProbedUp: every backend probed down = all up


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
    source_nat: bool = False   # the MUX source-NATs the client to itself: replies come back through it
    proxy_protocol: bool = False   # the MUX proxies the connection, sending a PROXY v2 header first

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
class InternalEndpoint:
    """A classic cloud service's internal endpoint on one instance: only the service's own
    instances (`peers`, their DIPs) may open it; nothing outside the service reaches it."""
    service: str          # the load balancer (the cloud service)
    role: str
    name: str
    vm: str
    ip: str
    protocol: str         # tcp | udp
    port: int
    peers: tuple[str, ...]


@dataclass(frozen=True)
class Facts:
    """Everything the agents act on: the whole lab's for MUXes and managers, a host reads its own VMs' part."""
    rules: tuple[Rule, ...] = ()
    vips: tuple[ipaddress.IPv4Address, ...] = ()      # every frontend address, with or without rules
    nat_ports: tuple[NatPort, ...] = ()
    snat: tuple[Snat, ...] = ()
    hairpin_snat_vips: tuple[ipaddress.IPv4Address, ...] = ()   # LBs with hairpinSnat: their frontends
    internal: tuple[InternalEndpoint, ...] = ()   # classic cloud services' internal endpoints, per instance

    def probes(self) -> dict[str, Probe]:
        return {r.probe.key: r.probe for r in self.rules if r.probe}


def guest_config(facts: Facts, vm: str) -> tuple[set[int], set[int], list[str]]:
    """What a backend VM must serve: TCP ports (backend and probe ports), UDP ports, and the
    floating-IP VIPs it holds on its loopback."""
    tcp, udp, fips = set(), set(), set()
    for r in facts.rules:
        if any(b.vm == vm for b in r.backends):
            (tcp if r.protocol == "tcp" else udp).add(r.backend_port)
            if r.probe and r.probe.protocol != GUEST_PROTOCOL:
                tcp.add(r.probe.port)
            if r.floating_ip:
                fips.add(str(r.vip))
    for n in facts.nat_ports:
        if n.vm == vm:
            (tcp if n.protocol == "tcp" else udp).add(n.backend_port)
            if n.floating_ip:
                fips.add(str(n.vip))
    for e in facts.internal:
        if e.vm == vm:
            (tcp if e.protocol == "tcp" else udp).add(e.port)
    return tcp, udp, sorted(fips, key=ipaddress.IPv4Address)
