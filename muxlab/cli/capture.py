"""`muxlab capture NODE[:IF] ... -w FILE.pcapng`: tcpdump on several nodes at once, merged
into one time-ordered pcapng whose interfaces are named NODE:IF, so Wireshark shows one
packet going client → edge → MUX → (VXLAN) → host → VM and the reply going straight back.

Every container shares the machine's clock, so the nodes' timestamps order correctly. A node
captured without an interface uses tcpdump's `-i any` (Linux cooked v2 headers, which carry
the interface index and direction); the merge names each packet's real interface from it.
"""
from __future__ import annotations

import json
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..datapath.conventions import LIVENESS_PORT, MGMT_IF, OVSDB_PORT, RAFT_PORT
from ..errors import MuxlabError
from . import observe
from .lab import LabRef, containers, docker_exec, run

# the lab's own chatter (BGP, BFD, host liveness, OVSDB, IPv6 neighbour discovery), which hides the traffic
CHATTER = f"not port 179 and not port 3784 and not port {LIVENESS_PORT} and not port {OVSDB_PORT} and not port {RAFT_PORT}"
DEFAULT_FILTER = f"not ip6 and {CHATTER}"
# Linux cooked v2 packet types: 4 = sent by this host; pcapng's epb_flags direction: 1 in, 2 out
OUTGOING = 4


@dataclass(frozen=True)
class Spec:
    node: str
    iface: str  # "any": every interface of the node

    @property
    def label(self) -> str:
        return f"{self.node}:{self.iface}"


def parse_specs(ref: LabRef, texts: list[str]) -> list[Spec]:
    """NODE or NODE:IF, each checked against the lab before anything starts."""
    running = {c["node"] for c in containers(ref.name) if c["state"] == "running"}
    specs = []
    for text in texts:
        node, _, iface = text.partition(":")
        ref.lab.role_of(node)  # KeyError naming an unknown node
        if node not in running:
            raise MuxlabError(f"capture {text}: {node} is not running")
        if iface and docker_exec(ref, node, ["ip", "link", "show", iface], check=False).returncode != 0:
            have = [i["ifname"] for i in json.loads(docker_exec(ref, node, ["ip", "-j", "link"]).stdout)]
            raise MuxlabError(f"capture {text}: {node} has no interface {iface!r} (has {', '.join(have)})")
        specs.append(Spec(node, iface or "any"))
    if not specs:
        raise MuxlabError("capture: name at least one NODE[:IF]")
    return specs


def interfaces(ref: LabRef, node: str) -> dict[int, str]:
    return {i["ifindex"]: i["ifname"] for i in json.loads(docker_exec(ref, node, ["ip", "-j", "link"]).stdout)}


def merge(parts: list[tuple[Spec, Path, dict[int, str]]], out: Path) -> dict[str, int]:
    """Merge per-node pcaps into one pcapng ordered by time; returns packets per interface."""
    from scapy.layers.l2 import CookedLinuxV2
    from scapy.utils import PcapNgWriter, PcapReader

    packets = []
    for spec, path, ifnames in parts:
        with PcapReader(str(path)) as reader:
            for pkt in reader:
                if isinstance(pkt, CookedLinuxV2):
                    if ifnames.get(pkt.ifindex) == MGMT_IF:
                        continue
                    pkt.sniffed_on = f"{spec.node}:{ifnames.get(pkt.ifindex, pkt.ifindex)}"
                    pkt.direction = 2 if pkt.pkttype == OUTGOING else 1
                else:
                    pkt.sniffed_on = spec.label
                packets.append(pkt)
    packets.sort(key=lambda p: p.time)
    counts: dict[str, int] = {}
    with PcapNgWriter(str(out)) as writer:
        for pkt in packets:
            writer.write(pkt)
            counts[pkt.sniffed_on] = counts.get(pkt.sniffed_on, 0) + 1
    return counts


def capture(ref: LabRef, texts: list[str], out: Path, duration: float, filt: str = DEFAULT_FILTER) -> dict[str, int]:
    """Capture for `duration` seconds (or until Ctrl-C) and write the merged file."""
    specs = parse_specs(ref, texts)
    tag = f"/tmp/muxlab-capture-{time.monotonic_ns()}"
    ifnames = {s.node: interfaces(ref, s.node) for s in specs}
    started = []
    try:
        for i, s in enumerate(specs):
            observe.start_tcpdump(ref, s.node, f"{tag}-{i}.pcap", filt, s.iface, timeout=duration + 60, extra="-s 262144")
            started.append((i, s))
        print(f"capturing on {', '.join(s.label for s in specs)} for {duration:g} s (Ctrl-C stops early)", flush=True)
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            time.sleep(duration)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, old)
    finally:
        for i, s in started:
            observe.stop_tcpdump(ref, s.node, f"{tag}-{i}.pcap")
    with tempfile.TemporaryDirectory() as tmp:
        parts = []
        for i, s in enumerate(specs):
            local = Path(tmp) / f"{i}.pcap"
            run(["docker", "cp", f"{ref.container(s.node)}:{tag}-{i}.pcap", str(local)])
            docker_exec(ref, s.node, ["rm", "-f", f"{tag}-{i}.pcap"], check=False)
            parts.append((s, local, ifnames[s.node]))
        return merge(parts, out)
