"""The manager's view of the OVSDB: load balancers in, validated whole, one transaction per
write. One thread owns the IDL (it is not thread-safe); API handlers hand it work through
`Store.call` and wait for the answer.

Every write checks the complete resulting set of load balancers against the fabric
(muxlab.lb.check) before anything is sent; the transaction then verifies that
Global.nb_cfg did not move since the check and bumps it, so two managers writing at once
cannot both pass a check that only one of them should: the loser retries on fresh data.

The same transaction carries the southbound rows compiled from the result (OVN's northd, run
inline: muxlab.lb.southbound, docs/southbound.md) and Global.southbound_digest, the digest
of the Load_Balancer rows they were compiled from. Rows written around the API (ovsdb-client
by hand) leave the digest behind; whichever manager sees that first compiles again.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import ovs.poller

from muxlab.fabric.lab import Lab, ModelError
from muxlab.lb import southbound
from muxlab.lb.allocation import allocate
from muxlab.lb.azure import LoadBalancer, canonical
from muxlab.lb.check import allocate_public_ips, check, frontend_addresses
from muxlab.lb.compiler import compile_each
from muxlab.lb.facts import Facts
from muxlab.lb.rows import RowReader, Rows, row_key

from muxlab.node.desired import FactsReader
from muxlab.node.ovsdb import Db

from .cluster import SOCK

# After the leader dies the others elect a new one within about a second, and this manager's
# IDL notices and reconnects within its inactivity probe (2 s): a write waits that long.
WRITE_DEADLINE_S = 12.0


def nb_digest(key: tuple) -> str:
    """The digest of the Load_Balancer rows (the row rule's key: every (name, spec,
    allocations)) that the southbound tables were compiled from."""
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


class NotFound(KeyError):
    pass


class Unavailable(RuntimeError):
    pass


class Store:
    def __init__(self, fabric: Lab, remote: str | None = None):
        self.fabric = fabric
        self.rows = RowReader(fabric)   # the row rule (muxlab.lb.rows)
        self.uncompiled: dict[str, str] = {}   # valid rows that do not compile: name -> reason
        self.reader = FactsReader()   # the southbound rows read back, as the agents read them
        self._digested: tuple[tuple, str] = ((), nb_digest(()))   # (row key, its digest): hashed once per change
        # This manager's own ovsdb-server, on its unix socket: no RBAC role there (full
        # access), while the agents' ssl: remotes only let a node write its own rows. A
        # follower forwards writes to the leader (the nb_cfg verify in _change_once keeps
        # concurrent writers correct), and when it loses the cluster (_Server: not connected)
        # the IDL drops to not-synced, so reads and writes answer 503 within their deadlines.
        # `remote`: only a unix: remote is used (tests); the agents' list is not.
        self.db = Db(remote if remote and remote.startswith("unix:") else f"unix:{SOCK}", None, leader_only=False)
        self.jobs: queue.Queue = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.thread = threading.Thread(target=self._loop, name="ovsdb", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ the DB thread

    def _loop(self) -> None:
        while True:
            poller = ovs.poller.Poller()
            self.db.idl.wait(poller)
            poller.fd_wait(self.wake_r, ovs.poller.POLLIN)
            poller.timer_wait(1000)
            poller.block()
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass
            if self.db.run():
                self._recompile_if_behind(self.db)
            while True:
                try:
                    fn, fut = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(self.db))
                    except BaseException as exc:  # handed to the waiting request
                        fut.set_exception(exc)

    def call(self, fn: Callable[[Db], Any], timeout: float = 15.0) -> Any:
        fut: Future = Future()
        self.jobs.put((fn, fut))
        os.write(self.wake_w, b"x")
        try:
            return fut.result(timeout)
        except FutureTimeout:
            if fut.cancel():   # never started: nothing happened
                raise Unavailable(f"this manager's database thread is busy (no answer within {timeout:.0f} s)") from None
            return fut.result()   # started: its outcome, whatever it is, is the answer (a write may have committed)

    # ------------------------------------------------------------ reads (DB thread)

    def read_rows(self, db: Db) -> Rows:
        """The Load_Balancer rows by the row rule: the valid ones, and the invalid ones (written
        around the API) skipped with their reason. Read again only when a row changed."""
        return self.rows.read(db.rows("Load_Balancer"))

    def held(self, db: Db) -> dict[str, LoadBalancer]:
        return dict(self.read_rows(db).lbs)

    def invalid(self) -> list[dict]:
        """The rows skipped as last read or compiled ([{name, reason}]); any thread."""
        bad = {i["name"]: i["reason"] for i in self.rows.last.invalid} | self.uncompiled
        return [{"name": n, "reason": r} for n, r in sorted(bad.items(), key=lambda kv: str(kv[0]))]

    def invalid_reason(self, name: str) -> str | None:
        """Why the row `name` was skipped as last read (None: it is not an invalid row); any thread."""
        return self.rows.last.invalid_reason(name) or self.uncompiled.get(name)

    def facts(self, db: Db) -> Facts:
        """The southbound rows as the agents read them (what the health, SNAT and port-mapping
        answers report): the agents' own reader."""
        return self.reader.read(db)

    # ------------------------------------------------------------ southbound (DB thread)

    def _southbound(self, lbs: dict[str, LoadBalancer], allocations: dict[str, dict]) -> southbound.Rows:
        facts, self.uncompiled = compile_each(lbs, self.fabric, allocations)
        return southbound.rows_of(facts, lambda vm: self.fabric.vm(vm).host)

    @staticmethod
    def _write_southbound(db: Db, txn, want: southbound.Rows) -> int:
        """Make the southbound tables hold `want`, in `txn`; the number of rows touched."""
        by_key = {t: {tuple(getattr(r, k) for k in keys): r for r in db.rows(t)}
                  for t, (keys, _) in southbound.TABLES.items()}
        held = {t: {k: {c: getattr(r, c) for c in southbound.TABLES[t][1]} for k, r in rows.items()}
                for t, rows in by_key.items()}
        d = southbound.diff(held, want)
        for table, key in d.delete:
            by_key[table][key].delete()
        for table, key, cols in d.update:
            for c, v in cols.items():
                setattr(by_key[table][key], c, v)
        for table, cols in d.insert:
            row = txn.insert(db.idl.tables[table])
            for c, v in cols.items():
                setattr(row, c, v)
        return len(d.insert) + len(d.update) + len(d.delete)

    def _recompile_if_behind(self, db: Db) -> None:
        """Rows changed around the API (the digest is behind them): compile them again. Every
        manager may try; the digest's verify lets one win, the others find nothing to do."""
        g = db.rows("Global")
        if not (db.synced and g and g[0].seeded):
            return
        rows = self.read_rows(db)
        if self._digested[0] is not rows.key:   # every update lands here: hash the table only when it changed
            self._digested = (rows.key, nb_digest(rows.key))
        digest = self._digested[1]
        if g[0].southbound_digest == digest:
            return
        want = self._southbound(dict(rows.lbs), dict(rows.allocations))

        def build(txn):
            g[0].verify("southbound_digest")
            g[0].verify("nb_cfg")
            touched = self._write_southbound(db, txn, want)
            g[0].southbound_digest = digest
            if touched:
                g[0].nb_cfg = g[0].nb_cfg + 1   # agents report when they applied it
            return touched
        status, touched = db.transact(build)
        if status == "success":
            print(f"[manager] load balancers changed around the API: southbound compiled again ({touched} rows)",
                  flush=True)

    def wait_synced(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(lambda db: db.synced):
            if time.monotonic() > deadline:
                raise Unavailable("the managers' database has no leader reachable from this manager")
            time.sleep(0.1)

    def snapshot(self) -> dict:
        """Everything the API reports, read in one go, from a complete replica: while this
        manager is re-finding the cluster's leader it answers 503 (the client tries another),
        never an empty list."""
        self.wait_synced(timeout=5.0)

        def read(db: Db) -> dict:
            if not db.synced:
                raise Unavailable("this manager is reconnecting to the cluster's leader")
            g = db.rows("Global")
            rows = self.read_rows(db)
            return {
                "synced": db.synced,
                "nb_cfg": g[0].nb_cfg if g else 0,
                "seeded": bool(g and g[0].seeded),
                "load_balancers": dict(rows.lbs),
                "invalid": list(rows.invalid),   # rows written around the API: skipped, [{name, reason}]
                "allocations": dict(rows.allocations),
                "mtu_remedies": sorted(g[0].mtu_remedies) if g else sorted(self.fabric.mtu_remedies),
                "health": [{"host": r.host, "vm": r.vm, "probe": r.probe, "up": r.up, "reason": r.reason, "code": r.code,
                            "since": r.since}
                           for r in db.rows("Backend_Health")],
                # a host is dead when a MUX finds its liveness beacons stopped (muxlab/node/liveness.py)
                "hosts": [{"name": r.name, "nb_cfg": r.nb_cfg, "synced_at": r.synced_at,
                           "alive": not any(r.name in m.dead_hosts for m in db.rows("Mux")),
                           "snat_usage": json.loads(r.snat_usage or "{}")} for r in db.rows("Chassis")],
                "muxes": [{"name": r.name, "drained": r.drained, "nb_cfg": r.nb_cfg, "synced_at": r.synced_at,
                           "tables_digest": r.tables_digest, "announced": sorted(r.announced),
                           "dead_hosts": sorted(r.dead_hosts)} for r in db.rows("Mux")],
                "facts": self.facts(db),
            }
        return self.call(read)

    # ------------------------------------------------------------ writes

    def change(self, edit: Callable[[dict[str, LoadBalancer]], dict[str, LoadBalancer | None]]) -> tuple[int, dict]:
        """Apply `edit` to the held load balancers: it returns {name: new LB or None to
        delete}. The whole result is validated; nothing is written on any problem (ModelError).
        Returns (the new nb_cfg, the load balancers as stored)."""
        deadline = time.monotonic() + WRITE_DEADLINE_S
        self.wait_synced(WRITE_DEADLINE_S)
        while True:
            status, result = self.call(lambda db: self._change_once(db, edit))
            if status in ("success", "unchanged"):
                return result
            if status not in ("try again", "timeout"):
                raise Unavailable(f"the database refused the transaction: {status}")
            if time.monotonic() > deadline:
                raise Unavailable(f"the transaction did not commit within {WRITE_DEADLINE_S:.0f} s "
                                  "(no leader reachable from this manager?)")
            time.sleep(0.1)

    def _change_once(self, db: Db, edit) -> tuple[str, Any]:
        rows = self.read_rows(db)
        held = dict(rows.lbs)   # invalid rows are left alone, unless `edit` replaces or deletes them
        updates = edit(dict(held))
        after = dict(held)
        for name, lb in updates.items():
            if lb is None:
                after.pop(name, None)
            else:
                after[name] = lb
        new = {n: lb for n, lb in updates.items() if lb is not None}
        # everything held, the versions being replaced too: a replaced frontend keeps its address
        after.update(allocate_public_ips(new, self.fabric, held))
        problems = check(after, self.fabric, held, changed=updates)
        if not problems:
            allocations, problems = allocate(after, self.fabric, dict(rows.allocations))
        if problems:
            raise ModelError(problems, "load balancer")
        g = db.rows("Global")
        # one pass over the rows: looking each name up with db.row is a scan per name, and
        # quadratic in the number of load balancers (17 s of a write at 1500)
        rows = {r.name: r for r in db.rows("Load_Balancer")}

        # what the table will hold, as the row rule reads it: its digest goes with the southbound
        final = {r.name: (r.name, r.spec, r.allocations) for r in rows.values()}
        for name, alloc in allocations.items():   # another load balancer's change can move these
            if name not in updates and name in final:
                final[name] = (name, final[name][1], json.dumps(alloc, sort_keys=True))
        for name in updates:
            if name in after:
                final[name] = (name, json.dumps(canonical(after[name]), sort_keys=True),
                               json.dumps(allocations[name], sort_keys=True))
            else:
                final.pop(name, None)
        # invalid rows stay out of the compile, as the row rule reads them
        want = self._southbound({n: lb for n, lb in after.items() if n in allocations}, allocations)

        def build(txn):
            glob = self.seeded_global(db, txn, g)
            cfg = (glob.nb_cfg if g else 0) + 1
            if g:
                glob.verify("nb_cfg")
            glob.nb_cfg = cfg
            for name, text, alloc_text in final.values():
                row = rows.get(name)
                if row is None:
                    row = txn.insert(db.idl.tables["Load_Balancer"])
                    row.name, row.spec, row.allocations = name, text, alloc_text
                elif (row.spec, row.allocations) != (text, alloc_text):
                    row.spec, row.allocations = text, alloc_text
                if name in after:
                    row.frontends = frontend_addresses([after[name]])
            for name, row in rows.items():
                if name not in final:
                    row.delete()
            self._write_southbound(db, txn, want)
            glob.southbound_digest = nb_digest(row_key(final.values()))
            return cfg, {n: after[n] for n in updates if n in after}

        return db.transact(build)

    def seed(self, lbs: dict[str, LoadBalancer]) -> bool:
        """Store the lab's initial load balancers, once per cluster (Global.seeded)."""
        self.wait_synced(60)
        if self.call(lambda db: bool(db.rows("Global") and db.rows("Global")[0].seeded)):
            return False
        self.change(lambda held: dict(lbs))
        return True

    def _write(self, build) -> None:
        self.wait_synced()
        status, _ = self.call(lambda db: db.transact(lambda txn: build(db, txn)))
        if status not in ("success", "unchanged"):
            raise Unavailable(f"the database refused the transaction: {status}")

    def set_drained(self, mux: str, drained: bool) -> None:
        self._write(lambda db, txn: db.upsert(txn, "Mux", {"name": mux}, drained=drained))

    def seeded_global(self, db: Db, txn, g: list) -> Any:
        """The Global row (`g`: as read), marked seeded, in `txn`: created with the lab's MTU
        remedies when missing. manager/rbac.py may have made it unseeded; the first write
        seeds the cluster (agents read the stored remedies once it is)."""
        if not g:
            return db.upsert(txn, "Global", {}, seeded=True, mtu_remedies=sorted(self.fabric.mtu_remedies))
        if not g[0].seeded:
            g[0].seeded = True
        return g[0]

    def set_mtu_remedies(self, remedies: list[str]) -> None:
        """The platform's answer to packets too big for the overlay (not a tenant setting)."""
        def build(db, txn):
            g = db.rows("Global")
            glob = self.seeded_global(db, txn, g)
            glob.mtu_remedies = sorted(remedies)
            glob.nb_cfg = (g[0].nb_cfg if g else 0) + 1   # agents report when they applied it
        self._write(build)
