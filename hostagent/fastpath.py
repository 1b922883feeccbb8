"""Fastpath on a host: the redirects the MUXes send (muxlab.node.fastpath) become elements of
the overlay table's Fastpath maps (hostagent/datapath.py), which the kernel then uses for
every packet of the flow: it leaves the uplink on the overlay, straight to the other end's
host, and each packet refreshes the element for the rule's idle timeout.

This host installs only its own end, and only what its own facts confirm:
  - the source end (a local VM opened the flow): the flow's source is that VM's DIP, or a
    port of its outbound SNAT range; packets of it go to the backend's DIP MAC;
  - the destination end (a local VM serves it): that VM is a backend of the VIP and port
    (so a redirect for a backend that has left its pool is not installed); replies go to
    the source VM's DIP MAC.
A withdrawal, or facts in which the end is no longer valid, deletes the element: the flow goes
back to the MUX path. Redirects from anything but a MUX never get here (the host table drops
and counts them: forged_redirect); one that still does is refused here too."""
from __future__ import annotations

import functools
import ipaddress
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from muxlab.datapath.conventions import FASTPATH_PORT, OVERLAY_TABLE, dip_mac
from muxlab.fabric.lab import Lab
from muxlab.lb.facts import Facts
from muxlab.node.fastpath import REDIRECT, BadMessage, Redirect, decode, snat_holders, source_dip
from muxlab.node.libnft import Nft

from . import datapath

REMEMBERED = 65536


@dataclass(frozen=True)
class View:
    """What this host's facts say about its VMs' ends of a flow."""
    vnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.1.0.0/16")
    local: frozenset[str] = frozenset()                     # local VMs' DIPs
    serves: frozenset = frozenset()                         # (vip, port, local DIP) of TCP bindings
    snat: dict = field(default_factory=dict)                # local VMs' TCP SNAT ranges: muxlab.node.fastpath.snat_holders
    classes: frozenset[int] = frozenset()                   # idle timeouts with a Fastpath map


def view(fabric: Lab, facts: Facts, host: str) -> View:
    local = frozenset(str(vm.ip) for vm in fabric.vms_on(host))
    serves = frozenset((b.vip, b.port, b.dip) for b in datapath.local_bindings(fabric, facts, host) if b.protocol == "tcp")
    snat = snat_holders(x for x in facts.snat if x.ip in local)
    return View(fabric.vnet, local, serves, snat, frozenset(datapath.fastpath_classes(facts)))


def source_key(r: Redirect) -> str:
    return f"{r.src} . {r.sport} . {r.vip} . {r.port}"


def reply_key(r: Redirect) -> str:
    return f"{r.vip} . {r.port} . {r.src} . {r.sport}"


def entries(v: View, r: Redirect) -> dict[str, tuple[str, str]]:
    """The elements this host holds for a redirect: key -> (map, value). Empty when its facts
    confirm neither end here."""
    if r.op != REDIRECT or r.idle_s not in v.classes:
        return {}
    out = {}
    name = datapath.fastpath_map(r.idle_s)
    if r.src_dip in v.local and source_dip(v.vnet, v.snat, r.src, r.sport) == r.src_dip:
        out[source_key(r)] = (name, dip_mac(r.dst_dip))
    if (r.vip, r.port, r.dst_dip) in v.serves:
        out[reply_key(r)] = (name, dip_mac(r.src_dip))
    return out


class Receiver:
    """The host agent's Fastpath: `run` (a thread) takes redirects, `update` follows the facts."""

    def __init__(self, fabric: Lab, host: str):
        self.fabric = fabric
        self.muxes = {str(m.address) for m in fabric.muxes}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((str(fabric.host(host).address), FASTPATH_PORT))
        self.view = View()
        self.host = host
        self.installed: OrderedDict[str, tuple[str, str, Redirect]] = OrderedDict()   # key -> (map, value, redirect)
        self.lock = threading.Lock()

    def update(self, facts: Facts) -> None:
        """New facts: the elements whose end here they no longer confirm go."""
        v = view(self.fabric, facts, self.host)
        with self.lock:
            self.view = v
            _nft(self._forget([k for k, (_, _, r) in self.installed.items() if k not in entries(v, r)]))

    def _forget(self, keys: list[str]) -> list[str]:
        """The nft lines deleting these elements (one the kernel already timed out makes
        its line fail, which _nft takes care of)."""
        return [f"delete element netdev {OVERLAY_TABLE} {self.installed.pop(k)[0]} {{ {k} }}" for k in keys]

    def take(self, batch: list[Redirect]) -> None:
        with self.lock:
            lines = []
            for r in batch:
                if r.op != REDIRECT:
                    lines += self._forget([k for k in (source_key(r), reply_key(r)) if k in self.installed])
                    continue
                for k, (name, value) in entries(self.view, r).items():
                    held = self.installed.get(k)
                    if held and held[:2] == (name, value):
                        continue   # a duplicate: the element is there
                    if held:
                        lines.append(f"delete element netdev {OVERLAY_TABLE} {held[0]} {{ {k} }}")
                    lines.append(f"add element netdev {OVERLAY_TABLE} {name} {{ {k} timeout {r.idle_s}s : {value} }}")
                    self.installed[k] = (name, value, r)
                    self.installed.move_to_end(k)
            while len(self.installed) > REMEMBERED:
                self.installed.popitem(last=False)
            _nft(lines)

    def receive(self) -> list[tuple[bytes, tuple]]:
        """The next datagram, and whatever else has arrived by then (one nft call for a burst)."""
        got = [self.sock.recvfrom(2048)]
        self.sock.setblocking(False)
        try:
            while len(got) < 256:
                got.append(self.sock.recvfrom(2048))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return got

    def run(self) -> None:
        while True:
            redirects = []
            for data, peer in self.receive():
                if peer[0] not in self.muxes:
                    continue
                try:
                    redirects.append(decode(data))
                except BadMessage as e:
                    print(f"[host-agent] Fastpath: a bad redirect from {peer[0]}: {e}", flush=True)
            try:
                self.take(redirects)
            except Exception as e:   # keep taking redirects: one that fails leaves its flow on the MUX path
                print(f"[host-agent] Fastpath: {e!r}", flush=True)

    def start(self) -> "Receiver":
        threading.Thread(target=self.run, name="fastpath", daemon=True).start()
        return self


def _nft(lines: list[str]) -> None:
    """All lines in one transaction; when that fails (an element gone already, one too many),
    each on its own, so one bad line never keeps the others out."""
    if not lines:
        return
    nft = _nft_context()
    if nft.run("\n".join(lines) + "\n"):
        for line in lines:
            nft.run(line + "\n")


@functools.lru_cache(maxsize=1)
def _nft_context() -> Nft:
    return Nft()
