"""The control plane's security against a real ovsdb-server (no mocks): mutual TLS with the
lab's PKI (muxlab/pki.py) and the agents' RBAC role (manager/rbac.py), as OVN secures its
southbound database.

A one-member Raft cluster (Raft itself over ssl:, as the managers run it) with the muxlab
schema; manager.rbac.ensure writes the Connection, role and rows through the unix socket
(no role: the managers' own access), then a client holding host1's certificate tries what a
host may and may not do. Every refusal asserted is the server's. Timeouts only bound waits.
"""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")
pytest.importorskip("ovs")

from muxlab.datapath.conventions import CA_CERT, NODE_CERT, NODE_KEY, OPERATOR   # noqa: E402

from .conftest import default_lbs, fabric   # noqa: E402


def _ovsdb_server() -> str | None:
    return shutil.which("ovsdb-server") or next(
        (p for p in ("/usr/sbin/ovsdb-server", "/usr/local/sbin/ovsdb-server") if Path(p).exists()), None)


OVSDB_SERVER = _ovsdb_server()
OVSDB_TOOL = shutil.which("ovsdb-tool")
OVSDB_CLIENT = shutil.which("ovsdb-client")
pytestmark = pytest.mark.skipif(
    not (OVSDB_SERVER and OVSDB_TOOL and OVSDB_CLIENT),
    reason="ovsdb-server/ovsdb-tool/ovsdb-client not installed (Debian: apt-get install openvswitch-common; "
           "`muxlab bootstrap` installs it)")

BOUND_S = 20.0   # an upper bound on every wait, never a measured assertion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what: str, check, timeout: float = BOUND_S):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def synced(db, timeout: float = BOUND_S):
    deadline = time.monotonic() + timeout
    while not db.synced:
        if time.monotonic() > deadline:
            raise AssertionError(f"IDL did not sync within {timeout:.0f} s")
        db.run()
        db.wait(0.1)
    db.run()
    return db


def refresh(db, cond, what: str):
    """Let `db` take in the server's updates until cond(db)."""
    def check():
        db.run()
        db.wait(0.05)
        return cond(db)
    return until(what, check)


@pytest.fixture(scope="module")
def lab():
    return fabric()


@pytest.fixture(scope="module")
def server(tmp_path_factory, lab):
    """ovsdb-server with the manager's TLS configuration and the agents' remote read from
    Global.connections, as manager/cluster.py starts it; yields its coordinates."""
    from manager import rbac
    from muxlab.node.ovsdb import SCHEMA, DB_NAME, Db
    from muxlab.pki import ensure_pki

    tmp = tmp_path_factory.mktemp("ovsdb")
    pki = ensure_pki(tmp, lab)
    other = ensure_pki(tmp / "elsewhere", lab)   # a second lab: another CA
    mgr = pki / lab.managers[0]
    db_file, sock, ctl, log = tmp / "muxlab.db", tmp / "ovsdb.sock", tmp / "ovsdb.ctl", tmp / "ovsdb.log"
    port, raft_port = free_port(), free_port()
    subprocess.run([OVSDB_TOOL, "create-cluster", str(db_file), str(SCHEMA), f"ssl:127.0.0.1:{raft_port}"],
                   check=True, capture_output=True, timeout=BOUND_S)
    proc = subprocess.Popen([OVSDB_SERVER, str(db_file), f"--private-key={mgr / NODE_KEY}",
                             f"--certificate={mgr / NODE_CERT}", f"--ca-cert={mgr / CA_CERT}",
                             f"--remote=db:{DB_NAME},Global,connections", f"--remote=punix:{sock}",
                             f"--unixctl={ctl}", f"--log-file={log}", "-vconsole:off", "-vfile:info"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until("ovsdb-server's unix socket", sock.exists)
        admin = synced(Db(f"unix:{sock}", None))
        target = f"pssl:{port}:127.0.0.1"
        status = until("rbac.ensure commits", lambda: (lambda s: s if s in ("success", "unchanged") else None)(
            rbac.ensure(admin, lab, target=target)))
        assert status == "success"

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        until(f"ovsdb-server listening on {target} (from Global.connections)", listening)
        yield {"sock": sock, "port": port, "pki": pki, "other": other, "admin": admin, "target": target,
               "remote": f"ssl:127.0.0.1:{port}", "log": log}
        admin.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def host1(server):
    """An agent's connection as host1: its certificate, the ssl: remote, the agent's role."""
    from muxlab.node.ovsdb import Db
    db = synced(Db(server["remote"], None, pki=server["pki"] / "host1"))
    yield db
    db.close()


def commit(db, build):
    status, _ = db.transact(build, timeout_s=BOUND_S)
    return status


def permission_refused(status: str, table: str) -> bool:
    return status.startswith("error") and "permission error" in status and table in status


# ---------------------------------------------------------------- what the managers set up


def test_rbac_ensure_sets_up_the_role_the_connection_and_the_agents_rows(server, lab):
    from manager import rbac
    admin = server["admin"]
    conn = admin.row("Connection", target=server["target"])
    assert conn is not None and conn.role == rbac.AGENT_ROLE and not conn.read_only
    assert [c.target for c in admin.rows("Global")[0].connections] == [server["target"]]
    role = admin.row("RBAC_Role", name=rbac.AGENT_ROLE)
    got = {t: (sorted(p.authorization), p.insert_delete, sorted(p.update)) for t, p in role.permissions.items()}
    assert got == {t: (sorted(a), i, sorted(u)) for t, (a, i, u) in rbac.PERMISSIONS.items()}
    assert "drained" not in got["Mux"][2]
    assert {r.name for r in admin.rows("Chassis")} == {h.name for h in lab.hosts}
    assert {r.name for r in admin.rows("Mux")} == {m.name for m in lab.muxes}
    # idempotent: a second run (every manager runs it at start) changes nothing
    assert rbac.ensure(admin, lab, target=server["target"]) == "unchanged"
    assert len(admin.rows("RBAC_Permission")) == len(rbac.PERMISSIONS)


def test_a_manager_that_may_not_create_global_waits_for_it(lab):
    from manager import rbac

    class Empty:   # a synced replica without a Global row
        synced = True

        def rows(self, table):
            return []
    assert rbac.ensure(Empty(), lab, create_global=False) == "try again"


# ---------------------------------------------------------------- a host, by its certificate


def test_a_host_updates_its_own_chassis_row(server, host1):
    cfg = int(time.time())
    assert commit(host1, lambda txn: host1.update(txn, "Chassis", {"name": "host1"}, nb_cfg=cfg,
                                                  synced_at=time.time())) == "success"
    refresh(server["admin"], lambda db: db.row("Chassis", name="host1").nb_cfg == cfg, "host1's nb_cfg stored")


def test_update_skips_a_row_that_does_not_exist_yet(server, host1, capsys):
    for _ in range(2):
        status = commit(host1, lambda txn: host1.update(txn, "Chassis", {"name": "host9"}, nb_cfg=1))
        assert status == "unchanged"
    out = capsys.readouterr().out
    assert out.count("no Chassis row name=host9 yet") == 1, out


def test_a_host_cannot_update_another_hosts_chassis_row(host1):
    status = commit(host1, lambda txn: setattr(host1.row("Chassis", name="host2"), "nb_cfg", 424242))
    assert permission_refused(status, "Chassis"), status
    print(status)
    assert "host1" in status   # the server names the client it refused: its certificate's CN


def test_a_host_cannot_touch_a_column_outside_its_permission(host1):
    status = commit(host1, lambda txn: setattr(host1.row("Chassis", name="host1"), "name", "host7"))
    assert permission_refused(status, "Chassis"), status


def test_a_host_cannot_insert_a_chassis_row(host1):
    def build(txn):
        r = txn.insert(host1.idl.tables["Chassis"])
        r.name = "host1"   # its own name even
    assert permission_refused(commit(host1, build), "Chassis")


def test_a_host_cannot_update_a_mux_row_drain_it_or_not(host1):
    for column, value in (("drained", True), ("nb_cfg", 7)):
        status = commit(host1, lambda txn: setattr(host1.row("Mux", name="mux1"), column, value))
        assert permission_refused(status, "Mux"), status


def test_a_host_cannot_insert_a_load_balancer(host1):
    def build(txn):
        r = txn.insert(host1.idl.tables["Load_Balancer"])
        r.name, r.spec = "evil", "{}"
    status = commit(host1, build)
    assert permission_refused(status, "Load_Balancer"), status


def test_a_host_cannot_write_a_southbound_fact(host1):
    """The facts are the managers' alone: a host could otherwise steer another host's VIP."""
    from muxlab.lb import southbound
    from tests.unit.conftest import default_facts
    valid = southbound.rows_of(default_facts(), lambda vm: "host1")
    valid["Nat_Port"] = {(): {"lb": "web", "rule": "ssh", "vip": "203.0.113.10", "protocol": "tcp", "port": 2222,
                              "vm": "vm1", "ip": "10.1.1.11", "host": "host1", "backend_port": 22, "floating_ip": False,
                              "idle_s": 60, "tcp_reset": False}}
    valid["Internal_Endpoint"] = {(): {"service": "svc", "role": "BERole", "name": "ep", "vm": "vm1", "ip": "10.1.1.11",
                                       "host": "host1", "protocol": "tcp", "port": 20000, "peers": ["10.1.1.11"]}}
    for table in southbound.TABLES:
        def build(txn, table=table):
            r = txn.insert(host1.idl.tables[table])
            for column, value in next(iter(valid[table].values())).items():
                setattr(r, column, value)
        assert permission_refused(commit(host1, build), table), table


def test_a_host_cannot_change_global_connections_or_roles(host1):
    status = commit(host1, lambda txn: setattr(host1.rows("Global")[0], "nb_cfg", 999))
    assert permission_refused(status, "Global"), status
    status = commit(host1, lambda txn: setattr(host1.rows("Connection")[0], "role", ""))
    assert permission_refused(status, "Connection"), status
    status = commit(host1, lambda txn: setattr(host1.rows("RBAC_Permission")[0], "update", ["name"]))
    assert permission_refused(status, "RBAC_Permission"), status


def test_a_host_inserts_updates_and_deletes_its_own_backend_health_rows(server, host1):
    def insert(txn):
        r = txn.insert(host1.idl.tables["Backend_Health"])
        r.host, r.vm, r.probe, r.up, r.reason, r.since = "host1", "vm1", "http", True, "", time.time()
    assert commit(host1, insert) == "success"
    refresh(host1, lambda db: db.row("Backend_Health", vm="vm1", probe="http"), "the row replicated")
    assert commit(host1, lambda txn: host1.update(txn, "Backend_Health", {"vm": "vm1", "probe": "http"},
                                                  up=False, reason="timeout")) == "success"
    # ... but cannot hand it to another host
    status = commit(host1, lambda txn: setattr(host1.row("Backend_Health", vm="vm1"), "host", "host2"))
    assert permission_refused(status, "Backend_Health"), status
    assert commit(host1, lambda txn: host1.row("Backend_Health", vm="vm1", probe="http").delete()) == "success"
    refresh(server["admin"], lambda db: db.row("Backend_Health", vm="vm1") is None, "the row deleted")


def test_a_host_cannot_write_backend_health_for_another_host(server, host1):
    def insert(txn):
        r = txn.insert(host1.idl.tables["Backend_Health"])
        r.host, r.vm, r.probe, r.up = "host2", "vm3", "http", False
    status = commit(host1, insert)
    assert permission_refused(status, "Backend_Health"), status

    # nor delete host2's own row
    def admin_insert(txn):
        r = txn.insert(server["admin"].idl.tables["Backend_Health"])
        r.host, r.vm, r.probe, r.up = "host2", "vm3", "http", True
    assert commit(server["admin"], admin_insert) == "success"
    refresh(host1, lambda db: db.row("Backend_Health", vm="vm3"), "host2's row replicated")
    status = commit(host1, lambda txn: host1.row("Backend_Health", vm="vm3").delete())
    assert permission_refused(status, "Backend_Health"), status
    assert commit(server["admin"], lambda txn: server["admin"].row("Backend_Health", vm="vm3").delete()) == "success"


# ---------------------------------------------------------------- who may connect at all


def _ovsdb_client(server, keys: Path | None, ca: Path) -> subprocess.CompletedProcess:
    args = [OVSDB_CLIENT, "--timeout=10"]
    if keys is not None:
        args += [f"--private-key={keys / NODE_KEY}", f"--certificate={keys / NODE_CERT}"]
    args += [f"--ca-cert={ca}", "list-dbs", server["remote"]]
    return subprocess.run(args, capture_output=True, text=True, timeout=BOUND_S)


def test_ovsdb_client_with_a_lab_certificate_connects(server):
    proc = _ovsdb_client(server, server["pki"] / OPERATOR, server["pki"] / CA_CERT)
    assert proc.returncode == 0 and "Muxlab" in proc.stdout, proc.stderr


def server_said(server, text: str) -> bool:
    """ovsdb-server logged `text` (its reason for dropping a connection) since the mark."""
    return text in server["log"].read_text()[server.get("mark", 0):]


def mark(server) -> None:
    server["mark"] = len(server["log"].read_text())


def test_a_certificate_from_another_ca_is_refused_by_the_server(server):
    # the client trusts the lab's CA (so it is not the client refusing the server) but
    # presents another lab's certificate for the same name
    mark(server)
    proc = _ovsdb_client(server, server["other"] / "host1", server["pki"] / CA_CERT)
    assert proc.returncode != 0 and "Muxlab" not in proc.stdout, proc.stdout
    until("the server's reason in its log", lambda: server_said(server, "certificate verify failed"))


def _list_dbs_over_tls(server, cert_dir: Path | None) -> bytes | str:
    """One list_dbs request over TLS, trusting the lab CA; the reply, or why there was none."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(server["pki"] / CA_CERT))
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / NODE_CERT), str(cert_dir / NODE_KEY))
    try:
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(json.dumps({"method": "list_dbs", "params": [], "id": 1}).encode())
                data = b""
                while b"}" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        return data or "closed"
                    data += chunk
                return data
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_client_without_a_certificate_gets_no_answer(server):
    ok = _list_dbs_over_tls(server, server["pki"] / "host1")
    assert isinstance(ok, bytes) and "Muxlab" in json.loads(ok)["result"], ok
    mark(server)
    refused = _list_dbs_over_tls(server, None)
    assert not (isinstance(refused, bytes) and b"Muxlab" in refused), refused
    until("the server's reason in its log", lambda: server_said(server, "peer did not return a certificate"))


def test_plain_tcp_is_not_served(server):
    mark(server)
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.settimeout(10)
        s.sendall(json.dumps({"method": "list_dbs", "params": [], "id": 1}).encode())
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
    assert b"Muxlab" not in data
    until("the server's reason in its log", lambda: server_said(server, "received JSON-RPC data on SSL channel"))


# ---------------------------------------------------------------- the managers' own store


def test_the_store_on_the_unix_socket_seeds_a_global_row_rbac_created(server, lab):
    """rbac.ensure may create Global (seeded false) before the lab's seed: the seed's write
    marks the cluster seeded, so a restarted manager does not seed again."""
    from manager.store import Store
    store = Store(lab, f"unix:{server['sock']}")
    assert store.call(lambda db: bool(db.rows("Global")) and not db.rows("Global")[0].seeded, timeout=BOUND_S) in (
        True, False)   # the replica may still be syncing; what matters follows
    assert store.seed(default_lbs()) is True
    snap = store.snapshot()
    assert snap["seeded"] and set(snap["load_balancers"]) == set(default_lbs())
    assert {h["name"] for h in snap["hosts"]} == {h.name for h in lab.hosts}
    assert store.seed(default_lbs()) is False
