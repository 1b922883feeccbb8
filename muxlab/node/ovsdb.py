"""The managers' OVSDB, as the agents and the managers' API see it: a thin layer over the
Open vSwitch Python IDL (`ovs.db.idl`), which keeps an in-memory replica of the tables a
client registered and tells it when they change. Nobody polls: a client blocks in the IDL's
poller until the server sends an update (or its own timer is due).

Schema: muxlab/muxlab.ovsschema, the contract between the managers and the agents.
Remotes: every manager, `ssl:ADDR:6641,...` (mutual TLS, as OVN's southbound database): the
client proves who it is with its node certificate (common name = node name) from the lab's
PKI, bound into the node at PKI_DIR, and the server's RBAC role lets it write its own rows
only (manager/rbac.py). The IDL reconnects to another manager when the one it talks to dies,
and keeps its last copy of the data meanwhile. The managers' own API uses the local unix
socket instead, which has no role (full access).
"""
from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import ovs.db.idl
import ovs.poller
import ovs.stream
import ovs.vlog

from muxlab.datapath.conventions import CA_CERT, NODE_CERT, NODE_KEY, OVSDB_PORT, PKI_DIR

from . import fastjson

fastjson.install()   # the library's own parser is pure Python (see muxlab/node/fastjson.py)

SCHEMA = Path(__file__).resolve().parent.parent / "muxlab.ovsschema"
DB_NAME = "Muxlab"
# The management subnet and manager addresses: `muxlab up` sets the subnet per lab; manager
# N has host address 200 + N in it (the topology pins it with mgmt-ipv4).
MGMT_SUBNET_ENV = "MUXLAB_MGMT_SUBNET"
DEFAULT_MGMT_SUBNET = "172.30.1.0/24"
MANAGER_HOST_BASE = 200
# Where this process's certificate, key and the lab CA are (default PKI_DIR, as bound into a
# node): tests and the operator's own tools point it at a `pki/<name>` directory of a lab folder.
PKI_DIR_ENV = "MUXLAB_PKI_DIR"


def manager_address(subnet: str, index: int) -> str:
    return str(ipaddress.IPv4Network(subnet)[MANAGER_HOST_BASE + index])


def manager_addresses(n: int, subnet: str | None = None) -> list[str]:
    subnet = subnet or os.environ.get(MGMT_SUBNET_ENV, DEFAULT_MGMT_SUBNET)
    return [manager_address(subnet, i) for i in range(1, n + 1)]


def remotes(addresses: Iterable[str], port: int = OVSDB_PORT) -> str:
    return ",".join(f"ssl:{a}:{port}" for a in addresses)


def managers_remote(n_managers: int) -> str:
    """Every manager's OVSDB, as an IDL remote list."""
    return remotes(manager_addresses(n_managers))


def use_pki(directory: str | os.PathLike | None = None) -> Path:
    """Make this process's SSL streams present the certificate in `directory` (default:
    $MUXLAB_PKI_DIR, else PKI_DIR) and trust only its CA. The OVS streams keep one identity
    per process (class-wide settings, read at each connect)."""
    d = Path(directory or os.environ.get(PKI_DIR_ENV) or PKI_DIR)
    ovs.stream.Stream.ssl_set_private_key_file(str(d / NODE_KEY))
    ovs.stream.Stream.ssl_set_certificate_file(str(d / NODE_CERT))
    ovs.stream.Stream.ssl_set_ca_cert_file(str(d / CA_CERT))
    return d


class Db:
    """One IDL connection. `tables`: table -> columns to replicate (None: all columns);
    `quiet`: (table, column) pairs this client writes but need not be woken by;
    `conditions`: table -> OVSDB condition, the rows of it to replicate (default: all);
    `pki`: the directory of this client's certificate for ssl: remotes (see use_pki)."""

    def __init__(self, remote: str, tables: dict[str, list[str] | None] | None = None, leader_only: bool = False,
                 quiet: Iterable[tuple[str, str]] = (), probe_ms: int = 2000,
                 conditions: dict[str, list] | None = None, pki: str | os.PathLike | None = None):
        ovs.vlog.Vlog.init(None)  # IDL's own log lines to stderr, not to a file
        if any(r.startswith("ssl:") for r in remote.split(",")):
            use_pki(pki)
        helper = ovs.db.idl.SchemaHelper(location=str(SCHEMA))
        if tables is None:
            helper.register_all()
        else:
            for table, columns in tables.items():
                helper.register_table(table) if columns is None else helper.register_columns(table, columns)
        self.idl = ovs.db.idl.Idl(remote, helper, probe_interval=probe_ms, leader_only=leader_only)
        for table, column in quiet:
            self.idl.tables[table].columns[column].alert = False
        # conditional monitoring (OVSDB monitor_cond): only the rows this client needs cross
        # the wire, e.g. a host agent's own Chassis row and its own VMs' southbound rows
        for table, cond in (conditions or {}).items():
            self.idl.cond_change(table, cond)
        self.seen_seqno = -1
        self.connected_since: float | None = None
        self._awaiting: set[tuple[str, tuple]] = set()   # rows update() found missing, said once

    # -------------------------------------------------------------- reading

    @property
    def synced(self) -> bool:
        """True when the replica is complete (monitoring); False while (re)connecting."""
        return self.idl.state == self.idl.IDL_S_MONITORING

    def run(self) -> bool:
        """Process what the server sent; True when the data changed since the last call that
        returned True (a reconnect counts as a change)."""
        was = self.synced
        self.idl.run()
        if self.synced and not was:
            self.connected_since = time.monotonic()
        if self.synced and self.idl.change_seqno != self.seen_seqno:
            self.seen_seqno = self.idl.change_seqno
            return True
        return False

    def wait(self, timeout_s: float | None, fds: Iterable[int] = ()) -> None:
        """Block until the server sends something, one of `fds` is readable, or timeout_s passes."""
        poller = ovs.poller.Poller()
        self.idl.wait(poller)
        for fd in fds:
            poller.fd_wait(fd, ovs.poller.POLLIN)
        if timeout_s is not None:
            poller.timer_wait(max(0, int(timeout_s * 1000)))
        poller.block()

    def rows(self, table: str) -> list[Any]:
        return list(self.idl.tables[table].rows.values())

    def row(self, table: str, **match) -> Any | None:
        for r in self.idl.tables[table].rows.values():
            if all(getattr(r, k) == v for k, v in match.items()):
                return r
        return None

    # -------------------------------------------------------------- writing

    def transact(self, build: Callable[[ovs.db.idl.Transaction], Any], timeout_s: float = 5.0) -> tuple[str, Any]:
        """Build one transaction with `build(txn)` and commit it, waiting at most timeout_s.
        Returns (status, build's result). Status is one of the IDL's: "success", "unchanged",
        "try again" (reconnecting, or verify failed: rebuild and retry), "error", ..."""
        if not self.synced:
            return ovs.db.idl.Transaction.TRY_AGAIN, None
        txn = ovs.db.idl.Transaction(self.idl)
        try:
            result = build(txn)
        except BaseException:
            txn.abort()
            raise
        deadline = time.monotonic() + timeout_s
        while True:
            status = txn.commit()
            if status != txn.INCOMPLETE:
                if status == txn.ERROR:
                    return f"error: {txn.get_error()}", result
                return status, result
            if time.monotonic() > deadline:
                txn.abort()
                return "timeout", result
            self.idl.run()
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            txn.wait(poller)
            poller.timer_wait(100)
            poller.block()

    def upsert(self, txn, table: str, key: dict, **values) -> Any:
        """Set `values` on the row matching `key` (inserting it if absent) in `txn`."""
        r = self.row(table, **key)
        if r is None:
            r = txn.insert(self.idl.tables[table])
            for k, v in {**key, **values}.items():
                setattr(r, k, v)
            return r
        return set_changed(r, values)

    def update(self, txn, table: str, key: dict, **values) -> Any | None:
        """Set `values` on the existing row matching `key` in `txn`; never inserts. Agents may
        not insert their Chassis or Mux row (RBAC): the managers create it (manager/rbac.py).
        Until it exists this skips, and says so once."""
        r = self.row(table, **key)
        tag = (table, tuple(sorted(key.items())))
        what = ", ".join(f"{k}={v}" for k, v in key.items())
        if r is None:
            if tag not in self._awaiting:
                self._awaiting.add(tag)
                print(f"[ovsdb] no {table} row {what} yet: the managers create it; not reporting it until then",
                      flush=True)
            return None
        if tag in self._awaiting:
            self._awaiting.discard(tag)
            print(f"[ovsdb] the {table} row {what} exists now: reporting", flush=True)
        return set_changed(r, values)

    def close(self) -> None:
        self.idl.close()


def set_changed(row: Any, values: dict) -> Any:
    """Set only the columns whose value differs: an unchanged column sends nothing."""
    for k, v in values.items():
        if getattr(row, k) != v:
            setattr(row, k, v)
    return row


def ok(status: str) -> bool:
    return status in (ovs.db.idl.Transaction.SUCCESS, ovs.db.idl.Transaction.UNCHANGED)
