"""MUX agent: keeps this MUX's kernel data path equal to the desired state, then tells the
BGP helper which VIPs it may announce. Never touches packets itself."""
from __future__ import annotations

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
UPLINK = "eth1"  # the MUX's link to the edge (muxlab.render.links)
TABLES_FILE = RUN_DIR / "tables.json"


def apply(snap: Snapshot, me: str) -> list[str]:
    lab = snap.lab
    mux = next(m for m in lab.muxes if m.name == me)
    dev = datapath.vxlan_ifname(lab)
    with IPRoute() as ipr:
        ensure_vxlan(ipr, dev, lab.vni, str(mux.address))
        reconcile_policy_routes(ipr, [PolicyRoute(r.mark, r.dip, dev, UPLINK, r.mac, r.host_vtep) for r in datapath.dip_routes(lab)],
                                datapath.RULE_PRIORITY)
        # A VIP packet that no rule claims must die here, not bounce back to the edge.
        reconcile_blackholes(ipr, [f"{v.address}/32" for v in lab.vips])
    nft_apply(datapath.render_nft(snap))
    # what this MUX serves, for `muxlab status` and the "all MUX tables identical" checks
    write_atomic(TABLES_FILE, json.dumps({s.chain: list(s.table) for s in datapath.services(snap)}, sort_keys=True))
    return datapath.announceable_vips(snap, me)


def main() -> None:
    me = socket.gethostname()
    source = StateSource()
    while True:
        try:
            if source.changed():
                snap = source.read()
                vips = apply(snap, me)
                write_atomic(ANNOUNCE_FILE, json.dumps({"vips": vips, "at": time.time()}))
                print(f"[mux-agent {me}] data path programmed; announcing {vips}", flush=True)
        except Exception:
            # keep the last good data path; withdraw nothing on a transient error
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
