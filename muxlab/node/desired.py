"""The desired state as agents read it from the managers' OVSDB: the load balancers
(compiled for the data path) and the health facts. Shared by the MUX agent, the host agent
and the VM service, so they all read the tables the same way."""
from __future__ import annotations

import sys
import time
import traceback
from typing import Callable

from muxlab.model.compiled import Services, compile_services
from muxlab.model.fabric import Lab
from muxlab.model.rows import RowReader

from .ovsdb import Db

# A host agent bumps its Chassis heartbeat every second; one not seen to move for this long
# is a dead host, and its VMs leave every MUX's tables.
HEARTBEAT_S = 1.0
STALE_AFTER = 3.0

LB_COLUMNS = {"Global": ["nb_cfg", "seeded", "mtu_remedies"], "Load_Balancer": ["name", "spec", "allocations"]}


class ServicesCache:
    """Compiles the Load_Balancer table only when a row changed. Rows the API would refuse
    (the row rule, muxlab.model.rows: not JSON, not a load balancer, refused by the checks
    against the fabric) and load balancers that do not compile are skipped, each logged once
    with its reason and listed in `invalid`; the others are served as usual."""

    def __init__(self, fabric: Lab, log: Callable[[str], None] | None = None):
        self.fabric = fabric
        self.rows = RowReader(fabric)
        self.key: tuple | None = None
        self.services = Services()
        self.invalid: list[dict] = []   # [{"name", "reason"}]: skipped rows
        self.log = log or (lambda line: print(line, flush=True))
        self._logged: set[tuple[str, str]] = set()

    def read(self, db: Db) -> Services:
        rows = self.rows.read(db.rows("Load_Balancer"))
        if rows.key != self.key:
            self.key = rows.key
            skipped = {i["name"]: i["reason"] for i in rows.invalid}
            lbs, allocations = dict(rows.lbs), rows.allocations
            try:
                self.services = compile_services(lbs, self.fabric, allocations)
            except Exception:
                # find the culprits one by one, serve the rest
                for name in sorted(lbs):
                    try:
                        compile_services({name: lbs[name]}, self.fabric, {name: allocations.get(name, {})})
                    except Exception as exc:
                        skipped[name] = f"does not compile: {type(exc).__name__}: {exc}"[:400]
                        del lbs[name]
                try:
                    self.services = compile_services(lbs, self.fabric, allocations)
                except Exception as exc:   # only together: keep serving what was compiled before
                    self.log(f"[desired] the load balancers do not compile together ({type(exc).__name__}: {exc}); "
                             "keeping the previous desired state")
            self.invalid = [{"name": n, "reason": r} for n, r in sorted(skipped.items(), key=lambda kv: str(kv[0]))]
            now = {(i["name"], i["reason"]) for i in self.invalid}
            for name, reason in sorted(now - self._logged, key=str):
                self.log(f"[desired] skipping load balancer {name!r}: {reason}")
            self._logged = now
        return self.services


def mtu_remedies(db: Db, fabric: Lab) -> frozenset[str]:
    """What to do about packets too big for the overlay: the lab's setting (lab.yml), or
    what the operator set since (`muxlab mtu`, stored once the cluster is seeded)."""
    g = db.rows("Global")
    return frozenset(g[0].mtu_remedies) if g and g[0].seeded else fabric.mtu_remedies


def watch(db: Db, step: Callable[[], None], wakeup: Callable[[], float | None]) -> None:
    """An agent's life: sleep until the server sends something (or `wakeup()` seconds pass),
    take it in, let `step` converge. A failing step keeps what the kernel has and retries."""
    while True:
        try:
            db.wait(wakeup())
            db.run()
            step()
        except Exception:
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)


def nb_cfg(db: Db) -> int:
    g = db.rows("Global")
    return g[0].nb_cfg if g else 0


class Liveness:
    """Which hosts are alive, from their heartbeats as this client saw them move (its own
    clock: no cross-node clock agreement needed). While the managers are unreachable
    nothing expires, and after a reconnect every host gets a fresh grace period.

    Fail static: heartbeats travel through the managers, so every host falling silent at
    once is what a control-plane outage looks like (a cluster without a leader accepts no
    writes, while this client may still read from a member). Then the last verdict stands:
    withdrawing every VIP would turn a manager failure into a data-path one."""

    def __init__(self, hosts: list[str]):
        self.hosts = hosts
        self.seen: dict[str, tuple[int, float]] = {}
        self.epoch: float | None = None
        self.verdict: frozenset[str] = frozenset()

    def dead(self, db: Db) -> frozenset[str]:
        now = time.monotonic()
        if db.connected_since != self.epoch:  # (re)connected: start everyone's clock afresh
            self.epoch = db.connected_since
            self.seen = {h: (v, now) for h, (v, _) in self.seen.items()}
        beats = {r.name: r.heartbeat for r in db.rows("Chassis")}
        for h in self.hosts:
            v = beats.get(h)
            if h not in self.seen or self.seen[h][0] != v:
                self.seen[h] = (v, now if h in self.seen or v is not None else (self.epoch or now))
        # silent for STALE_AFTER while another host's heartbeat went on moving: heartbeats that
        # all stop at once (the managers gone) make nobody dead, however they were staggered;
        # measured against now, the first-staggered hosts expired before the last did
        latest = max(t for _, t in self.seen.values()) if len(self.hosts) > 1 else now
        silent = frozenset(h for h in self.hosts if latest - self.seen[h][1] > STALE_AFTER)
        if len(self.hosts) > 1 and silent == frozenset(self.hosts):
            return self.verdict
        self.verdict = silent
        return silent
