"""Host agent: programs this host's VXLAN termination, NAT and routes to its VMs from the
desired state, and re-applies whenever it changes. Restart-safe: every step is idempotent
and the nft tables are replaced atomically, so conntrack's NAT bindings (established flows)
survive a restart."""
from __future__ import annotations

import socket
import sys
import time
import traceback

from pyroute2 import IPRoute

from muxlab.kernel import PolicyRoute, ensure_vxlan, nft_apply, reconcile_policy_routes
from muxlab.state import StateSource
from mux.datapath import RULE_PRIORITY, dip_mark, vxlan_ifname

from . import datapath


def apply(lab, me: str) -> None:
    host = lab.host(me)
    with IPRoute() as ipr:
        ensure_vxlan(ipr, vxlan_ifname(lab), lab.vni, str(host.address))
        reconcile_policy_routes(ipr, [PolicyRoute(dip_mark(vm.ip), str(vm.ip), datapath.BRIDGE, vxlan_ifname(lab)) for vm in lab.vms_on(me)],
                                RULE_PRIORITY)
    nft_apply(datapath.render_nft(lab, me))


def main() -> None:
    me = socket.gethostname()
    source = StateSource()
    while True:
        try:
            if source.changed():
                snap = source.read()
                apply(snap.lab, me)
                print(f"[host-agent {me}] data path programmed for {[v.name for v in snap.lab.vms_on(me)]}", flush=True)
        except Exception:
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
