"""MUX agent: keeps this MUX's kernel data path equal to the desired state in the managers'
OVSDB, then tells the BGP helper which VIPs it may announce. Never touches packets itself.

It monitors the tables it needs (the southbound facts the managers compiled, probe results,
its own drain flag) and sleeps until the server sends a change or a host's liveness changes
(muxlab.node.liveness: beacons on the underlay, not the database). When every manager is
unreachable it keeps the facts it has and still takes dead hosts out; it reports to the
managers when one answers again."""
from __future__ import annotations

import json
import socket
import time

from pyroute2 import IPRoute

from muxlab.datapath.conventions import (ANNOUNCE_FILE, MAGLEV_TABLES_FILE, RULE_PRIORITY, UPLINK_IF, maglev_report,
                                         vxlan_ifname)
from muxlab.fabric.lab import Lab, load_lab
from muxlab.lb.facts import Facts
from muxlab.node.desired import FACT_COLUMNS, FactsReader, mtu_remedies, nb_cfg, watch
from muxlab.node.kernel import PolicyRoute, ensure_vxlan, nft_converge, reconcile_blackholes, reconcile_policy_routes
from muxlab.node.liveness import Listener
from muxlab.node.ovsdb import Db, managers_remote, ok
from muxlab.node.runtime import FABRIC_PATH, RUN_DIR, run_path, write_atomic

from . import datapath, fastpath, proxy

ANNOUNCE_PATH = run_path(ANNOUNCE_FILE)
TABLES_PATH = run_path(MAGLEV_TABLES_FILE)   # where the operator's tools read it

TABLES = {**FACT_COLUMNS, "Backend_Health": ["host", "vm", "probe", "up"],
          "Mux": ["name", "drained", "nb_cfg", "synced_at", "tables_digest", "announced", "dead_hosts"]}
# columns this agent writes: no wake-up for them
QUIET = [("Mux", c) for c in ("nb_cfg", "synced_at", "tables_digest", "announced", "dead_hosts")]
# HAProxy's connections to VIPs (proxyProtocol rules) leave from the MUX's address: their first
# route lookup must find a route (any: the reroute chain then marks them for their DIP), not
# the VIP blackholes of the main table (PROXY_RULE_PRIORITY, after the fwmark rules, before
# main); once marked, a DIP's table takes them (LOCAL_MARK_PRIORITY: the fwmark rules match
# only what arrives on the uplink, and an unrestricted one would loop the VXLAN packet itself).
LOCAL_MARK_PRIORITY, PROXY_RULE_PRIORITY, PROXY_TABLE = RULE_PRIORITY - 1, RULE_PRIORITY + 1, 101


def desired(fabric: Lab, me: str, facts: Facts, tables: list[datapath.RuleTable], remedies: frozenset[str]) -> tuple:
    mux = next(m for m in fabric.muxes if m.name == me)
    dev = vxlan_ifname(fabric.vni)
    routes = tuple(PolicyRoute(r.mark, r.dip, dev, UPLINK_IF, r.mac, r.host_vtep) for r in datapath.dip_routes(fabric))
    blackholes = tuple(f"{v}/32" for v in facts.vips)
    vip_space = (str(fabric.public_vips), str(fabric.vnet))
    return ((dev, fabric.vni, str(mux.address), fabric.overlay_mtu, vip_space), routes, blackholes,
            datapath.ruleset(fabric, facts, tables, remedies, str(mux.address)))


def apply(state: tuple, before: tuple | None) -> str:
    """Make the kernel hold `state`, knowing it holds `before` (None: unknown, as after a
    restart). Only the parts that changed are touched; nft takes the difference of the two
    tables in one transaction, or the whole table when that cannot be done. Says which."""
    link, routes, blackholes, table = state
    old = before or (None, None, None, None)
    with IPRoute() as ipr:
        if link != old[0]:
            ensure_vxlan(ipr, *link[:4])
            proxy_route(ipr, link[0], link[2], link[4])
        if routes != old[1]:
            reconcile_policy_routes(ipr, list(routes), RULE_PRIORITY)
            local_marks(ipr, [r.mark for r in routes], link[2], link[4])
        if blackholes != old[2]:
            # a VIP packet that no rule claims must die here, not bounce back to the edge
            reconcile_blackholes(ipr, list(blackholes))
    return nft_converge(table, old[3], lambda line: print(f"[mux-agent] {line}", flush=True))


def proxy_route(ipr: IPRoute, dev: str, address: str, vip_space: tuple[str, ...]) -> None:
    """From this MUX's address to VIP space: table PROXY_TABLE, a route into the overlay."""
    have = {(r.get_attr("FRA_DST"), r.get("dst_len")) for r in ipr.get_rules(family=2)
            if r.get_attr("FRA_PRIORITY") == PROXY_RULE_PRIORITY}
    for net in vip_space:
        dst, plen = net.split("/")
        if (dst, int(plen)) not in have:
            ipr.rule("add", family=2, priority=PROXY_RULE_PRIORITY, src=address, src_len=32, dst=dst, dst_len=int(plen),
                     table=PROXY_TABLE)
    ipr.route("replace", dst="0.0.0.0/0", oif=ipr.link_lookup(ifname=dev)[0], table=PROXY_TABLE)


def local_marks(ipr: IPRoute, marks: list[int], address: str, vip_space: tuple[str, ...]) -> None:
    """From this MUX's address to VIP space with a DIP's mark: that DIP's table."""
    want = {(m, *net.split("/")) for m in marks for net in vip_space}
    have = {(r.get_attr("FRA_FWMARK"), r.get_attr("FRA_DST"), str(r.get("dst_len"))): r
            for r in ipr.get_rules(family=2) if r.get_attr("FRA_PRIORITY") == LOCAL_MARK_PRIORITY}
    for key in set(have) - want:
        m, dst, plen = key
        ipr.rule("del", family=2, priority=LOCAL_MARK_PRIORITY, fwmark=m, fwmask=0xFFFFFFFF, src=address, src_len=32,
                 dst=dst, dst_len=int(plen), table=m)
    for m, dst, plen in want - set(have):
        ipr.rule("add", family=2, priority=LOCAL_MARK_PRIORITY, fwmark=m, fwmask=0xFFFFFFFF, src=address, src_len=32,
                 dst=dst, dst_len=int(plen), table=m)


def tables_report(tables: list[datapath.RuleTable], before: dict | None) -> dict:
    """The report of the tables just programmed; a map keeps the change time `before` gave it
    while its buckets stay the same."""
    now = time.time()
    # once per map, not per rule: 2000 rules sharing one 65537-bucket map copied it 2000 times
    # (0.4 s of every change)
    distinct = {s.table_name: s.table for s in tables}
    maps = {name: list(table) for name, table in distinct.items()}
    old_maps, old_changed = (before or {}).get("maps", {}), (before or {}).get("changed_at", {})
    changed_at = {n: old_changed[n] if old_maps.get(n) == t and n in old_changed else now for n, t in maps.items()}
    return maglev_report({s.rule.key: s.table_name for s in tables}, maps, changed_at, now)


class MuxAgent:
    def __init__(self, me: str, fabric: Lab, db: Db, liveness: Listener, redirector: "fastpath.Redirector | None" = None):
        self.me, self.fabric, self.db = me, fabric, db
        self.redirector = redirector
        self.facts: Facts | None = None
        self.reader = FactsReader()
        self.liveness = liveness
        self.inputs = None            # what the last computation was made from
        self.applied = None
        self.announced: list[str] | None = None
        self.digest = ""
        self.last_report: dict | None = None   # the last tables report
        self.reported: tuple | None = None
        self.haproxy = proxy.Haproxy(RUN_DIR)
        self.address = str(next(m for m in fabric.muxes if m.name == me).address)

    def health(self) -> datapath.Health:
        me = self.db.row("Mux", name=self.me)
        # a host can only claim its own VMs: a row whose host is not the VM's host is ignored
        probes = {(r.vm, r.probe): r.up for r in self.db.rows("Backend_Health") if self.fabric.runs(r.host, r.vm)}
        return datapath.Health(probes, self.liveness.dead(), bool(me and me.drained))

    def step(self) -> None:
        if self.db.connected_since is None:
            return   # never had the facts: program nothing rather than an empty data path
        facts = self.reader.read(self.db)
        if self.redirector and facts is not self.facts:
            self.redirector.update(facts)   # withdraws the redirects these facts no longer back
        self.facts = facts
        health = self.health()
        remedies = mtu_remedies(self.db, self.fabric)
        inputs = (self.reader.key, tuple(sorted(health.probes.items())), health.dead_hosts, health.drained, remedies)
        if inputs != self.inputs:
            tables = datapath.rule_tables(self.fabric, facts, health)
            want = desired(self.fabric, self.me, facts, tables, remedies)
            if want != self.applied:
                how = apply(want, self.applied)
                self.applied = want
                report = self.last_report = tables_report(tables, self.last_report)
                self.digest = report["digest"]
                write_atomic(TABLES_PATH, json.dumps(report, sort_keys=True))
                print(f"[mux-agent {self.me}] data path programmed ({how}; tables {self.digest})", flush=True)
            said = self.haproxy.apply(proxy.config(facts, self.address))
            if said:
                print(f"[mux-agent {self.me}] {said}", flush=True)
            vips = datapath.announceable_vips(tables, health, facts)
            if vips != self.announced:
                write_atomic(ANNOUNCE_PATH, json.dumps({"vips": vips, "at": time.time()}))
                self.announced = vips
                print(f"[mux-agent {self.me}] announcing {vips}", flush=True)
            self.inputs = inputs
        self.report(nb_cfg(self.db), health.dead_hosts)

    def report(self, cfg: int, dead: frozenset[str]) -> None:
        """Tell the managers what this MUX has applied (its nb_cfg: `muxlab status`, and how
        the API knows a change reached the data path) and which hosts it finds dead."""
        state = (cfg, self.digest, tuple(self.announced or ()), tuple(sorted(dead)))
        if state == self.reported or not self.db.synced:
            return
        # update only: the managers create a MUX's row (manager/rbac.py); until then nothing is reported
        status, row = self.db.transact(lambda txn: self.db.update(
            txn, "Mux", {"name": self.me}, nb_cfg=cfg, synced_at=time.time(), tables_digest=self.digest,
            announced=list(self.announced or ()), dead_hosts=sorted(dead)))
        if ok(status) and row is not None:
            self.reported = state


def main() -> None:
    me = socket.gethostname()
    fabric = load_lab(FABRIC_PATH)
    db = Db(managers_remote(len(fabric.managers)), TABLES, quiet=QUIET)
    mux = next(m for m in fabric.muxes if m.name == me)
    liveness = Listener(str(mux.address), {h.name: str(h.address) for h in fabric.hosts}).start()
    redirector = fastpath.Redirector(fabric, str(mux.address)).start() if fabric.fastpath else None
    agent = MuxAgent(me, fabric, db, liveness, redirector)
    print(f"[mux-agent {me}] watching the managers' OVSDB and the hosts' liveness beacons", flush=True)
    # with no manager synced, keep forwarding with the facts we have, and still follow liveness
    watch(db, agent.step, lambda: None, (liveness.fileno(),))


if __name__ == "__main__":
    main()
