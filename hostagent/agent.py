"""Host agent: programs this host's VXLAN termination, NAT and routes to its VMs from the
southbound facts in the managers' OVSDB (its own VMs' rows only: conditional monitoring),
probes its VMs and writes the results there (Backend_Health). It tells the MUXes it is alive
on the underlay (muxlab.node.liveness), not through the database: at rest it writes nothing.

Restart-safe: every step is idempotent; the nft tables are loaded whole once, atomically,
then changed by their differences (muxlab.datapath.nfttable), so
conntrack's NAT bindings (established flows) survive a restart of the agent. With every
manager unreachable it keeps its data path and goes on probing; it reports when one answers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from pyroute2 import IPRoute

from muxlab.datapath.conventions import HOST_BRIDGE, HOST_TABLE, MGMT_IF, RULE_PRIORITY, dip_mac, dip_mark, vxlan_ifname
from muxlab.fabric.lab import Lab, load_lab
from muxlab.fabric.render import node_plan
from muxlab.lb.facts import Facts
from muxlab.node.desired import FACT_COLUMNS, FactsReader, mtu_remedies, nb_cfg, own_rows, watch
from muxlab.node.liveness import Beacon
from muxlab.node.kernel import (PolicyRoute, ensure_bridge_ports, ensure_vxlan, interface_networks, nft_converge,
                                reconcile_fdb, reconcile_policy_routes)
from muxlab.node.ovsdb import Db, managers_remote
from muxlab.node.runtime import FABRIC_PATH

from . import datapath, fastpath, imds, wireserver
from .usage import nft_counters, snat_ports_in_use
from .probes import Prober, probe_targets, reason_code

TABLES = {**FACT_COLUMNS, "Backend_Health": None, "Chassis": ["name", "nb_cfg", "synced_at", "snat_usage"]}
USAGE_EVERY_S = 3.0   # SNAT usage (a conntrack listing), written when it changed
# this agent writes these and need not be woken when anybody does
QUIET = ([("Backend_Health", c) for c in ("host", "vm", "probe", "up", "reason", "code", "since")]
         + [("Chassis", c) for c in ("nb_cfg", "synced_at", "snat_usage")])


def desired(fabric: Lab, facts: Facts, me: str, remedies: frozenset[str], management: tuple[str, ...] = ()) -> tuple:
    host = fabric.host(me)
    dev = vxlan_ifname(fabric.vni)
    routes = tuple(PolicyRoute(dip_mark(vm.ip), str(vm.ip), HOST_BRIDGE, dev) for vm in fabric.vms_on(me))
    # Fastpath puts a flow on the overlay to the other end's host by its DIP MAC: every other
    # host's VM is in the FDB, as on a MUX
    peers = tuple(sorted((dip_mac(vm.ip), str(fabric.host(vm.host).address)) for vm in fabric.vms
                         if vm.host != me)) if fabric.fastpath else ()
    return ((dev, fabric.vni, str(host.address), fabric.overlay_mtu), routes, peers,
            datapath.tables(fabric, facts, me, remedies, management))


def management_networks() -> tuple[str, ...]:
    """The management interface's networks (eth0, Docker's): no VM may reach them."""
    with IPRoute() as ipr:
        return interface_networks(ipr, MGMT_IF)


def apply(state: tuple, before: tuple | None) -> str:
    """Make the kernel hold `state`, knowing it holds `before` (None: unknown, as after a
    restart): each nft table by its difference (or whole), as the MUX does. Says how."""
    (dev, vni, local, mtu), routes, peers, tables = state
    old_tables = before[3] if before else (None,) * len(tables)
    with IPRoute() as ipr:
        ensure_vxlan(ipr, dev, vni, local, mtu)
        reconcile_policy_routes(ipr, list(routes), RULE_PRIORITY)
        reconcile_fdb(ipr, dev, dict(peers), dict(before[2]) if before else None)
    log = lambda line: print(f"[host-agent] {line}", flush=True)   # noqa: E731
    return "; ".join(f"{t.name}: {nft_converge(t, old, log)}" for t, old in zip(tables, old_tables))


def forget_self_mapped(vips: set[str], dips: list[str]) -> None:
    """Delete the conntrack entries of flows to `vips` mapped back to the VM that sent them.
    Such an entry holds the NAT decided at its first packet, without the hairpin SNAT: a VM
    reusing that source port would be caught by it, and fail, until it expires."""
    for vip in vips:
        for dip in dips:
            subprocess.run(["conntrack", "-D", "--orig-src", dip, "--orig-dst", vip, "--reply-src", dip],
                           capture_output=True, timeout=5)


def reason(st) -> str:
    """Why a backend is out of rotation, as Backend_Health holds it ('' while it is in)."""
    return "" if st.up else (st.last_error or "probe failed")


class HostAgent:
    def __init__(self, me: str, fabric: Lab, db: Db, redirects: "fastpath.Receiver | None" = None):
        self.me, self.fabric, self.db = me, fabric, db
        self.redirects = redirects
        self.reader = FactsReader()
        self.reports = wireserver.Reports(fabric, me)   # its VMs' own health reports (the guest agent probe)
        self.prober = Prober(self.reports.answer)
        self.targets: dict = {}
        self.applied = None
        self.facts: Facts | None = None
        self.ports = node_plan(fabric, me).bridge[1]  # the VM-facing ports of this host's vswitch
        self.management = management_networks()
        self.metadata = imds.Metadata(fabric, me)   # what this host's IMDS answers its VMs
        self.next_usage = 0.0
        self.reported_cfg = -1
        self.remedies: frozenset[str] | None = None
        self.snat_usage = ""
        self.snat_seen: tuple[int | None, set] = (None, set())   # (snat_new counter, ports in use) at the last look

    def converge(self) -> None:
        facts = self.reader.read(self.db)
        remedies = mtu_remedies(self.db, self.fabric)
        if facts is self.facts and remedies == self.remedies:
            return
        self.remedies = remedies
        self.metadata.update(facts)
        want = desired(self.fabric, facts, self.me, remedies, self.management)
        if want != self.applied:
            how = apply(want, self.applied)
            self.applied = want
            newly = set(map(str, facts.hairpin_snat_vips)) - set(map(str, self.facts.hairpin_snat_vips if self.facts else ()))
            if newly:
                forget_self_mapped(newly, [str(vm.ip) for vm in self.fabric.vms_on(self.me)])
                print(f"[host-agent {self.me}] hairpin SNAT on for {sorted(newly)}: self-mapped flows forgotten", flush=True)
            print(f"[host-agent {self.me}] data path programmed ({len(datapath.local_rules(self.fabric, facts, self.me))} "
                  f"local rule bindings; {how})", flush=True)
        if self.redirects and facts is not self.facts:
            self.redirects.update(facts)
        self.targets = probe_targets(self.fabric, facts, self.me)
        self.prober.sync(self.targets)
        self.facts = facts

    def replug(self) -> None:
        if any(os.path.exists(f"/sys/class/net/{p}") and not os.path.exists(f"/sys/class/net/{p}/master") for p in self.ports):
            with IPRoute() as ipr:
                fixed = ensure_bridge_ports(ipr, HOST_BRIDGE, self.ports)
            if fixed:
                print(f"[host-agent {self.me}] re-attached {fixed} to {HOST_BRIDGE}", flush=True)

    def usage(self) -> str:
        """Outbound SNAT of this host's VMs, as JSON: per VM its VIP, range, the ports its
        connections hold now (conntrack) and the connections refused for want of one.
        conntrack is listed only when it can have changed: while no connection was NATed
        since the last look and none was held then, nothing can be held now."""
        snats = [x for x in (self.facts.snat if self.facts else ()) if x.vm in {vm.name for vm in self.fabric.vms_on(self.me)}]
        if not snats:
            return ""
        counters = nft_counters(HOST_TABLE)
        new = counters.get(datapath.SNAT_NEW)
        if new is None or new != self.snat_seen[0] or self.snat_seen[1]:
            self.snat_seen = (new, snat_ports_in_use())
        in_use = self.snat_seen[1]
        out = {x.vm: {"vip": str(x.vip), "ranges": [[x.lo, x.hi]], "ports": x.ports,
                      "in_use": len({p for (vip, p) in in_use if vip == str(x.vip) and x.lo <= p <= x.hi}),
                      "failures": counters.get(datapath.counter_name(x.vm), 0)} for x in snats}
        return json.dumps(out, sort_keys=True)

    def report(self, usage_due: bool) -> None:
        """Write what differs from what the database holds: probe results, the configuration
        applied, SNAT usage. Nothing when nothing changed."""
        db = self.db
        # every few seconds: listing conntrack costs the data path time too
        usage = self.usage() if usage_due else self.snat_usage
        states = {key: st for key, st in self.prober.states.items() if key in self.targets}
        stale = [r for r in db.rows("Backend_Health") if r.host == self.me and (r.vm, r.probe) not in states]
        held = {(r.vm, r.probe): r for r in db.rows("Backend_Health")}
        code = {key: reason_code(st, self.targets[key][0]) for key, st in states.items()}
        changed = [((vm, probe), st) for (vm, probe), st in states.items()
                   if (r := held.get((vm, probe))) is None
                   or (r.up, r.reason, r.code, r.host) != (st.up, reason(st), code[(vm, probe)], self.me)]
        # applied means the VMs have it too: they learn their ports from IMDS, not from OVSDB
        cfg = self.reported_cfg if self.metadata.behind(time.monotonic()) and self.reported_cfg >= 0 else nb_cfg(db)
        if not (changed or stale or cfg != self.reported_cfg or usage != self.snat_usage):
            return

        def build(txn):
            for r in stale:
                r.delete()
            for (vm, probe), st in changed:
                db.upsert(txn, "Backend_Health", {"vm": vm, "probe": probe}, host=self.me, up=st.up,
                          reason=reason(st), code=code[(vm, probe)], since=st.since)
            extra = {"snat_usage": usage} if usage != self.snat_usage else {}
            if cfg != self.reported_cfg:
                extra |= {"nb_cfg": cfg, "synced_at": time.time()}
            # update only: the managers create a host's Chassis row (manager/rbac.py)
            if extra:
                db.update(txn, "Chassis", {"name": self.me}, **extra)

        status, _ = db.transact(build, timeout_s=2.0)
        if status in ("success", "unchanged"):
            self.reported_cfg = cfg
            self.snat_usage = usage

    def step(self, now: float) -> None:
        if self.db.synced:
            self.converge()
        self.replug()
        changed = self.prober.run_due(self.targets)
        if changed:
            down = sorted(f"{vm}/{p}" for (vm, p), st in self.prober.states.items() if not st.up)
            print(f"[host-agent {self.me}] rotation changed; out of rotation: {down or 'none'}", flush=True)
        usage_due = now >= self.next_usage
        if usage_due:
            self.next_usage = now + USAGE_EVERY_S
        if self.db.synced:
            self.report(usage_due)

    def next_wakeup(self, now: float) -> float:
        due = min(self.prober.due.values(), default=now + 1.0)
        # a VM still to read the new document: look again soon, to report it applied
        soon = now + (0.05 if self.metadata.behind(now) else 0.5)
        return max(0.0, min(due, self.next_usage, soon) - now)


def main() -> None:
    me = socket.gethostname()
    fabric = load_lab(FABRIC_PATH)
    # its own rows only: every host's rows to every host would grow with the square of
    # the hosts, and was what used the CPU of large labs at rest (docs/scaling.md)
    db = Db(managers_remote(len(fabric.managers)), TABLES, quiet=QUIET,
            conditions={"Chassis": [["name", "==", me]], "Backend_Health": [["host", "==", me]], **own_rows(me)})
    # alive for the MUXes whatever the managers do: beacons on the underlay, from the VTEP
    Beacon(me, str(fabric.host(me).address), [str(m.address) for m in fabric.muxes]).start()
    # Fastpath: the MUXes' redirects, installed in the kernel once per flow
    redirects = fastpath.Receiver(fabric, me).start() if fabric.fastpath else None
    agent = HostAgent(me, fabric, db, redirects)
    imds.serve(agent.metadata)   # its address is on the bridge: the node's network plan (render.NodePlan.platform)
    wireserver.serve(agent.reports)
    print(f"[host-agent {me}] IMDS on {imds.IMDS_ADDRESS}:{imds.IMDS_PORT}, WireServer on "
          f"{wireserver.PLATFORM_ADDRESS}:{wireserver.WIRESERVER_PORT}", flush=True)
    print(f"[host-agent {me}] watching the managers' OVSDB", flush=True)
    watch(db, lambda: agent.step(time.monotonic()), lambda: agent.next_wakeup(time.monotonic()))


if __name__ == "__main__":
    main()
