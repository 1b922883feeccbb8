"""The desired state as agents read it from the managers' OVSDB: the southbound facts
(muxlab.lb.southbound: compiled by the managers, never by an agent) and the platform's
settings. Shared by the MUX and host agents, so they read the tables the same way."""
from __future__ import annotations

import sys
import time
import traceback
from typing import Callable

from muxlab.fabric.lab import Lab
from muxlab.lb import southbound
from muxlab.lb.facts import Facts

from .ovsdb import Db

# what every agent replicates: the Global row's settings and the southbound tables
FACT_COLUMNS = {"Global": ["nb_cfg", "seeded", "mtu_remedies"],
                **{table: list(columns) for table, (_, columns) in southbound.TABLES.items()}}


def own_rows(me: str) -> dict[str, list]:
    """A host's monitoring conditions: of the per-VM southbound tables, its own VMs' rows only."""
    return {table: [["host", "==", me]] for table in southbound.PER_HOST}


class FactsReader:
    """The compiled facts from the southbound rows, read again only when they may have
    changed (every southbound write moves Global.nb_cfg). A row that does not convert is
    skipped and logged once (muxlab.lb.southbound.facts_of); the others are served."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.key: tuple | None = None
        self.facts = Facts()
        self.log = log or (lambda line: print(line, flush=True))
        self._logged: set[str] = set()

    def read(self, db: Db) -> Facts:
        key = (nb_cfg(db), *(len(db.idl.tables[t].rows) for t in southbound.TABLES))
        if key != self.key:
            self.key = key
            self.facts, problems = southbound.facts_of(southbound.read(db.rows))
            for p in sorted(set(problems) - self._logged):
                self.log(f"[desired] skipping a southbound row: {p}")
            self._logged = set(problems)
        return self.facts


def mtu_remedies(db: Db, fabric: Lab) -> frozenset[str]:
    """What to do about packets too big for the overlay: the lab's setting (lab.yml), or
    what the operator set since (`muxlab mtu`, stored once the cluster is seeded)."""
    g = db.rows("Global")
    return frozenset(g[0].mtu_remedies) if g and g[0].seeded else fabric.mtu_remedies


def watch(db: Db, step: Callable[[], None], wakeup: Callable[[], float | None], fds: tuple[int, ...] = ()) -> None:
    """An agent's life: sleep until the server sends something, one of `fds` is readable (or
    `wakeup()` seconds pass), take it in, let `step` converge. A failing step keeps what the
    kernel has and retries."""
    while True:
        try:
            db.wait(wakeup(), fds)
            db.run()
            step()
        except Exception:
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
            time.sleep(1)


def nb_cfg(db: Db) -> int:
    g = db.rows("Global")
    return g[0].nb_cfg if g else 0
