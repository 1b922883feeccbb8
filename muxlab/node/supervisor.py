"""Entry point of every muxlab node container (manager, MUX, host, VM, client): PID 1.

It finds itself in the fabric by hostname (containerlab names containers' hosts after
their nodes), waits for containerlab to plug in its links, configures addresses and
routes through netlink, then starts and supervises its role's long-running processes.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from muxlab.datapath.conventions import STOPPED_DIR, UPLINK_IF
from muxlab.fabric.lab import load_lab
from muxlab.fabric.render import NodePlan, node_plan, render_mux_bfdd

from .offloads import Offloads
from .runtime import FABRIC_PATH, RUN_DIR, run_path

PY = sys.executable
# The node's network plan is applied again when the kernel reports a link or route change
# (a link that went down took its static routes with it), and every NETWORK_RECHECK seconds
# in any case; re-applying it every 2 s was most of an idle node's CPU.
NETWORK_RECHECK = 30.0
TICK = 0.5             # children and held-down services are looked at this often
BFDD_CONF = RUN_DIR / "bfdd.conf"


# What a role's long-running processes keep of the container's capabilities: tenants' and
# the internet's programs get only these (containerlab has no cap-drop, so Docker's default
# set stays for `docker exec`; PID 1 keeps NET_ADMIN to re-apply its routes). None: keep all.
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12
# (NET_ADMIN also for what PID 1 runs itself: `ethtool` when a link is re-plugged)
CHILD_CAPS = {"vm": {CAP_NET_ADMIN, CAP_NET_BIND_SERVICE},   # floating-IP addresses on lo; ports below 1024
              "client": {CAP_NET_ADMIN}}
CAP_LAST = 40          # CAP_CHECKPOINT_RESTORE, the highest this kernel's headers know
PR_CAPBSET_DROP = 24


def drop_bounding_set(keep: set[int]) -> list[int]:
    """Remove every capability but `keep` from the bounding set: what PID 1 starts from now
    on (and their children) can never hold them, root or not. Returns what was dropped."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    dropped = []
    for cap in range(CAP_LAST + 1):
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            dropped.append(cap)
    return dropped


def role_processes(lab, plan: NodePlan) -> list[tuple[str, list[str]]]:
    """The long-running processes of a node, by name (names are what fault injection holds down)."""
    if plan.role == "mux":
        return [("mux-agent", [PY, "-m", "mux.agent"]),
                ("exabgp", ["/opt/muxlab/bin/exabgp", "/etc/exabgp/exabgp.conf"]),
                # FRR's bfdd alone answers the edge's BFD (ExaBGP has none): docs/failover.md
                ("bfd", ["/usr/lib/frr/bfdd", "-f", str(BFDD_CONF), "--log", "stdout"])]
    if plan.role == "manager":
        return [("ovsdb-server", [PY, "-m", "manager.cluster"]), ("manager-api", [PY, "-m", "manager.api"])]
    if plan.role == "host":
        return [("host-agent", [PY, "-m", "hostagent.agent"])]
    if plan.role == "vm":
        return [("vm-service", [PY, "-m", "muxlab.node.vmservice"]), ("iperf3", ["iperf3", "--server", "--port", "5201"])]
    if plan.role == "client":
        return [("peer-server", [PY, "-m", "muxlab.node.peerserver"])]
    return []


EXABGP_ENV = {
    # Helpers program netlink, so ExaBGP must not drop root; stay in the foreground.
    "exabgp_daemon_user": "root",
    "exabgp_daemon_daemonize": "false",
    "exabgp_daemon_drop": "false",
    "exabgp_log_destination": "stdout",
    "exabgp_api_cli": "false",
    "exabgp_api_ack": "true",
    # ExaBGP 5.0 logs every keepalive (statistics) and every route a process adds (processes):
    # thousands of lines per change with thousands of VIPs. Sessions and errors still show.
    "exabgp_log_statistics": "false",
    "exabgp_log_processes": "false",
    # ExaBGP's reactor sleeps speed/100 s between turns when idle (10 ms by default: 100
    # wake-ups a second, most of an idle MUX's CPU). Sockets and API pipes still wake it at
    # once; only its timers (keepalive 1 s, hold 3 s) are looked at every 50 ms instead.
    "exabgp_reactor_speed": "5.0",
}


def log(msg: str) -> None:
    print(f"[muxlab-node {socket.gethostname()}] {msg}", flush=True)


def wait_for_interfaces(names: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [n for n in names if not Path(f"/sys/class/net/{n}").exists()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"interfaces {missing} never appeared: is the topology's links section right?")
        time.sleep(0.2)


def configure_network(plan: NodePlan) -> None:
    """Idempotent: run at start and again every few seconds, because the kernel deletes a
    static route whose link went down and does not restore it when the link comes back."""
    from pyroute2 import IPRoute

    from .kernel import ensure_local_addresses

    with IPRoute() as ipr:
        def idx(name: str) -> int:
            return ipr.link_lookup(ifname=name)[0]

        addresses = list(plan.addresses)
        if plan.bridge:
            br, ports, cidr = plan.bridge
            if not ipr.link_lookup(ifname=br):
                ipr.link("add", ifname=br, kind="bridge")
            # A fixed MAC: a bridge otherwise takes its lowest port's, which changes when a VM
            # port is re-plugged, and the other VMs' cached gateway MAC would go stale.
            ipr.link("set", index=idx(br), address=gateway_mac(cidr))
            for p in ports:
                if ipr.link_lookup(ifname=p):
                    ipr.link("set", index=idx(p), master=idx(br), state="up")
            ipr.link("set", index=idx(br), state="up")
            addresses.append((br, cidr))
        for ifname, cidr in addresses:
            addr, plen = cidr.split("/")
            ipr.addr("replace", index=idx(ifname), address=addr, prefixlen=int(plen))
        # after the bridge's own address, with link scope: never the source of other traffic
        for ifname in sorted({i for i, _ in plan.platform}):
            ensure_local_addresses(ipr, ifname, [c for i, c in plan.platform if i == ifname])
        if plan.secondary:
            gateway, nics = plan.secondary
            br = plan.bridge[0]
            ipr.addr("replace", index=idx(br), address=gateway.split("/")[0], prefixlen=32)
            for nic in nics:
                ipr.route("replace", dst=f"{nic}/32", oif=idx(br), scope=253)   # RT_SCOPE_LINK
            write_sysctl(f"net/ipv4/conf/{br}/proxy_arp", 1)
        if plan.second_nic:
            second_nic(ipr, plan.second_nic)
        if plan.default_via:
            # Docker's default route points at the management network; lab traffic must never
            # leave that way, so the default route goes into the lab instead.
            if plan.default_onlink:
                port = plan.addresses[0][0]
                ipr.route("replace", dst="0.0.0.0/0", gateway=plan.default_via, oif=idx(port), flags=4)  # RTNH_F_ONLINK
            else:
                ipr.route("replace", dst="0.0.0.0/0", gateway=plan.default_via)


# a VM's second NIC: the rule for replies to it, its table, and where the local table moves
SECOND_NIC_PREF, SECOND_NIC_TABLE, LOCAL_PREF = 10, 10, 20


def second_nic(ipr, nic) -> None:
    """A VM's second NIC (hairpin fix 1, seeds 000/001). Windows sends a packet from one of its
    addresses to another out through the NIC the route names; Linux delivers it inside the
    guest. So: the first NIC accepts packets whose source is the guest's own second address
    (accept_local), and replies towards the second address leave through the first NIC and
    the host (a policy rule ahead of the local table). docs/scenarios.md has the whole story."""
    ifname, cidr, gateway, dip = nic
    address, plen = cidr.split("/")
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.addr("replace", index=idx, address=address, prefixlen=int(plen))
    write_sysctl(f"net/ipv4/conf/{UPLINK_IF}/accept_local", 1)
    write_sysctl(f"net/ipv4/conf/{UPLINK_IF}/rp_filter", 0)
    write_sysctl("net/ipv4/conf/all/rp_filter", 0)
    write_sysctl("net/ipv4/conf/all/arp_ignore", 1)   # each NIC answers ARP for its own address only
    have = {(r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_TABLE") or r["table"]) for r in ipr.get_rules(family=2)}
    if (SECOND_NIC_PREF, SECOND_NIC_TABLE) not in have:
        ipr.rule("add", family=2, priority=SECOND_NIC_PREF, src=dip, src_len=32, dst=address, dst_len=32,
                 table=SECOND_NIC_TABLE)
    if (LOCAL_PREF, 255) not in have:
        ipr.rule("add", family=2, priority=LOCAL_PREF, table=255)
    if (0, 255) in have:
        ipr.rule("del", family=2, priority=0, table=255)
    ipr.route("replace", dst=f"{address}/32", gateway=gateway, oif=ipr.link_lookup(ifname=UPLINK_IF)[0], flags=4,
              table=SECOND_NIC_TABLE)


def drain(events) -> None:
    """Discard the netlink notifications waiting on `events`."""
    while select.select([events], [], [], 0)[0]:
        events.get()


def write_sysctl(key: str, value: int) -> None:
    """Docker mounts /proc/sys read-only in unprivileged containers (interfaces plugged later
    cannot get `sysctls:`); a private proc mount of the node's own namespace is writable, with
    SYS_ADMIN. A VM has no SYS_ADMIN: its topology gives the defaults its links inherit
    (render.SECOND_NIC_SYSCTLS), so here the value is already right and nothing is written."""
    try:
        if Path("/proc/sys", key).read_text().strip() == str(value):
            return
    except OSError:
        pass
    proc = RUN_DIR / "proc"
    if not (proc / "sys").exists():
        proc.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    (proc / "sys" / key).write_text(f"{value}\n")


def gateway_mac(cidr: str) -> str:
    """02:01 + the gateway's IPv4 bytes: stable, locally administered, unique in the lab."""
    return "02:01:" + ":".join(f"{int(b):02x}" for b in cidr.split("/")[0].split("."))


def bring_up(plan: NodePlan) -> None:
    """Lab ports go up once, at start: later, fault injection may hold one down."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for ifname in plan.interfaces:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")


class Supervisor:
    """Keeps the role's processes running; a process listed in RUN_DIR/stopped/ is left down
    (that is how fault injection stops a service without the supervisor undoing it)."""

    def __init__(self, procs: list[tuple[str, list[str]]], plan: NodePlan):
        self.procs = procs
        self.plan = plan
        self.network_checked = time.monotonic()
        self.offloads = Offloads(list(plan.interfaces))
        self.running: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ, **(EXABGP_ENV if name == "exabgp" else {}))
        log(f"starting {name}: {' '.join(argv)}")
        self.running[name] = subprocess.Popen(argv, env=env)

    def run(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK

        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        stopped_dir = run_path(STOPPED_DIR)
        stopped_dir.mkdir(parents=True, exist_ok=True)
        events = IPRoute()
        events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE)
        while not self.stopping:
            for name, argv in self.procs:
                held = (stopped_dir / name).exists()
                p = self.running.get(name)
                if held and p and p.poll() is None:
                    log(f"{name} held down by {stopped_dir / name}: stopping it")
                    p.terminate()
                elif not held and (p is None or p.poll() is not None):
                    if p is not None:
                        log(f"{name} exited with {p.returncode}; restarting")
                    self.start(name, argv)
            changed = bool(select.select([events], [], [], 0)[0])
            if changed or time.monotonic() - self.network_checked > NETWORK_RECHECK:
                self.network_checked = time.monotonic()
                drain(events)
                try:
                    configure_network(self.plan)
                except Exception as exc:  # a link that is down right now: next time
                    log(f"network re-check: {exc}")
                self.check_offloads()
                time.sleep(0.05)
                drain(events)   # what re-applying the plan itself announced
            # reap anything else that died (PID 1 duty)
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass
            select.select([events], [], [], TICK)

    def check_offloads(self) -> None:
        for dev, turned_on in self.offloads.ensure().items():
            log(f"{dev}: offloads switched on: {', '.join(turned_on) or 'none needed'}")

    def stop(self) -> None:
        self.stopping = True
        for p in self.running.values():
            if p.poll() is None:
                p.terminate()
        sys.exit(0)


def prepare_bfdd(lab, name: str) -> None:
    """bfdd's configuration, and the run directory FRR daemons keep their sockets in."""
    import shutil
    BFDD_CONF.parent.mkdir(parents=True, exist_ok=True)
    BFDD_CONF.write_text(render_mux_bfdd(lab, name))
    Path("/var/run/frr").mkdir(parents=True, exist_ok=True)
    shutil.chown("/var/run/frr", "frr", "frr")


def main() -> None:
    name = os.environ.get("MUXLAB_NODE") or socket.gethostname()
    lab = load_lab(FABRIC_PATH)
    plan = node_plan(lab, name)
    if plan.role == "mux":
        prepare_bfdd(lab, name)
    log(f"role {plan.role}; waiting for {plan.interfaces}")
    wait_for_interfaces(plan.interfaces)
    bring_up(plan)
    configure_network(plan)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "network-ready").write_text(str(time.time()))
    log("network configured")
    if plan.role in CHILD_CAPS:
        log(f"capabilities of its processes: bounding set reduced ({len(drop_bounding_set(CHILD_CAPS[plan.role]))} dropped)")
    supervisor = Supervisor(role_processes(lab, plan), plan)
    supervisor.check_offloads()
    supervisor.run()


if __name__ == "__main__":
    main()
