"""The fabric: the lab's nodes and addressing (edge, managers, MUXes, hosts, VMs, clients).

The load balancers are not here: they are the tenant's configuration, held by the manager
(muxlab.lb.azure). Pure logic only: parse a YAML mapping, validate every field, return
frozen dataclasses. Every error names the field path and the offending value; a file with
any error is rejected whole, so nothing downstream ever sees a half-valid fabric.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..datapath.conventions import dip_mac
from ..datapath.maglev import is_prime, smallest_prime_at_least
from .yamldoc import load_unique

# What a MUX does about a packet too big for the overlay (docs/datapath.md, "MTU"):
# clamp the TCP MSS of SYNs (and, on hosts, of the DSR SYN-ACKs the MUX never sees), and
# send ICMP "fragmentation needed" back to the client. Neither: the packet vanishes.
MTU_REMEDIES = ("mss-clamp", "icmp")
VXLAN_OVERHEAD = 50    # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
NAME_RULE = "must be a lower-case name: a letter, then letters, digits or '-' (max 31)"


def check_name(value: Any, field: str, what: str = "name") -> str:
    """The one rule for every name that becomes a container, a network or a path (lab names,
    nodes, an exercise's `lab:`): nothing that could climb out of a folder ('..', '/')."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ModelError([(field, value, NAME_RULE)], what)
    return value
# Documentation ranges: the only "internet" addresses the lab may use (RFC 5737).
DOC_RANGES = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))


class ModelError(ValueError):
    """A model that failed validation; `problems` lists (field path, value, message)."""

    what = "lab model"

    def __init__(self, problems: list[tuple[str, Any, str]], what: str | None = None):
        self.problems = problems
        if what:
            self.what = what
        lines = [f"{path}: {value!r}: {msg}" for path, value, msg in problems]
        super().__init__(f"invalid {self.what}:\n  " + "\n  ".join(lines))


class EdgeLinked:
    """A node on a point-to-point underlay link to the edge (`underlay`: its side of it)."""
    underlay: ipaddress.IPv4Interface

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.underlay.ip

    @property
    def edge_address(self) -> ipaddress.IPv4Address:
        return peer_of(self.underlay)


@dataclass(frozen=True)
class Mux(EdgeLinked):
    name: str
    underlay: ipaddress.IPv4Interface  # MUX side of its point-to-point link to the edge


@dataclass(frozen=True)
class Host(EdgeLinked):
    name: str
    underlay: ipaddress.IPv4Interface  # host side of its link to the edge; also its VTEP address
    vm_subnet: ipaddress.IPv4Network   # the "vswitch" subnet its VMs live on
    # a second subnet for its VMs' second NICs (seed 000's fix: an internal frontend in it is
    # reached through that NIC, its connected subnet, with no static route)
    secondary_subnet: ipaddress.IPv4Network | None = None

    @property
    def vm_gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{next(self.vm_subnet.hosts())}/{self.vm_subnet.prefixlen}")

    @property
    def secondary_gateway(self) -> ipaddress.IPv4Interface | None:
        net = self.secondary_subnet
        return ipaddress.IPv4Interface(f"{next(net.hosts())}/{net.prefixlen}") if net else None

    @property
    def subnets(self) -> tuple[ipaddress.IPv4Network, ...]:
        return (self.vm_subnet,) + ((self.secondary_subnet,) if self.secondary_subnet else ())

    def subnet_of(self, addr: ipaddress.IPv4Address) -> ipaddress.IPv4Network | None:
        """The subnet of this host that a VM address (a DIP or a second NIC) sits on."""
        return next((n for n in self.subnets if addr in n), None)


@dataclass(frozen=True)
class VM:
    name: str
    host: str
    ip: ipaddress.IPv4Address  # the DIP
    nic2: ipaddress.IPv4Address | None = None  # a second NIC (eth2), on its host's subnet or secondary subnet

    @property
    def mac(self) -> str:
        """Overlay MAC of this DIP: 02:00 + the four DIP bytes (locally administered).

        MUXes put it in the inner Ethernet header of the VXLAN frame; that is how the
        host learns which DIP the MUX chose (see docs/datapath.md)."""
        return dip_mac(self.ip)


@dataclass(frozen=True)
class Client:
    name: str
    address: ipaddress.IPv4Interface

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        net = self.address.network
        return ipaddress.IPv4Interface(f"{next(net.hosts())}/{net.prefixlen}")


@dataclass(frozen=True)
class Lab:
    name: str
    edge_asn: int
    mux_asn: int
    keepalive: int
    hold_time: int
    router_id: ipaddress.IPv4Address
    bfd_interval_ms: int
    bfd_multiplier: int
    vni: int
    hash_seed: int
    table_size: int | None  # None: per pool, the smallest prime >= 100 x backends
    managers: tuple[str, ...]
    muxes: tuple[Mux, ...]
    hosts: tuple[Host, ...]
    vms: tuple[VM, ...]
    clients: tuple[Client, ...]
    public_vips: ipaddress.IPv4Network = DOC_RANGES[2]   # where public frontends come from
    vnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.1.0.0/16")  # internal frontends, VM subnets
    seconds_per_minute: int = 60     # lab time: what an Azure "minute" (idle timeouts) lasts here
    underlay_mtu: int = 9000         # links that carry VXLAN (edge <-> MUXes, hosts)
    mtu_remedies: frozenset[str] = frozenset(MTU_REMEDIES)   # what the MUXes do about too-big packets
    # Ananta's Fastpath (docs/datapath.md): a VM's TCP connection to a VIP leaves the MUX tier
    # once its handshake completes, host to host
    fastpath: bool = True

    # indexes, built on first use: agents and the managers' compiler look VMs up per fact
    # (84000 linear scans for one write of 2000 load balancers)
    @functools.cached_property
    def _vm_by_name(self) -> dict[str, VM]:
        return {v.name: v for v in self.vms}

    @functools.cached_property
    def _vm_by_ip(self) -> dict[ipaddress.IPv4Address, VM]:
        return {v.ip: v for v in reversed(self.vms)}   # reversed: the first VM wins, as a scan found it

    def vm(self, name: str) -> VM:
        try:
            return self._vm_by_name[name]
        except KeyError:
            raise KeyError(f"no VM named {name!r} in lab {self.name!r}") from None

    @property
    def overlay_mtu(self) -> int:
        """The largest inner packet VXLAN carries over the underlay (1500 at most: VMs and
        clients have ordinary Ethernet)."""
        return min(1500, self.underlay_mtu - VXLAN_OVERHEAD)

    @property
    def overlay_mss(self) -> int:
        return self.overlay_mtu - 40

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def runs(self, host: str, vm: str) -> bool:
        """`vm` runs on `host`: the only host that may report on it (RBAC lets a host write
        rows naming itself; this keeps it from speaking for another host's VMs)."""
        return any(v.name == vm and v.host == host for v in self.vms)

    def vms_on(self, host: str) -> tuple[VM, ...]:
        return tuple(v for v in self.vms if v.host == host)

    def vm_by_ip(self, ip: ipaddress.IPv4Address | str) -> VM | None:
        return self._vm_by_ip.get(ip if isinstance(ip, ipaddress.IPv4Address) else ipaddress.IPv4Address(ip))

    @property
    def agents(self) -> list[str]:
        """The nodes whose agent applies each configuration and reports it: MUXes and hosts."""
        return [m.name for m in self.muxes] + [h.name for h in self.hosts]

    def node_names(self) -> list[str]:
        return ["edge", *self.managers] + [n.name for group in (self.muxes, self.hosts, self.vms, self.clients) for n in group]

    def role_of(self, name: str) -> str:
        if name == "edge":
            return "edge"
        if name in self.managers:
            return "manager"
        for role, group in (("mux", self.muxes), ("host", self.hosts), ("vm", self.vms), ("client", self.clients)):
            if any(n.name == name for n in group):
                return role
        raise KeyError(f"no node named {name!r} in lab {self.name!r}")

    def effective_table_size(self, pool_size: int) -> int:
        """Maglev table size of a pool: the fabric's, or the smallest prime >= 100 x pool size."""
        return self.table_size or smallest_prime_at_least(100 * max(1, pool_size))


def peer_of(iface: ipaddress.IPv4Interface) -> ipaddress.IPv4Address:
    """The other end of a point-to-point /31 (or /30) link."""
    net = iface.network
    if net.prefixlen == 31:
        a, b = net[0], net[1]
    elif net.prefixlen == 30:
        a, b = net[1], net[2]
    else:
        raise ValueError(f"{iface} is not a point-to-point /31 or /30")
    return b if iface.ip == a else a


# ---------------------------------------------------------------- parsing


class _Checker:
    """Collects problems while reading a raw mapping, so one run reports them all."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, Any, str]] = []

    def bad(self, path: str, value: Any, msg: str) -> None:
        self.problems.append((path, value, msg))

    def mapping(self, raw: Any, path: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
        if not isinstance(raw, dict):
            self.bad(path, raw, "must be a mapping")
            return {}
        for key in raw:
            if key not in allowed:
                self.bad(f"{path}.{key}" if path else str(key), raw[key], f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required):
            if key not in raw:
                self.bad(f"{path}.{key}" if path else key, None, "required field is missing")
        return raw

    def name(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.bad(path, value, NAME_RULE)
            return None
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(path, value, f"must be an integer from {lo} to {hi}")
            return None
        return value

    def number(self, value: Any, path: str, lo: float, hi: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            self.bad(path, value, f"must be a number from {lo} to {hi}")
            return None
        return float(value)

    def choice(self, value: Any, path: str, options: tuple[str, ...]) -> str | None:
        if value not in options:
            self.bad(path, value, f"must be one of: {', '.join(options)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.bad(path, value, "must be true or false")
            return False
        return value

    def _parsed(self, value: Any, path: str, ctor, msg: str):
        try:
            return ctor(value)
        except (ValueError, TypeError):
            self.bad(path, value, msg)
            return None

    def address(self, value: Any, path: str) -> ipaddress.IPv4Address | None:
        return self._parsed(value, path, ipaddress.IPv4Address, "must be an IPv4 address like 203.0.113.10")

    def interface(self, value: Any, path: str) -> ipaddress.IPv4Interface | None:
        msg = "must be an IPv4 address with prefix length, like 10.0.1.1/31"
        if not isinstance(value, str) or "/" not in value:  # a bare address would silently mean /32
            self.bad(path, value, msg)
            return None
        return self._parsed(value, path, ipaddress.IPv4Interface, msg)

    def network(self, value: Any, path: str) -> ipaddress.IPv4Network | None:
        return self._parsed(value, path, ipaddress.IPv4Network, "must be an IPv4 network like 10.1.1.0/24 (host bits zero)")


TOP_FIELDS = {"name", "bgp", "bfd", "overlay", "fastpath", "hashing", "addressing", "managers", "muxes", "hosts", "vms", "clients",
              "timing", "mtu"}


def load_lab(path: str | Path) -> Lab:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError([("file", str(path), f"cannot be read: {exc.strerror}")]) from None
    try:
        raw, problems = load_unique(text)
    except yaml.YAMLError as exc:
        raise ModelError([("file", str(path), f"is not valid YAML: {exc}")]) from None
    if problems:   # the last of two values silently winning is not what anyone wrote
        raise ModelError([(f"{path}: {where}", key, msg) for where, key, msg in problems])
    return parse_lab(raw)


def parse_lab(raw: Any) -> Lab:
    c = _Checker()
    top = c.mapping(raw, "", TOP_FIELDS, {"name", "muxes", "hosts", "vms", "clients"})
    name = c.name(top.get("name"), "name") if "name" in top else None

    bgp = c.mapping(top.get("bgp", {}), "bgp", {"edge_asn", "mux_asn", "keepalive", "hold_time", "router_id"})
    edge_asn = c.integer(bgp.get("edge_asn", 65000), "bgp.edge_asn", 1, 4294967294)
    mux_asn = c.integer(bgp.get("mux_asn", 65100), "bgp.mux_asn", 1, 4294967294)
    keepalive = c.integer(bgp.get("keepalive", 1), "bgp.keepalive", 1, 60)
    # ExaBGP refuses hold times below 3 s.
    hold = c.integer(bgp.get("hold_time", 3), "bgp.hold_time", 3, 180)
    if keepalive and hold and keepalive * 3 > hold:
        c.bad("bgp.keepalive", keepalive, f"must be at most a third of bgp.hold_time ({hold})")
    if edge_asn is not None and edge_asn == mux_asn:
        c.bad("bgp.mux_asn", mux_asn, "must differ from bgp.edge_asn: the edge peers with the MUXes over eBGP")
    router_id = c.address(bgp.get("router_id", "10.255.0.1"), "bgp.router_id")

    bfd = c.mapping(top.get("bfd", {}), "bfd", {"interval_ms", "multiplier"})
    bfd_interval = c.integer(bfd.get("interval_ms", 300), "bfd.interval_ms", 50, 10000)
    bfd_mult = c.integer(bfd.get("multiplier", 3), "bfd.multiplier", 2, 50)

    overlay = c.mapping(top.get("overlay", {}), "overlay", {"vni"})
    vni = c.integer(overlay.get("vni", 4242), "overlay.vni", 1, 16777215)

    hashing = c.mapping(top.get("hashing", {}), "hashing", {"seed", "table_size"})
    seed = c.integer(hashing.get("seed", 0x4D55584C), "hashing.seed", 0, 0xFFFFFFFF)
    table_size = None
    if "table_size" in hashing:
        table_size = c.integer(hashing["table_size"], "hashing.table_size", 7, 1_000_003)
        if table_size is not None and not is_prime(table_size):
            c.bad("hashing.table_size", table_size, "must be a prime number (Maglev needs it to walk every slot)")

    addressing = c.mapping(top.get("addressing", {}), "addressing", {"public_vips", "vnet"})
    public_vips = c.network(addressing.get("public_vips", "203.0.113.0/24"), "addressing.public_vips")
    if public_vips is not None and not any(public_vips.subnet_of(r) for r in DOC_RANGES):
        c.bad("addressing.public_vips", str(public_vips), "public addresses come from the RFC 5737 ranges: "
              + ", ".join(str(r) for r in DOC_RANGES))
    vnet = c.network(addressing.get("vnet", "10.1.0.0/16"), "addressing.vnet")
    if vnet is not None and not vnet.is_private:
        c.bad("addressing.vnet", str(vnet), "the VNet is private address space (RFC 1918)")

    timing = c.mapping(top.get("timing", {}), "timing", {"seconds_per_minute"})
    spm = c.integer(timing.get("seconds_per_minute", 60), "timing.seconds_per_minute", 1, 60)

    mtu = c.mapping(top.get("mtu", {}), "mtu", {"underlay", "remedies"})
    underlay_mtu = c.integer(mtu.get("underlay", 9000), "mtu.underlay", 1280, 9000)
    remedies = mtu.get("remedies", list(MTU_REMEDIES))
    if not isinstance(remedies, list) or any(r not in MTU_REMEDIES for r in remedies):
        c.bad("mtu.remedies", remedies, f"must be a list of: {', '.join(MTU_REMEDIES)} (or [] for none)")
        remedies = []

    fastpath = c.boolean(top.get("fastpath", True), "fastpath")

    # managers: a count; they are named manager1..N (an odd number keeps a Raft majority)
    n_managers = c.integer(top.get("managers", 3), "managers", 1, 7)
    managers = tuple(f"manager{i}" for i in range(1, (n_managers or 0) + 1))

    seen_names: dict[str, str] = {"edge": "edge", **{m: "managers" for m in managers}}

    def claim(node: str | None, path: str) -> bool:
        if node is None:
            return False
        if node in seen_names:
            c.bad(path, node, f"node name already used at {seen_names[node]}")
            return False
        seen_names[node] = path
        return True

    subnets: list[tuple[ipaddress.IPv4Network, str]] = []

    def claim_subnet(net: ipaddress.IPv4Network, path: str, value: Any) -> None:
        for other, where in subnets:
            if net.overlaps(other):
                c.bad(path, value, f"overlaps {other} used at {where}")
                return
        subnets.append((net, path))

    def p2p(value: Any, path: str) -> ipaddress.IPv4Interface | None:
        iface = c.interface(value, path)
        if iface is None:
            return None
        if iface.network.prefixlen not in (30, 31) or iface.ip in (iface.network.network_address, iface.network.broadcast_address) and iface.network.prefixlen == 30:
            c.bad(path, value, "must be a usable address of a point-to-point /31 or /30 link")
            return None
        claim_subnet(iface.network, path, value)
        return iface

    muxes = []
    for mname, mraw in _items(c, top.get("muxes"), "muxes"):
        path = f"muxes.{mname}"
        if not claim(c.name(mname, path), path):
            continue
        m = c.mapping(mraw, path, {"underlay"}, {"underlay"})
        ul = p2p(m.get("underlay"), f"{path}.underlay") if "underlay" in m else None
        if ul:
            muxes.append(Mux(mname, ul))
    if isinstance(top.get("muxes"), dict) and not top["muxes"]:
        c.bad("muxes", {}, "needs at least one MUX")

    hosts = []
    for hname, hraw in _items(c, top.get("hosts"), "hosts"):
        path = f"hosts.{hname}"
        if not claim(c.name(hname, path), path):
            continue
        h = c.mapping(hraw, path, {"underlay", "vm_subnet", "secondary_subnet"}, {"underlay", "vm_subnet"})
        ul = p2p(h.get("underlay"), f"{path}.underlay") if "underlay" in h else None

        def vm_net(key: str) -> ipaddress.IPv4Network | None:
            net = c.network(h.get(key), f"{path}.{key}") if key in h else None
            if net is None:
                return None
            if net.prefixlen > 29:
                c.bad(f"{path}.{key}", h.get(key), "must be a /29 or larger")
            elif vnet is not None and not net.subnet_of(vnet):
                c.bad(f"{path}.{key}", h.get(key), f"must lie inside addressing.vnet {vnet}")
            else:
                claim_subnet(net, f"{path}.{key}", h.get(key))
                return net
            return None
        sub = vm_net("vm_subnet")
        second = vm_net("secondary_subnet")
        if ul and sub:   # a bad secondary subnet is reported; its host stays, so its VMs are checked too
            hosts.append(Host(hname, ul, sub, second))
    host_by_name = {h.name: h for h in hosts}

    vms = []
    dips_seen: dict[ipaddress.IPv4Address, str] = {}

    def claim_vm_address(h: Host, addr: ipaddress.IPv4Address, field: str, owner: str, outside: str,
                         subnets: tuple = ()) -> bool:
        """A VM's address (DIP or second NIC): usable on one of its host's `subnets` (default:
        the VM subnet), not a gateway, not taken."""
        net = next((n for n in subnets or (h.vm_subnet,) if addr in n), None)
        gateways = {h.vm_gateway.ip} | ({h.secondary_gateway.ip} if h.secondary_gateway else set())
        if net is None or addr in (net.network_address, net.broadcast_address) or addr in gateways:
            c.bad(field, str(addr), outside)
            return False
        if addr in dips_seen:
            c.bad(field, str(addr), f"already used by {dips_seen[addr]}")
            return False
        dips_seen[addr] = owner
        return True

    for vname, vraw in _items(c, top.get("vms"), "vms"):
        path = f"vms.{vname}"
        if not claim(c.name(vname, path), path):
            continue
        v = c.mapping(vraw, path, {"host", "ip", "nic2"}, {"host", "ip"})
        host = v.get("host")
        if "host" in v and host not in host_by_name:
            c.bad(f"{path}.host", host, f"no such host (hosts: {', '.join(sorted(host_by_name)) or 'none'})")
            continue
        ip = c.address(v.get("ip"), f"{path}.ip") if "ip" in v else None
        if ip is None or host is None:
            continue
        h = host_by_name[host]
        if not claim_vm_address(h, ip, f"{path}.ip", path, f"must be a usable address in {host}'s vm_subnet {h.vm_subnet} "
                                f"other than its gateway {h.vm_gateway.ip}"):
            continue
        nic2 = c.address(v["nic2"], f"{path}.nic2") if "nic2" in v else None
        where = " or ".join(str(n) for n in h.subnets)
        if nic2 is not None and not claim_vm_address(h, nic2, f"{path}.nic2", f"{path}.nic2", f"a second NIC sits on one of "
                                                       f"{host}'s subnets {where} (not a gateway)", h.subnets):
            continue
        vms.append(VM(vname, host, ip, nic2))

    clients = []
    for cname, craw in _items(c, top.get("clients"), "clients"):
        path = f"clients.{cname}"
        if not claim(c.name(cname, path), path):
            continue
        cl = c.mapping(craw, path, {"address"}, {"address"})
        addr = c.interface(cl.get("address"), f"{path}.address") if "address" in cl else None
        if addr is None:
            continue
        if not any(addr.network.subnet_of(r) for r in DOC_RANGES[:2]):
            c.bad(f"{path}.address", cl.get("address"), "clients live on the 'internet': use 192.0.2.0/24 or 198.51.100.0/24 (RFC 5737)")
            continue
        if addr.network.prefixlen > 30 or addr.ip == next(addr.network.hosts()):
            c.bad(f"{path}.address", cl.get("address"), "needs a subnet of /30 or larger whose first address (the edge) is not the client's")
            continue
        claim_subnet(addr.network, f"{path}.address", cl.get("address"))
        clients.append(Client(cname, addr))

    if c.problems:
        raise ModelError(c.problems)
    return Lab(name, edge_asn, mux_asn, keepalive, hold, router_id, bfd_interval, bfd_mult, vni, seed, table_size,
               managers, tuple(muxes), tuple(hosts), tuple(vms), tuple(clients), public_vips, vnet, spm, underlay_mtu,
               frozenset(remedies), fastpath)


def _items(c: _Checker, raw: Any, path: str):
    if raw is None:
        return []
    if not isinstance(raw, dict):
        c.bad(path, raw, "must be a mapping of name to settings")
        return []
    return list(raw.items())
