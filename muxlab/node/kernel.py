"""Side effects on the kernel shared by the MUX and host agents: netlink (pyroute2) and nft.

Every function is idempotent: it reads what is there and changes only the difference,
so an agent can restart and re-apply without duplicating or flapping anything.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from muxlab.datapath import nfttable
from muxlab.datapath.conventions import VXLAN_PORT

RTNH_F_ONLINK = 4
NTF_SELF = 2  # an FDB entry of the VXLAN device itself, not of a bridge above it


class KernelError(RuntimeError):
    pass


def nft_apply(ruleset: str) -> None:
    """Load a ruleset in one nft transaction: all of it or none of it."""
    proc = subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, capture_output=True)
    if proc.returncode != 0:
        raise KernelError(f"nft rejected the ruleset: {proc.stderr.strip()}")


def nft_converge(table: nfttable.Table, before: nfttable.Table | None, log: Callable[[str], None]) -> str:
    """Make the kernel hold `table`, knowing it holds `before` (None: unknown, as after a
    restart): the difference of the two in one transaction (muxlab.datapath.nfttable.update),
    or the whole table when that cannot be done or the kernel refuses it (it does not hold
    `before`: someone changed it by hand). Says which."""
    script = nfttable.update(before, table) if before is not None else None
    if script == "":
        return "nft unchanged"
    if script is not None:
        try:
            nft_apply(script)
            return f"nft update of {len(script.splitlines())} commands"
        except KernelError as e:
            log(f"incremental update refused, loading the whole table: {e}")
    nft_apply(table.render())
    return "whole table loaded"


def ifindex(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_vxlan(ipr: IPRoute, name: str, vni: int, local: str, mtu: int = 1500) -> int:
    """A VXLAN device on UDP 4789 that neither learns nor floods: every remote is static."""
    idx = ifindex(ipr, name)
    if idx is None:
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                 vxlan_port=VXLAN_PORT, vxlan_learning=0)
        idx = ifindex(ipr, name)
    ipr.link("set", index=idx, mtu=mtu, state="up")
    return idx


def ensure_bridge_ports(ipr: IPRoute, bridge: str, ports: list[str]) -> list[str]:
    """Enslave to `bridge` (and bring up) every listed port that exists but is not in it: a
    VM link re-plugged after a failure comes back as a fresh interface. Returns those fixed."""
    fixed = []
    br = ifindex(ipr, bridge)
    for port in ports:
        if br is None or not os.path.exists(f"/sys/class/net/{port}") or os.path.exists(f"/sys/class/net/{port}/master"):
            continue
        ipr.link("set", index=ifindex(ipr, port), master=br, state="up")
        fixed.append(port)
    if fixed:
        # the VM behind a re-plugged port is a new interface with a new MAC: forget what this
        # host had cached, or it keeps sending to the old MAC until the entry times out (~45 s)
        for n in ipr.get_neighbours(family=2, ifindex=br):
            ipr.neigh("del", ifindex=br, dst=n.get_attr("NDA_DST"))
    return fixed


@dataclass(frozen=True)
class PolicyRoute:
    """Packets arriving on `iif` with fwmark `mark` -> table `mark` -> default via `via`
    dev `dev` onlink.

    The `iif` match matters: a VXLAN device routes its outer packet with the inner packet's
    mark, and without it that lookup would hit this rule and loop into the tunnel.
    With `mac`, the neighbour entry of `via` is pinned to it; with `vtep`, the VXLAN FDB
    sends that MAC to that remote VTEP."""
    mark: int
    via: str
    dev: str
    iif: str
    mac: str | None = None
    vtep: str | None = None


def reconcile_policy_routes(ipr: IPRoute, wanted: list[PolicyRoute], priority: int) -> None:
    current = {}
    for r in ipr.get_rules(family=2):
        if r.get_attr("FRA_PRIORITY") == priority:
            current[r.get_attr("FRA_FWMARK")] = (r.get_attr("FRA_TABLE"), r.get_attr("FRA_IIFNAME"))
    want = {p.mark: p for p in wanted}
    for mark, (table, iif) in current.items():
        if mark not in want or want[mark].iif != iif:
            ipr.rule("del", family=2, priority=priority, fwmark=mark, fwmask=0xFFFFFFFF, table=table, iifname=iif)
            try:
                ipr.route("del", dst="0.0.0.0/0", table=table)
            except Exception:
                pass
    for p in wanted:
        idx = ifindex(ipr, p.dev)
        if idx is None:
            raise KernelError(f"device {p.dev} missing for DIP {p.via}")
        if p.mac:
            ipr.neigh("replace", dst=p.via, lladdr=p.mac, ifindex=idx, state=NUD_PERMANENT)
        if p.mac and p.vtep:
            ipr.fdb("replace", ifindex=idx, lladdr=p.mac, dst=p.vtep, state=NUD_PERMANENT, flags=NTF_SELF)
        ipr.route("replace", dst="0.0.0.0/0", gateway=p.via, oif=idx, table=p.mark, flags=RTNH_F_ONLINK)
        if current.get(p.mark) != (p.mark, p.iif):
            ipr.rule("add", family=2, priority=priority, fwmark=p.mark, fwmask=0xFFFFFFFF, table=p.mark, iifname=p.iif)


def reconcile_fdb(ipr: IPRoute, dev: str, wanted: dict[str, str], before: dict[str, str] | None) -> None:
    """The VXLAN device's static entries, MAC -> remote VTEP: `wanted` replaced, those only
    `before` held deleted (after a restart, `before` is unknown: nothing is deleted)."""
    idx = ifindex(ipr, dev)
    if idx is None:
        raise KernelError(f"device {dev} missing")
    for mac, vtep in wanted.items():
        if (before or {}).get(mac) != vtep:
            ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=vtep, state=NUD_PERMANENT, flags=NTF_SELF)
    for mac, vtep in (before or {}).items():
        if mac not in wanted:
            try:
                ipr.fdb("del", ifindex=idx, lladdr=mac, dst=vtep, flags=NTF_SELF)
            except Exception:
                pass


def reconcile_blackholes(ipr: IPRoute, prefixes: list[str], table: int = 254) -> None:
    have = set()
    for r in ipr.get_routes(family=2, table=table):
        if r["type"] == 6:  # RTN_BLACKHOLE
            have.add(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
    for p in set(prefixes) - have:
        ipr.route("replace", dst=p, type="blackhole", table=table)
    for p in have - set(prefixes):
        ipr.route("del", dst=p, type="blackhole", table=table)


RT_SCOPE_LINK = 253


def ensure_local_addresses(ipr: IPRoute, ifname: str, cidrs: list[str]) -> list[str]:
    """Hold these addresses (/32s) on `ifname`, with link scope: served to the link's
    neighbours, never picked as the source of other traffic. Returns those it added; an
    interface not there yet adds nothing (the caller tries again)."""
    idx = ifindex(ipr, ifname)
    if idx is None:
        return []
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
    added = []
    for cidr in cidrs:
        addr, plen = cidr.split("/")
        if addr not in have:
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen), scope=RT_SCOPE_LINK)
            added.append(cidr)
    return added


def interface_networks(ipr: IPRoute, ifname: str) -> tuple[str, ...]:
    """The IPv4 networks of `ifname`'s addresses ("172.30.1.5/24" -> "172.30.1.0/24"), () without it."""
    import ipaddress
    idx = ifindex(ipr, ifname)
    if idx is None:
        return ()
    return tuple(sorted({str(ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network)
                         for a in ipr.get_addr(index=idx, family=2)}))
