"""Fastpath on a MUX: once the handshake of a VM's TCP connection to a VIP completes here
(the first packet this MUX tracks: a bare SYN is never tracked), the kernel logs that packet,
with the DIP it chose as its mark, to NFLOG (mux/datapath.py's forward chain). This module
turns each such packet into a redirect to the two hosts (muxlab.node.fastpath), and withdraws
the redirects whose backend left its pool or whose source lost its identity. Once per flow,
never per packet: the hosts' kernels carry the flow from then on.

Not redirected: a flow whose two VMs share a host (nothing to bypass), and one this MUX's
facts do not explain (an unknown DIP, a backend no longer in the rule's pool)."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from muxlab.datapath.conventions import FASTPATH_NFLOG_GROUP, FASTPATH_PORT
from muxlab.fabric.lab import VM, Lab
from muxlab.lb.facts import Facts
from muxlab.node.fastpath import REDIRECT, Redirect, snat_holders, source_dip
from muxlab.node.nflog import Logged, Subscriber

REMEMBERED = 65536   # redirects kept to withdraw later; the oldest are forgotten first
TCP = 6


@dataclass(frozen=True)
class Index:
    """The facts as a redirect needs them: a TCP rule by (VIP, port), and who holds a SNAT port."""
    rules: dict = field(default_factory=dict)     # (vip, port) -> (idle_s, frozenset of backend VM names)
    snat: dict = field(default_factory=dict)      # vip -> [(lo, hi, DIP)]: muxlab.node.fastpath.snat_holders


def index(facts: Facts) -> Index:
    rules = {(str(r.vip), r.port): (r.idle_s, frozenset(b.vm for b in r.backends)) for r in facts.rules if r.protocol == "tcp"}
    return Index(rules, snat_holders(facts.snat))


def source_vm(fabric: Lab, idx: Index, src: str, sport: int) -> VM | None:
    """The VM behind a connection's source (muxlab.node.fastpath.source_dip)."""
    dip = source_dip(fabric.vnet, idx.snat, src, sport)
    return fabric.vm_by_ip(dip) if dip else None


def decide(fabric: Lab, idx: Index, p: Logged) -> tuple[Redirect, str, str] | str:
    """The redirect for a logged packet and the two hosts' names, or why there is none."""
    if p.proto != TCP:
        return "not TCP"
    rule = idx.rules.get((p.dst, p.dport))
    if rule is None:
        return f"no TCP rule for {p.dst}:{p.dport}"
    dst = fabric.vm_by_ip(ipaddress.IPv4Address(p.mark)) if p.mark else None
    if dst is None or dst.name not in rule[1]:
        return "the backend is not in the rule's pool"
    src_vm = source_vm(fabric, idx, p.src, p.sport)
    if src_vm is None:
        return f"{p.src}:{p.sport} is no VM's"
    if src_vm.host == dst.host:
        return "both ends on one host"
    return (Redirect(REDIRECT, p.src, p.sport, p.dst, p.dport, str(src_vm.ip), str(dst.ip), rule[0]),
            src_vm.host, dst.host)


def still_valid(fabric: Lab, idx: Index, r: Redirect) -> bool:
    rule = idx.rules.get((r.vip, r.port))
    dst = fabric.vm_by_ip(r.dst_dip)
    src = source_vm(fabric, idx, r.src, r.sport)
    return bool(rule and dst and dst.name in rule[1] and src and str(src.ip) == r.src_dip)


class Redirector:
    """The MUX agent's Fastpath: `run` (a thread) reads the log, `update` follows the facts."""

    def __init__(self, fabric: Lab, address: str):
        self.fabric = fabric
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))     # from the underlay address: hosts take redirects from MUXes only
        self.idx = Index()
        self.sent: OrderedDict[tuple, tuple[Redirect, tuple[str, str]]] = OrderedDict()
        self.lock = threading.Lock()

    def _send(self, r: Redirect, hosts: tuple[str, ...]) -> None:
        data = r.encode()
        for h in hosts:
            try:
                self.sock.sendto(data, (str(self.fabric.host(h).address), FASTPATH_PORT))
            except OSError:
                pass   # a lost redirect leaves the flow on the MUX path: slower, still correct

    def update(self, facts: Facts) -> None:
        idx = index(facts)
        with self.lock:
            self.idx = idx
            gone = [k for k, (r, _) in self.sent.items() if not still_valid(self.fabric, idx, r)]
            for k in gone:
                r, hosts = self.sent.pop(k)
                self._send(r.withdrawal(), hosts)

    def handle(self, p: Logged) -> Redirect | None:
        with self.lock:
            got = decide(self.fabric, self.idx, p)
            if isinstance(got, str):
                return None
            r, s, d = got
            self.sent[r.flow] = (r, (s, d))
            self.sent.move_to_end(r.flow)
            while len(self.sent) > REMEMBERED:
                self.sent.popitem(last=False)
        self._send(r, (s, d))
        return r

    def run(self) -> None:
        while True:
            try:
                log = Subscriber(FASTPATH_NFLOG_GROUP)
                print(f"[mux-agent] Fastpath: reading NFLOG group {FASTPATH_NFLOG_GROUP}", flush=True)
                while True:
                    for p in log.read():
                        self.handle(p)
            except Exception as e:   # no redirects is the MUX path for every flow: log it, try again
                print(f"[mux-agent] Fastpath stopped ({e!r}); again in 5 s", flush=True)
                time.sleep(5)

    def start(self) -> "Redirector":
        threading.Thread(target=self.run, name="fastpath", daemon=True).start()
        return self
