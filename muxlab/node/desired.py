"""The desired state as agents read it from the managers' OVSDB: the load balancers
(compiled for the data path) and the health facts. Shared by the MUX agent, the host agent
and the VM service, so they all read the tables the same way."""
from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Callable

from muxlab.model.compiled import Services, compile_services
from muxlab.model.fabric import Lab
from muxlab.model.service import LoadBalancer

from .ovsdb import Db

# A host agent bumps its Chassis heartbeat every second; one not seen to move for this long
# is a dead host, and its VMs leave every MUX's tables.
HEARTBEAT_S = 1.0
STALE_AFTER = 3.0

LB_COLUMNS = {"Global": ["nb_cfg", "seeded", "mtu_remedies"], "Load_Balancer": ["name", "spec", "allocations"]}


class ServicesCache:
    """Compiles the Load_Balancer table only when a spec changed."""

    def __init__(self, fabric: Lab):
        self.fabric = fabric
        self.key: tuple | None = None
        self.services = Services()

    def read(self, db: Db) -> Services:
        key = tuple(sorted((r.name, r.spec, r.allocations) for r in db.rows("Load_Balancer")))
        if key != self.key:
            lbs = {name: LoadBalancer.model_validate(json.loads(spec)) for name, spec, _ in key}
            allocations = {name: json.loads(alloc or "{}") for name, _, alloc in key}
            self.services = compile_services(lbs, self.fabric, allocations)
            self.key = key
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
        silent = frozenset(h for h in self.hosts if now - self.seen[h][1] > STALE_AFTER)
        if len(self.hosts) > 1 and silent == frozenset(self.hosts):
            return self.verdict
        self.verdict = silent
        return silent
