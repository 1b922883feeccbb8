"""`muxlab watch`: a terminal dashboard (rich) refreshed every second: BGP and BFD per MUX,
ECMP next hops per VIP, packets per second per MUX and per backend, probe states, managers,
and the last events (a fault injected, a backend out of rotation, a MUX withdrawn)."""
from __future__ import annotations

import json
import time
from collections import deque

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from ..datapath.conventions import MUX_TABLE, UPLINK_IF
from ..fabric.render import links
from . import lab as labmod
from .lab import LabRef


def counters(ref: LabRef, running: set[str]) -> dict[str, int]:
    """Packet counters: each MUX's VIP packets (`mux:NAME`) and each VM's packets delivered by
    its host (`vm:NAME`, the host port's transmit counter)."""
    out = {}
    for m in ref.lab.muxes:
        if m.name in running:
            proc = labmod.docker_exec(ref, m.name, ["nft", "-j", "list", "counter", "ip", MUX_TABLE, "vip_packets"],
                                      check=False)
            try:
                out[f"mux:{m.name}"] = json.loads(proc.stdout)["nftables"][1]["counter"]["packets"]
            except (ValueError, KeyError, IndexError):
                pass
    ports = {(l.a, l.a_if): l.b for l in links(ref.lab) if ref.lab.role_of(l.b) == "vm" and l.b_if == UPLINK_IF}
    for h in ref.lab.hosts:
        if h.name not in running:
            continue
        proc = labmod.docker_exec(ref, h.name, ["ip", "-j", "-s", "link"], check=False)
        try:
            for link in json.loads(proc.stdout):
                vm = ports.get((h.name, link["ifname"]))
                if vm:
                    out[f"vm:{vm}"] = link["stats64"]["tx"]["packets"]
        except (ValueError, KeyError):
            pass
    return out


def bfd_peers(ref: LabRef) -> dict[str, str]:
    """MUX -> BFD session state as the edge's bfdd sees it."""
    proc = labmod.docker_exec(ref, "edge", ["vtysh", "-c", "show bfd peers json"], check=False)
    by_addr = {str(m.address): m.name for m in ref.lab.muxes}
    try:
        return {by_addr.get(p["peer"], p["peer"]): p["status"] for p in json.loads(proc.stdout)}
    except (ValueError, KeyError, TypeError):
        return {}


def snapshot(ref: LabRef) -> dict:
    st = labmod.status(ref)
    running = {n["node"] for n in st["nodes"] if n["state"] == "running"}
    st["bfd"] = bfd_peers(ref) if "edge" in running else {}
    st["counters"] = counters(ref, running)
    st["at"] = time.time()
    return st


def events(prev: dict | None, cur: dict) -> list[str]:
    """What changed between two snapshots, in words."""
    if prev is None:
        return []
    out = []
    for n in cur["nodes"]:
        was = next((p["state"] for p in prev["nodes"] if p["node"] == n["node"]), None)
        if was and was != n["state"]:
            out.append(f"{n['node']}: container {was} → {n['state']}")
    for f in sorted(set(cur["faults"]) - set(prev["faults"])):
        out.append(f"fault injected on {f}")
    for f in sorted(set(prev["faults"]) - set(cur["faults"])):
        out.append(f"{f} healed")
    for m in sorted(set(cur["bgp"]) | set(prev["bgp"])):
        if prev["bgp"].get(m) != cur["bgp"].get(m):
            out.append(f"BGP {m}: {prev['bgp'].get(m, '-')} → {cur['bgp'].get(m, '-')}")
    for m in sorted(set(cur.get("bfd", {})) | set(prev.get("bfd", {}))):
        if prev.get("bfd", {}).get(m) != cur.get("bfd", {}).get(m):
            out.append(f"BFD {m}: {prev.get('bfd', {}).get(m, '-')} → {cur.get('bfd', {}).get(m, '-')}")
    for vip, hops in cur["vips"].items():
        before = prev["vips"].get(vip)
        if before is not None and before != hops:
            gone, new = sorted(set(before) - set(hops)), sorted(set(hops) - set(before))
            out.append(f"VIP {vip}: " + ", ".join([f"{m} withdrawn" for m in gone] + [f"{m} announces" for m in new]))
    for vm, p in cur["probes"].items():
        for probe, s in p["probes"].items():
            was = prev["probes"].get(vm, {}).get("probes", {}).get(probe)
            if was and was["up"] != s["up"]:
                out.append(f"{vm} {'back in' if s['up'] else 'out of'} rotation ({probe}"
                           f"{': ' + s['last_error'] if s['last_error'] and not s['up'] else ''})")
    for m in sorted(set(cur["drained"]) ^ set(prev["drained"])):
        out.append(f"{m} {'drained' if m in cur['drained'] else 'undrained'}")
    for m, info in cur["managers"].items():
        was = prev["managers"].get(m, {}).get("role")
        if was != info.get("role"):
            out.append(f"manager {m}: {was or 'down'} → {info.get('role') or 'down'}")
    return out


def rates(prev: dict | None, cur: dict) -> dict[str, float]:
    if prev is None:
        return {}
    dt = max(1e-3, cur["at"] - prev["at"])
    return {k: max(0.0, (v - prev["counters"].get(k, v)) / dt) for k, v in cur["counters"].items()}


def render(cur: dict, pps: dict[str, float], log: deque) -> Group:
    muxes = Table(title="MUXes", expand=True)
    for col in ("MUX", "BGP", "BFD", "pkt/s", "table"):
        muxes.add_column(col)
    for m, state in sorted(cur["bgp"].items()):
        bfd = cur.get("bfd", {}).get(m, "-")
        colour = "green" if state == "Established" else "red"
        drained = " (drained)" if m in cur["drained"] else ""
        muxes.add_row(m, f"[{colour}]{state}[/{colour}]{drained}", f"[{'green' if bfd == 'up' else 'red'}]{bfd}[/]",
                      f"{pps.get('mux:' + m, 0):.0f}", (cur["mux_tables"].get(m) or "-")[:12])
    vips = Table(title="ECMP next hops on the edge", expand=True)
    vips.add_column("VIP")
    vips.add_column("next hops")
    for vip, hops in cur["vips"].items():
        vips.add_row(vip, ", ".join(hops) or "[red](no route)[/red]")
    backends = Table(title="backends", expand=True)
    for col in ("VM", "host", "probes", "pkt/s in"):
        backends.add_column(col)
    for vm, p in cur["probes"].items():
        probes = ", ".join(f"[{'green' if s['up'] else 'red'}]{n.split('/')[-1]}[/]" for n, s in p["probes"].items()) or "-"
        host = p["host"] if p["host_alive"] else f"[red]{p['host']} DEAD[/red]"
        backends.add_row(vm, host, probes, f"{pps.get('vm:' + vm, 0):.0f}")
    managers = Table(title="managers", expand=True)
    managers.add_column("manager")
    managers.add_column("Raft role")
    for m, info in cur["managers"].items():
        managers.add_row(m, info.get("role") or f"[red]{info.get('status', 'down')}[/red]")
    ev = Panel("\n".join(log) or "(nothing yet)", title="last events")
    header = f"lab {cur['lab']}   {time.strftime('%H:%M:%S')}   faults: {', '.join(cur['faults']) or 'none'}   (Ctrl-C quits)"
    return Group(header, muxes, vips, backends, managers, ev)


def watch(ref: LabRef, interval: float = 1.0, once: bool = False) -> None:
    log: deque = deque(maxlen=10)
    prev = None
    with Live(refresh_per_second=4, screen=not once) as live:
        while True:
            cur = snapshot(ref)
            for e in events(prev, cur):
                log.appendleft(f"{time.strftime('%H:%M:%S')} {e}")
            live.update(render(cur, rates(prev, cur), log))
            if once and prev is not None:
                return
            prev = cur
            time.sleep(max(0.0, interval - (time.time() - cur["at"])))
