"""MUX agent: keeps this MUX's kernel data path equal to the desired state, then tells the
BGP helper which VIPs it may announce. Never touches packets itself.

It re-reads the desired state every 250 ms (host liveness is a matter of time, not only of
file changes) and touches the kernel only when what it would program differs."""
from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import traceback

from pyroute2 import IPRoute

from muxlab.kernel import PolicyRoute, ensure_vxlan, nft_apply, reconcile_blackholes, reconcile_policy_routes
from muxlab.state import RUN_DIR, Snapshot, StateSource, write_atomic

from . import datapath

ANNOUNCE_FILE = RUN_DIR / "announce.json"
TABLES_FILE = RUN_DIR / "tables.json"
UPLINK = "eth1"  # the MUX's link to the edge (muxlab.render.links)
PERIOD = 0.25


def desired(snap: Snapshot, me: str, svcs: list[datapath.Service]) -> tuple:
    lab = snap.lab
    mux = next(m for m in lab.muxes if m.name == me)
    dev = datapath.vxlan_ifname(lab)
    routes = tuple(PolicyRoute(r.mark, r.dip, dev, UPLINK, r.mac, r.host_vtep) for r in datapath.dip_routes(lab))
    blackholes = tuple(f"{v.address}/32" for v in lab.vips)
    return (dev, lab.vni, str(mux.address)), routes, blackholes, datapath.render_nft(snap, svcs)


def apply(state: tuple) -> None:
    (dev, vni, local), routes, blackholes, ruleset = state
    with IPRoute() as ipr:
        ensure_vxlan(ipr, dev, vni, local)
        reconcile_policy_routes(ipr, list(routes), datapath.RULE_PRIORITY)
        # a VIP packet that no rule claims must die here, not bounce back to the edge
        reconcile_blackholes(ipr, list(blackholes))
    nft_apply(ruleset)


def tables_report(svcs: list[datapath.Service]) -> dict:
    tables = {s.chain: list(s.table) for s in svcs}
    digest = hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()[:16]
    return {"digest": digest, "tables": tables, "at": time.time()}


def main() -> None:
    me = socket.gethostname()
    source = StateSource()
    applied, announced = None, None
    while True:
        try:
            snap = source.read()
            svcs = datapath.services(snap)  # the Maglev tables, computed once per cycle
            want = desired(snap, me, svcs)
            if want != applied:
                apply(want)
                applied = want
                report = tables_report(svcs)
                write_atomic(TABLES_FILE, json.dumps(report, sort_keys=True))
                print(f"[mux-agent {me}] data path programmed (tables {report['digest']})", flush=True)
            vips = datapath.announceable_vips(snap, me, svcs)
            if vips != announced:
                write_atomic(ANNOUNCE_FILE, json.dumps({"vips": vips, "at": time.time()}))
                announced = vips
                print(f"[mux-agent {me}] announcing {vips}", flush=True)
        except Exception:
            # keep the last good data path and announcement on a transient error
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)
        time.sleep(PERIOD)


if __name__ == "__main__":
    main()
