"""Who may write what in the managers' OVSDB: ovsdb-server's role-based access control, set
up as OVN's northd sets it up for the southbound database.

Agents connect on one Connection row, `pssl:6641` (ovsdb-server reads its remotes from
Global.connections: `--remote=db:Muxlab,Global,connections`, see manager/cluster.py), whose
role is AGENT_ROLE. The server then compares, for every row an agent's transaction touches,
the `authorization` columns of the table's RBAC_Permission with the common name of the
agent's certificate (muxlab/pki.py: the node's name), and allows only the `update` columns,
and inserts and deletes only where `insert_delete`:

- Chassis (a host's own row, name = CN): nb_cfg, synced_at, snat_usage;
- Mux (a MUX's own row, name = CN): nb_cfg, synced_at, tables_digest, announced, dead_hosts — not
  `drained`, which is the operator's;
- Backend_Health (host = CN): a host inserts and deletes its own probe results and updates
  up/reason/since; it cannot move a row to another host (MUXes also ignore a row whose host
  is not the VM's host);
- nothing else (Load_Balancer, Global, Connection, RBAC_*): a table without a permission is
  read-only for the role.

Agents may not insert their Chassis or Mux row, so the managers create one per fabric host
and MUX here. The managers themselves write through the local unix socket, which has no role.
Every manager runs `ensure` at start (idempotent; one transaction); only the first manager
creates the Global row, so that two managers starting together do not both insert it.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from muxlab.datapath.conventions import OVSDB_PORT
from muxlab.fabric.lab import Lab
from muxlab.node.ovsdb import Db, ok

AGENT_ROLE = "muxlab-agent"
AGENT_TARGET = f"pssl:{OVSDB_PORT}"   # every address: all managers share this row through Raft

# table -> (authorization columns, insert_delete, update columns)
PERMISSIONS: dict[str, tuple[list[str], bool, list[str]]] = {
    "Chassis": (["name"], False, ["nb_cfg", "synced_at", "snat_usage"]),
    "Mux": (["name"], False, ["nb_cfg", "synced_at", "tables_digest", "announced", "dead_hosts"]),
    "Backend_Health": (["host"], True, ["up", "reason", "code", "since"]),
}


def ensure(db: Db, fabric: Lab, create_global: bool = True, target: str = AGENT_TARGET) -> str:
    """Make the database hold the agents' Connection row, RBAC role and permissions, and a
    Chassis row per fabric host and a Mux row per fabric MUX; runs in the Store's DB thread.
    Returns the transaction's status ("unchanged" when all was there; "try again" while not
    synced, or while the Global row is missing and `create_global` is False). `target`: the
    agents' listening remote (tests pick a free port)."""
    if not db.synced:
        return "try again"
    if not db.rows("Global") and not create_global:
        return "try again"

    def build(txn) -> None:
        g = db.rows("Global")
        if g:
            glob = g[0]
        else:   # seeded stays False: the first load balancer write (the lab's seed) sets it
            glob = txn.insert(db.idl.tables["Global"])
            glob.nb_cfg = 0
            glob.seeded = False
            glob.mtu_remedies = sorted(fabric.mtu_remedies)
        conns = list(glob.connections) if g else []
        conn = next((c for c in conns if c.target == target), None) or db.row("Connection", target=target)
        if conn is None:
            conn = txn.insert(db.idl.tables["Connection"])
            conn.target = target
        _set(conn, role=AGENT_ROLE, read_only=False)
        if conn not in conns:
            glob.connections = conns + [conn]

        role = db.row("RBAC_Role", name=AGENT_ROLE)
        perms: dict[str, Any] = dict(role.permissions) if role is not None else {}
        if role is None:
            role = txn.insert(db.idl.tables["RBAC_Role"])
            role.name = AGENT_ROLE
        want = {}
        for table, (authorization, insert_delete, update) in PERMISSIONS.items():
            perm = perms.get(table)
            if perm is None:
                perm = txn.insert(db.idl.tables["RBAC_Permission"])
            _set(perm, table=table, authorization=sorted(authorization), insert_delete=insert_delete,
                 update=sorted(update))
            want[table] = perm
        if perms != want:
            role.permissions = want
        referenced = {p.uuid for r in db.rows("RBAC_Role") for p in (r.permissions or {}).values()}
        for p in db.rows("RBAC_Permission"):   # what an older version of this left behind
            if p.uuid not in referenced or (p in perms.values() and p not in want.values()):
                p.delete()

        for table, names in (("Chassis", [h.name for h in fabric.hosts]), ("Mux", [m.name for m in fabric.muxes])):
            have = {r.name for r in db.rows(table)}
            for name in names:
                if name not in have:
                    r = txn.insert(db.idl.tables[table])
                    r.name = name

    status, _ = db.transact(build)
    return status


_UNSET = object()


def _set(row, **values) -> None:
    """Write the values that differ (all of them on a row this transaction inserts)."""
    for k, v in values.items():
        try:
            now = getattr(row, k)
        except AttributeError:   # a new row's column not written yet
            now = _UNSET
        if now != v:
            setattr(row, k, v)


def ensure_in_background(call: Callable[[Callable[[Db], str]], str], fabric: Lab, create_global: bool = True,
                         retry_s: float = 1.0) -> threading.Thread:
    """Run `ensure` through `call` (the Store's: `store().call`) until it succeeds, in a
    thread; says so when it first fails and when it has succeeded."""
    def run() -> None:
        complained = False
        while True:
            try:
                status = call(lambda db: ensure(db, fabric, create_global))
            except Exception as exc:   # Unavailable, a busy DB thread: try again
                status = f"{type(exc).__name__}: {exc}"
            if ok(status):
                print(f"[manager] agents' RBAC role, Connection {AGENT_TARGET} and Chassis/Mux rows in place "
                      f"({status})", flush=True)
                return
            if not complained and status != "try again":
                print(f"[manager] could not set up the agents' RBAC yet ({status}); retrying", flush=True)
                complained = True
            time.sleep(retry_s)

    t = threading.Thread(target=run, name="rbac", daemon=True)
    t.start()
    return t
