"""Fault injection: `muxlab fail NODE --mode ...` and `muxlab heal NODE`.

Each fault is recorded on the operator's machine (.labs/LAB/faults/NODE.json) so `status`
lists it. `heal` does not need the record: it looks at the node and repairs what it finds,
so a node a learner stopped with docker by hand comes back too. Modes:
  kill          docker kill: the container and its links vanish (heal: docker start, then
                `containerlab tools veth create` re-plugs each of its links)
  pause         docker pause: the node freezes, links stay up (heal: docker unpause)
  link-down     the node's uplink (eth1, towards the edge or host) goes down (heal: up)
  stop-service  hold the node's service down: a VM's application, a MUX's BGP speaker,
                a host's agent (heal: let it run again)
  crash         kill -9 the service process once; the node's supervisor restarts it
  rp-filter-strict  the edge only: strict reverse-path filtering on every interface (seed 004:
                the security measure DSR needs relaxed). A DSR reply's source is a VIP, which
                the edge routes to the MUXes, so a reply arriving from a host is dropped and
                counted (TcpExtIPReversePathFilter). heal: back to loose (2), the edge's setting
"""
from __future__ import annotations

import json

from ..datapath.conventions import STOPPED_DIR, UPLINK_IF
from ..errors import MuxlabError
from ..fabric.render import links
from ..node.runtime import write_atomic
from .lab import LabRef, containers, docker_exec, run

MODES = ("kill", "pause", "link-down", "stop-service", "crash", "rp-filter-strict")
EDGE_MODES = ("pause", "rp-filter-strict")
# The edge's reverse-path filter: loose in its topology (render.GROUP_SYSCTLS), strict as a fault.
RP_LOOSE, RP_STRICT = 2, 1
# /proc/sys is read-only in the container; a private mount namespace (the edge has SYS_ADMIN) may write it
RP_SET = ("unshare --mount sh -c 'mount -o remount,rw /proc/sys && "
          "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do case $f in */lo/*) ;; *) echo {value} > $f;; esac; done'")
RP_SHOW = "grep -H . /proc/sys/net/ipv4/conf/*/rp_filter | grep -v /lo/"
SERVICE = {"vm": "vm-service", "mux": "exabgp", "host": "host-agent", "manager": "ovsdb-server"}


def _record(ref: LabRef, node: str):
    return ref.state_dir / "faults" / f"{node}.json"


def fail(ref: LabRef, node: str, mode: str) -> str:
    role = ref.lab.role_of(node)  # KeyError names a node that does not exist
    if mode not in MODES:
        raise MuxlabError(f"--mode {mode}: one of {', '.join(MODES)}")
    if node == "edge" and mode not in EDGE_MODES:
        raise MuxlabError(f"the edge takes only --mode {' or '.join(EDGE_MODES)}; to cut an edge link, fail the node "
                          "at its far end with --mode link-down")
    if mode == "rp-filter-strict" and node != "edge":
        raise MuxlabError(f"--mode rp-filter-strict: only the edge filters the replies' path ({node} is a {role})")
    if mode in ("stop-service", "crash") and role not in SERVICE:
        raise MuxlabError(f"--mode {mode}: a {role} runs no service (services: vm, mux, host)")
    state = {c["node"]: c["state"] for c in containers(ref.name)}
    if state.get(node) != "running":
        raise MuxlabError(f"{node} is {state.get(node, 'not deployed')}: nothing to fail")
    rec = _record(ref, node)
    if rec.exists() and mode != "crash":
        raise MuxlabError(f"{node} already has a fault ({json.loads(rec.read_text())['mode']}): `muxlab heal {node}` first")
    c = ref.container(node)
    if mode == "kill":
        run(["docker", "kill", c])
        did, undo = f"killed container {c} (its links are gone)", f"muxlab heal {node}   (restarts it and re-plugs its links)"
    elif mode == "pause":
        run(["docker", "pause", c])
        did, undo = f"froze {c} (docker pause): it answers nothing, its links stay up", f"muxlab heal {node}   (docker unpause)"
    elif mode == "link-down":
        docker_exec(ref, node, ["ip", "link", "set", UPLINK_IF, "down"])
        did, undo = f"set {node}'s {UPLINK_IF} down (its uplink)", f"muxlab heal {node}   (ip link set {UPLINK_IF} up)"
    elif mode == "rp-filter-strict":
        docker_exec(ref, node, ["sh", "-c", RP_SET.format(value=RP_STRICT)])
        did, undo = (f"set strict reverse-path filtering (rp_filter={RP_STRICT}) on every interface of {node}: DSR "
                     f"replies from hosts (source: a VIP) are dropped; count them with `docker exec {c} nstat -az "
                     f"TcpExtIPReversePathFilter`"), f"muxlab heal {node}   (loose again, rp_filter={RP_LOOSE})"
    elif mode == "stop-service":
        svc = SERVICE[role]
        docker_exec(ref, node, ["touch", f"{STOPPED_DIR}/{svc}"])
        did, undo = f"stopped {svc} on {node} and hold it down", f"muxlab heal {node}   (the supervisor starts it again)"
    else:
        svc = SERVICE[role]
        docker_exec(ref, node, ["pkill", "-9", "-f", {"exabgp": "exabgp", "vm-service": "muxlab.node.vmservice",
                                                     "host-agent": "hostagent.agent", "ovsdb-server": "ovsdb-server"}[svc]],
                    check=False)
        return f"crashed {svc} on {node} (kill -9); its supervisor restarts it within a second. Nothing to heal."
    write_atomic(rec, json.dumps({"mode": mode}))
    return f"{did}.\nundo: {undo}"


def heal(ref: LabRef, node: str) -> str:
    """Bring a node back however it failed: by `muxlab fail` or by hand (a container stopped,
    killed or paused with docker, a link set down, a service held down). Each repair is
    checked against what the node looks like now, so healing a healthy node changes nothing."""
    role = ref.lab.role_of(node)
    rec = _record(ref, node)
    c = ref.container(node)
    state = {x["node"]: x["state"] for x in containers(ref.name)}.get(node)
    if state is None:
        raise MuxlabError(f"{node}: its container {c} does not exist (removed?): redeploy the lab "
                          f"(`muxlab down` then `muxlab up`)")
    did = []
    if state == "paused":
        run(["docker", "unpause", c])
        did.append("unpaused it")
    elif state != "running":
        run(["docker", "start", c])
        did.append(f"started its container (was {state})")
    # links: a container that stopped took its veth ends with it, and so did a peer that stopped
    for link in links(ref.lab):
        if node not in (link.a, link.b):
            continue
        ends = [(link.a, link.a_if), (link.b, link.b_if)]
        present = [_has_interface(ref, n, i) for n, i in ends]
        if all(present):
            continue
        peer_state = {x["node"]: x["state"] for x in containers(ref.name)}.get(link.b if link.a == node else link.a)
        if peer_state != "running":
            did.append(f"left link {link.a}:{link.a_if}-{link.b}:{link.b_if} (its far end is {peer_state}: heal it too)")
            continue
        for (n, i), there in zip(ends, present):  # a half-link left behind would block re-creating it
            if there:
                docker_exec(ref, n, ["ip", "link", "del", i], check=False)
        run(["containerlab", "tools", "veth", "create", "--mtu", str(link.mtu),
             "-a", f"{ref.container(link.a)}:{link.a_if}", "-b", f"{ref.container(link.b)}:{link.b_if}"], timeout=120)
        did.append(f"re-plugged {link.a}:{link.a_if} <-> {link.b}:{link.b_if}")
    for link in links(ref.lab):
        for n, i in ((link.a, link.a_if), (link.b, link.b_if)):
            if n == node and _link_down(ref, n, i):
                docker_exec(ref, n, ["ip", "link", "set", i, "up"])
                did.append(f"set {i} up")
    if role == "edge":
        shown = docker_exec(ref, node, ["sh", "-c", RP_SHOW], check=False).stdout.split()
        if any(not line.endswith(f":{RP_LOOSE}") for line in shown):
            docker_exec(ref, node, ["sh", "-c", RP_SET.format(value=RP_LOOSE)])
            did.append(f"set reverse-path filtering back to loose (rp_filter={RP_LOOSE})")
    if role in SERVICE:
        held = docker_exec(ref, node, ["sh", "-c", f"ls {STOPPED_DIR}/ 2>/dev/null"], check=False).stdout.split()
        if held:
            docker_exec(ref, node, ["sh", "-c", f"rm -f {STOPPED_DIR}/*"])
            did.append(f"let {', '.join(held)} run again")
    rec.unlink(missing_ok=True)
    return f"healed {node}: " + "; ".join(did) if did else f"{node} looks healthy: nothing to heal"


def _has_interface(ref: LabRef, node: str, iface: str) -> bool:
    return docker_exec(ref, node, ["ip", "link", "show", iface], check=False).returncode == 0


def _link_down(ref: LabRef, node: str, iface: str) -> bool:
    out = docker_exec(ref, node, ["ip", "-j", "link", "show", iface], check=False).stdout
    try:
        return "UP" not in json.loads(out)[0]["flags"]
    except (ValueError, IndexError, KeyError):
        return False


def drain(ref: LabRef, mux: str, on: bool) -> str:
    if ref.lab.role_of(mux) != "mux":
        raise MuxlabError(f"{mux} is a {ref.lab.role_of(mux)}; only MUXes drain")
    ref.api().put(f"/muxes/{mux}", {"drained": on})
    if on:
        return (f"{mux} drained: it withdraws its VIPs; the edge moves its flows to the other MUXes, which map them to "
                f"the same DIPs.\nundo: muxlab undrain {mux}")
    return f"{mux} undrained: it announces its VIPs again"
