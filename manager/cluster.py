"""Starts this manager's member of the OVSDB Raft cluster (run by the node supervisor).

manager1 creates the cluster (`ovsdb-tool create-cluster`) the first time; every other
manager joins it (`ovsdb-tool join-cluster`, naming every member as a remote to try). After
that the database file carries the membership, so a manager restarted after a crash rejoins
as it was. Then ovsdb-server runs in the foreground. Everything on the network is mutual
TLS with the lab's PKI (certificate, key and CA at PKI_DIR): Raft peers on ssl:6643, agents
on pssl:6641 — a remote the server reads from the database itself (`db:Muxlab,Global,
connections`, a Connection row manager/rbac.py writes), which carries the RBAC role that lets
an agent write its own rows only. The local API talks over a unix socket, with no role.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from muxlab.datapath.conventions import CA_CERT, NODE_CERT, NODE_KEY, PKI_DIR, RAFT_PORT
from muxlab.fabric.lab import load_lab
from muxlab.node.ovsdb import DB_NAME, SCHEMA, manager_addresses
from muxlab.node.runtime import FABRIC_PATH, RUN_DIR

DB_DIR = Path(os.environ.get("MUXLAB_MANAGER_DB_DIR", "/var/lib/muxlab-manager"))
DB_FILE = DB_DIR / "muxlab.db"
CTL = RUN_DIR / "ovsdb.ctl"
SOCK = RUN_DIR / "ovsdb.sock"


def raft(addr: str) -> str:
    return f"ssl:{addr}:{RAFT_PORT}"


def prepare(me: str, addrs: list[str], index: int) -> None:
    if DB_FILE.exists():
        return
    DB_DIR.mkdir(parents=True, exist_ok=True)
    if index == 1:
        cmd = ["ovsdb-tool", "create-cluster", str(DB_FILE), str(SCHEMA), raft(addrs[0])]
    else:
        cmd = ["ovsdb-tool", "join-cluster", str(DB_FILE), DB_NAME, raft(addrs[index - 1])] + [
            raft(a) for i, a in enumerate(addrs, start=1) if i != index]
    print(f"[ovsdb {me}] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    me = socket.gethostname()
    fabric = load_lab(FABRIC_PATH)
    index = fabric.managers.index(me) + 1
    addrs = manager_addresses(len(fabric.managers))
    prepare(me, addrs, index)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    pki = Path(PKI_DIR)
    argv = ["ovsdb-server", str(DB_FILE), f"--private-key={pki / NODE_KEY}", f"--certificate={pki / NODE_CERT}",
            f"--ca-cert={pki / CA_CERT}", f"--remote=db:{DB_NAME},Global,connections", f"--remote=punix:{SOCK}",
            f"--unixctl={CTL}", f"--pidfile={RUN_DIR / 'ovsdb.pid'}", "--log-file=/var/log/muxlab-ovsdb.log",
            "-vconsole:warn", "-vfile:info"]
    print(f"[ovsdb {me}] {' '.join(argv)}", flush=True)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
