"""A packet's walk through the lab, assembled from kernel evidence collected on every node:
packet records of a `tcpdump -i any` capture (time, interface, direction, outer and inner
headers) and `nft monitor trace` lines (the rules that matched and their verdicts). Pure
logic; `muxlab trace` (muxlab/cli/trace.py) collects the evidence.

The trace mark (`meta nftrace`) does not survive a veth crossing or VXLAN encapsulation, so
each node sets it again on the probe's packets (its ports), and the outer VXLAN packet is
matched on the inner ports it carries (`@th` raw payload at the inner L4 header).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..datapath.conventions import MGMT_IF, VXLAN_PORT

# inner L4 ports inside a VXLAN packet, counted from the outer UDP header:
# UDP 8 + VXLAN 8 + inner Ethernet 14 + inner IPv4 20 (no options)
INNER_L4_OFFSET = 8 + 8 + 14 + 20


def trace_ruleset(sport: int, table: str) -> str:
    """An nft table that marks the probe's packets for tracing in one node: both directions
    of the flow, bare or inside VXLAN, before any other hook (raw is -300)."""
    bits = INNER_L4_OFFSET * 8
    rules = [f"th sport {sport} meta nftrace set 1", f"th dport {sport} meta nftrace set 1",
             f"udp dport {VXLAN_PORT} @th,{bits},16 {sport} meta nftrace set 1",
             f"udp dport {VXLAN_PORT} @th,{bits + 16},16 {sport} meta nftrace set 1"]
    body = "\n".join(f"    {r}" for r in rules)
    return (f"table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n"
            f"  chain pre {{\n    type filter hook prerouting priority -350; policy accept;\n{body}\n  }}\n"
            f"  chain out {{\n    type filter hook output priority -350; policy accept;\n{body}\n  }}\n}}\n")


_TRACE = re.compile(r"^trace id (\S+) (\w+) (\S+) (\S+) (.*)$")


@dataclass
class RuleHit:
    table: str
    chain: str
    rule: str
    verdict: str
    mark: str | None = None


def parse_trace(lines: list[str], own_table: str) -> list[dict]:
    """`nft monitor trace` lines → one entry per traced packet pass: its header line and the
    rules of muxlab's tables it matched, in order (Docker's own chains and the tracer's are left out)."""
    passes: dict[str, dict] = {}
    for line in lines:
        m = _TRACE.match(line.strip())
        if not m:
            continue
        tid, _family, table, chain, rest = m.groups()
        p = passes.setdefault(tid, {"id": tid, "packet": None, "rules": []})
        if rest.startswith("packet: ") and p["packet"] is None:
            p["packet"] = rest[len("packet: "):].strip()
        if table == own_table or not table.startswith("muxlab"):
            continue
        if rest.startswith("rule "):
            rm = re.match(r"rule (.*) \(verdict (\S+)(?: (\S+))?\)$", rest.strip())
            if rm:
                verdict = rm.group(2) + (f" {rm.group(3)}" if rm.group(3) else "")
                p["rules"].append({"table": table, "chain": chain, "rule": rm.group(1), "verdict": verdict})
        elif rest.startswith(("verdict ", "policy ")):
            mark = re.search(r"meta mark (0x[0-9a-f]+)", rest)
            if mark and p["rules"]:
                p["rules"][-1]["mark"] = mark.group(1)
    return [p for p in passes.values() if p["rules"]]


def flow_of(rec: dict) -> dict:
    """The client's flow a record carries: the inner packet of VXLAN, else the packet."""
    return rec.get("inner", rec)


# The walk follows one packet each way: a TCP flow's SYN and SYN-ACK (a UDP flow has one of each)
FIRST = {"request": ("S", "tcp flags == syn "), "reply": ("SA", "tcp flags == 0x12 ")}


def direction(rec: dict, sport: int) -> str | None:
    """request or reply when the record is the flow's first packet that way, else None."""
    f = flow_of(rec)
    d = "request" if f.get("sport") == sport else "reply" if f.get("dport") == sport else None
    if d is None or ("flags" in f and f["flags"] != FIRST[d][0]):
        return None
    return d


def describe(rec: dict) -> str:
    f = rec
    text = f"{f['src']}:{f.get('sport', '')} → {f['dst']}:{f.get('dport', '')}"
    if rec.get("flags"):
        text += f" [{rec['flags']}]"
    if "vni" in rec:
        inner = rec["inner"]
        text = (f"VXLAN {rec['src']} → {rec['dst']} VNI {rec['vni']} | inner {rec.get('inner_smac', '?')} → "
                f"{rec.get('inner_dmac', '?')} {inner['src']}:{inner.get('sport', '')} → {inner['dst']}:{inner.get('dport', '')}")
    return text


@dataclass
class Hop:
    node: str
    direction: str
    events: list[dict] = field(default_factory=list)   # {"time", "iface", "out", "headers"}
    rules: list[dict] = field(default_factory=list)

    @property
    def iface_in(self) -> str | None:
        return next((e["iface"] for e in self.events if not e["out"]), None)

    @property
    def iface_out(self) -> str | None:
        return next((e["iface"] for e in reversed(self.events) if e["out"]), None)

    def as_dict(self) -> dict:
        return {"node": self.node, "direction": self.direction, "in": self.iface_in, "out": self.iface_out,
                "events": self.events, "rules": self.rules}


def assemble(records: dict[str, list[dict]], traces: dict[str, list[dict]], sport: int, mgmt_if: str = MGMT_IF) -> dict:
    """The request's and the reply's hops in the order the packet crossed them: a new hop each
    time the packet is seen on another node (the edge appears twice on the request's path:
    once routing the client's packet to a MUX, once routing the MUX's VXLAN to a host)."""
    out: dict[str, list[Hop]] = {"request": [], "reply": []}
    for d in out:
        events = sorted(((node, r) for node, recs in records.items() for r in recs
                         if r.get("iface") != mgmt_if and direction(r, sport) == d), key=lambda x: x[1]["time"])
        for node, r in events:
            if not out[d] or out[d][-1].node != node:
                out[d].append(Hop(node, d))
            hop = out[d][-1]
            ev = {"time": round(r["time"], 6), "iface": r.get("iface"), "out": r.get("out", False), "headers": describe(r)}
            if not hop.events or (hop.events[-1]["iface"], hop.events[-1]["out"], hop.events[-1]["headers"]) != (
                    ev["iface"], ev["out"], ev["headers"]):
                hop.events.append(ev)
        for node in {h.node for h in out[d]}:
            hops = [h for h in out[d] if h.node == node]
            vxlan_seen = False
            for p in traces.get(node, []):
                pkt = (p["packet"] or "") + " "
                ports = re.search(r"(?:tcp|udp) sport (\d+) (?:tcp|udp) dport (\d+)", pkt)
                if f"udp dport {VXLAN_PORT}" in pkt:
                    # the outer VXLAN packet shows no inner flags: the first one is the first packet's
                    if vxlan_seen or d == "reply":
                        continue
                    vxlan_seen = True
                    target = next((h for h in hops if any(e["headers"].startswith("VXLAN") for e in h.events)), hops[-1])
                elif (ports and (int(ports.group(1)) == sport) == (d == "request")
                      and ("tcp flags" not in pkt or FIRST[d][1] in pkt)):
                    target = hops[0]
                else:
                    continue
                target.rules.extend(p["rules"])
    return {d: [h.as_dict() for h in hops] for d, hops in out.items()}


# --- the kernel's jhash, to name the Maglev bucket a flow fell into --------------------------

def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def jhash(key: bytes, initval: int) -> int:
    """Linux's jhash() (lookup3, include/linux/jhash.h) over bytes, as nft's `jhash` calls it."""
    M = 0xFFFFFFFF
    length = len(key)
    a = b = c = (0xDEADBEEF + length + initval) & M

    def mix(a, b, c):
        a = (a - c) & M; a ^= _rot(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= _rot(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 4); b = (b + a) & M
        return a, b, c

    def final(a, b, c):
        c ^= b; c = (c - _rot(b, 14)) & M
        a ^= c; a = (a - _rot(c, 11)) & M
        b ^= a; b = (b - _rot(a, 25)) & M
        c ^= b; c = (c - _rot(b, 16)) & M
        a ^= c; a = (a - _rot(c, 4)) & M
        b ^= a; b = (b - _rot(a, 14)) & M
        c ^= b; c = (c - _rot(b, 24)) & M
        return c

    def word(chunk: bytes) -> int:
        return int.from_bytes(chunk.ljust(4, b"\0"), "little")  # the kernel reads u32s in CPU order (x86)

    i = 0
    while length > 12:
        a = (a + word(key[i:i + 4])) & M
        b = (b + word(key[i + 4:i + 8])) & M
        c = (c + word(key[i + 8:i + 12])) & M
        a, b, c = mix(a, b, c)
        i += 12
        length -= 12
    if length == 0:
        return c
    tail = key[i:]
    a = (a + word(tail[0:4])) & M
    if length > 4:
        b = (b + word(tail[4:8])) & M
    if length > 8:
        c = (c + word(tail[8:12])) & M
    return final(a, b, c)


def maglev_bucket(fields: list[bytes], size: int, seed: int) -> int:
    """The bucket of `jhash f1 . f2 ... mod size seed S`: each field of a concatenation
    occupies whole 32-bit registers, and the hash is scaled to the modulus as the kernel
    does (reciprocal_scale)."""
    key = b"".join(f.ljust((len(f) + 3) // 4 * 4, b"\0") for f in fields)
    return (jhash(key, seed) * size) >> 32
