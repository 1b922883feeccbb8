"""Host agent: programs this host's VXLAN termination, NAT and routes to its VMs from the
desired state, probes its VMs, and reports their health (a heartbeat every second).

Restart-safe: every step is idempotent and the nft tables are replaced atomically, so
conntrack's NAT bindings (established flows) survive a restart of the agent."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback

from pyroute2 import IPRoute

from muxlab.kernel import PolicyRoute, ensure_bridge_ports, ensure_vxlan, nft_apply, reconcile_policy_routes
from muxlab.render import node_plan
from muxlab.state import StateSource, write_atomic
from mux.datapath import RULE_PRIORITY, dip_mark, vxlan_ifname

from . import datapath
from .probes import Prober, probe_targets

HEARTBEAT = 1.0


def desired(lab, me: str) -> tuple:
    host = lab.host(me)
    routes = tuple(PolicyRoute(dip_mark(vm.ip), str(vm.ip), datapath.BRIDGE, vxlan_ifname(lab)) for vm in lab.vms_on(me))
    return (vxlan_ifname(lab), lab.vni, str(host.address)), routes, datapath.render_nft(lab, me)


def apply(state: tuple) -> None:
    (dev, vni, local), routes, ruleset = state
    with IPRoute() as ipr:
        ensure_vxlan(ipr, dev, vni, local)
        reconcile_policy_routes(ipr, list(routes), RULE_PRIORITY)
    nft_apply(ruleset)


def main() -> None:
    me = socket.gethostname()
    source = StateSource(watch_reports=False)
    prober = Prober()
    applied, targets, lab, ports = None, {}, None, []
    next_report = 0.0
    report_path = source.store / "health" / f"{me}.json"
    while True:
        try:
            if source.changed() or lab is None:
                lab = source.read().lab
                want = desired(lab, me)
                if want != applied:
                    apply(want)
                    applied = want
                    print(f"[host-agent {me}] data path programmed for {[v.name for v in lab.vms_on(me)]}", flush=True)
                targets = probe_targets(lab, me)
                prober.sync(targets)
                ports = node_plan(lab, me).bridge[1]  # the VM-facing ports of this host's vswitch
            if any(os.path.exists(f"/sys/class/net/{p}") and not os.path.exists(f"/sys/class/net/{p}/master") for p in ports):
                with IPRoute() as ipr:
                    fixed = ensure_bridge_ports(ipr, datapath.BRIDGE, ports)
                if fixed:
                    print(f"[host-agent {me}] re-attached {fixed} to {datapath.BRIDGE}", flush=True)
            changed = prober.run_due(targets)
            if changed:
                down = sorted(f"{vm}/{p}" for (vm, p), st in prober.states.items() if not st.up)
                print(f"[host-agent {me}] rotation changed; out of rotation: {down or 'none'}", flush=True)
            if changed or time.monotonic() >= next_report:
                write_atomic(report_path, json.dumps({"host": me, "at": time.time(), "vms": prober.report()}))
                next_report = time.monotonic() + HEARTBEAT
        except Exception:
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
