"""`muxlab trace --from client1 --to VIP --port 80 [--udp]`: send one real flow (a request and
its reply) and show its walk hop by hop, from evidence the kernels of every node give:
`tcpdump -i any` (interfaces, direction, outer and inner headers) and `nft monitor trace`
(rules matched, verdicts, marks). The assembly is muxlab/observe/pathwalk.py."""
from __future__ import annotations

import ipaddress
import json
import random
import re
import tempfile
import time
from pathlib import Path

from ..datapath.conventions import MAGLEV_TABLES_FILE, VXLAN_PORT, rule_tables
from ..errors import MuxlabError
from ..fabric.render import links
from ..observe import pathwalk
from . import lab as labmod
from . import observe
from .lab import LabRef
from .traffic import run_flows

TRACE_TABLE = "muxlab_trace"


def _nodes(ref: LabRef) -> list[str]:
    """Every node a packet can cross (managers sit on the management network only)."""
    return [n for n in ref.lab.node_names() if ref.lab.role_of(n) != "manager"]


def start(ref: LabRef, nodes: list[str], sport: int, tag: str) -> None:
    filt = (f"(tcp or udp) and (port {sport} or (udp port {VXLAN_PORT} and (udp[{pathwalk.INNER_L4_OFFSET}:2] = {sport} "
            f"or udp[{pathwalk.INNER_L4_OFFSET + 2}:2] = {sport})))")
    rules = pathwalk.trace_ruleset(sport, TRACE_TABLE)
    for n in nodes:
        observe.start_tcpdump(ref, n, f"{tag}.pcap", filt, timeout=60)
        # `nft monitor` prints nothing when it is ready: it is once it reports a table made for the
        # purpose (then the trace rules go in, so no traced packet comes before it listens)
        ready = f"{TRACE_TABLE}_ready"
        observe.sh(ref, n, f"cat > {tag}.nft <<'EOF'\n{rules}EOF\n"
                           f"(timeout 60 nft monitor > {tag}.trace 2>&1 & echo $! > {tag}.monitor); "
                           f"for i in $(seq 200); do nft add table ip {ready}; nft delete table ip {ready}; "
                           f"grep -q 'table ip {ready}' {tag}.trace && break; sleep 0.05; done; nft -f {tag}.nft")


def collect(ref: LabRef, nodes: list[str], tag: str) -> tuple[dict, dict]:
    """Each node's capture, summarised here (the edge's image has no Python), and its trace."""
    from ..node.capture import summarise
    from .capture import interfaces
    records, traces = {}, {}
    for n in nodes:
        observe.stop_tcpdump(ref, n, f"{tag}.pcap")   # only the capture this trace started
        observe.sh(ref, n, f"kill $(cat {tag}.monitor) 2>/dev/null; nft delete table ip {TRACE_TABLE}", check=False)
    with tempfile.TemporaryDirectory() as tmp:
        for n in nodes:
            local = f"{tmp}/{n}.pcap"
            labmod.run(["docker", "cp", f"{ref.container(n)}:{tag}.pcap", local])
            records[n] = summarise(local, detail=True, ifnames=interfaces(ref, n))
            text = observe.sh(ref, n, f"cat {tag}.trace; rm -f {tag}.*", check=False).stdout
            traces[n] = pathwalk.parse_trace(text.splitlines(), TRACE_TABLE)
    return records, traces


def trace(ref: LabRef, source: str, to: str, port: int, udp: bool = False) -> dict:
    if ref.lab.role_of(source) not in ("client", "vm"):
        raise MuxlabError(f"--from {source}: a trace starts at a client (or a VM), not a {ref.lab.role_of(source)}")
    lbs = ref.api().load_balancers()
    lb, vip = labmod.vip_address(lbs, to)
    sport = random.randint(20000, 59999)
    nodes = [n for n in _nodes(ref) if n in {c["node"] for c in labmod.containers(ref.name) if c["state"] == "running"}]
    tag = f"/tmp/muxlab-trace-{sport}"
    start(ref, nodes, sport, tag)
    try:
        flow = run_flows(ref, source, vip, port, 1, udp=udp, sport=sport, timeout=3.0)
        time.sleep(0.5)
    finally:
        records, traces = collect(ref, nodes, tag)
    walk = pathwalk.assemble(records, traces, sport)
    served = next(iter(flow["by_dip"]), None)
    result = {"from": source, "to": vip, "load_balancer": lb, "protocol": "udp" if udp else "tcp", "port": port,
              "sport": sport, "served_by": served, "answered": flow["failures"] == 0, **walk}
    result["ecmp"] = _ecmp(ref, walk)
    # the address the flow left with, as the source node's own capture saw it
    client = next((pathwalk.flow_of(r)["src"] for r in records.get(source, []) if pathwalk.direction(r, sport) == "request"),
                  None)
    result["maglev"] = _maglev(ref, lbs, walk, vip, port, "udp" if udp else "tcp", client, sport, served)
    return result


def _ecmp(ref: LabRef, walk: dict) -> dict | None:
    """The MUX the edge's ECMP hash sent the request to: the far end of its outgoing port."""
    edge = next((h for h in walk["request"] if h["node"] == "edge"), None)
    if not edge or not edge["out"]:
        return None
    peer = next((l.b for l in links(ref.lab) if l.a == "edge" and l.a_if == edge["out"]), None)
    candidates = sorted(m.name for m in ref.lab.muxes)
    return {"interface": edge["out"], "mux": peer, "candidates": candidates}


def _maglev(ref: LabRef, lbs: dict, walk: dict, vip: str, port: int, proto: str, client: str | None, sport: int,
            served: str | None) -> dict | None:
    """The Maglev bucket the MUX's jhash chose, recomputed from the packet's fields and the
    rule that matched, and the bucket's owner in that MUX's table."""
    from ..lb.azure import LoadBalancer
    from ..lb.compiler import compile_facts
    hop = next((h for h in walk["request"] if ref.lab.role_of(h["node"]) == "mux"), None)
    if hop is None:
        return None
    rule_text = next((r["rule"] for r in hop["rules"] if "jhash" in r["rule"]), None)
    facts = compile_facts({n: LoadBalancer.model_validate(b) for n, b in lbs.items()}, ref.lab)
    rule = next((r for r in facts.rules if str(r.vip) == vip and r.port == port and r.protocol == proto), None)
    out = {"mux": hop["node"], "rule": f"{rule.lb}/{rule.name}" if rule else None, "nft_rule": rule_text}
    if not rule_text or not rule or client is None:
        return out
    m = re.search(r"jhash (.+?) mod (\d+) seed (0x[0-9a-f]+)", rule_text)
    if not m:
        return out
    values = {"ip saddr": ipaddress.IPv4Address(client).packed, "ip daddr": ipaddress.IPv4Address(vip).packed,
              "th sport": sport.to_bytes(2, "big"), "th dport": port.to_bytes(2, "big"),
              "meta l4proto": (6 if proto == "tcp" else 17).to_bytes(1, "big")}
    fields = [f.strip() for f in m.group(1).split(".")]
    if not all(f in values for f in fields):
        return out
    size, seed = int(m.group(2)), int(m.group(3), 16)
    bucket = pathwalk.maglev_bucket([values[f] for f in fields], size, seed)
    table = rule_tables(json.loads(observe.sh(ref, hop["node"], f"cat {MAGLEV_TABLES_FILE}").stdout)).get(out["rule"], [])
    owner = table[bucket] if bucket < len(table) else None
    return {**out, "hashed": fields, "size": size, "bucket": bucket, "owner": owner,
            "agrees_with_capture": owner == served if served else None}


def format_trace(t: dict) -> str:
    lines = [f"{t['protocol'].upper()} {t['from']} :{t['sport']} → {t['load_balancer']} {t['to']}:{t['port']}   "
             f"{'answered by ' + str(t['served_by']) if t['answered'] else 'NOT ANSWERED'}"]
    if t.get("ecmp"):
        e = t["ecmp"]
        lines.append(f"edge ECMP: out {e['interface']} to {e['mux']} (one of {', '.join(e['candidates'])})")
    if t.get("maglev") and t["maglev"].get("bucket") is not None:
        g = t["maglev"]
        agree = {True: "matches the VM that answered", False: "DIFFERS from the VM that answered", None: ""}[g["agrees_with_capture"]]
        lines.append(f"Maglev on {g['mux']}: jhash({' . '.join(g['hashed'])}) → bucket {g['bucket']} of {g['size']} "
                     f"in {g['rule']} → {g['owner']} ({agree})")
    for d in ("request", "reply"):
        lines += ["", f"{d.upper()}: {'the first packet (SYN)' if d == 'request' else 'its answer (SYN-ACK)'}"
                        if t["protocol"] == "tcp" else f"{d.upper()}"]
        for i, hop in enumerate(t[d], 1):
            lines.append(f"{i}. {hop['node']:<8} in {hop['in'] or '-':<10} out {hop['out'] or '-'}")
            for ev in hop["events"]:
                lines.append(f"     {'→' if ev['out'] else '←'} {ev['iface'] or '?':<10} {ev['headers']}")
            for r in hop["rules"]:
                mark = f"  mark {r['mark']}" if r.get("mark") else ""
                lines.append(f"     nft {r['table']}/{r['chain']}: {r['rule']}  ({r['verdict']}){mark}")
    return "\n".join(lines)


def write_picture(ref: LabRef, t: dict, path: Path) -> None:
    from ..fabric.drawing import topology_svg
    paths = {"request": [h["node"] for h in t["request"]], "reply": [h["node"] for h in t["reply"]]}
    title = f"{t['protocol'].upper()} {t['from']} → {t['to']}:{t['port']} (sport {t['sport']})"
    path.write_text(topology_svg(ref.lab, links(ref.lab), paths, title))
