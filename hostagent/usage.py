"""What this host's kernel says about outbound SNAT: connections refused for want of a port
(nft counters) and the VIP ports source-NATed connections hold (conntrack). Read by the
host agent every few seconds; no pyroute2 here, so the parsing is testable anywhere."""
from __future__ import annotations

import json
import subprocess


def nft_counters(table: str) -> dict[str, int]:
    """Packets of every named counter of an nftables table (nft's JSON output)."""
    proc = subprocess.run(["nft", "-j", "list", "counters", "table", "ip", table], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return {o["counter"]["name"]: o["counter"]["packets"] for o in json.loads(proc.stdout)["nftables"] if "counter" in o}


def snat_ports_in_use() -> set[tuple[str, int]]:
    """(VIP, port) of every source-NATed connection in conntrack. The conntrack tool, not a
    netlink dump parsed here: it filters in the kernel and parses in C, 70 ms where pyroute2
    took 5 s for 2000 entries, time this agent's probes cannot spare."""
    proc = subprocess.run(["conntrack", "-L", "--src-nat"], capture_output=True, text=True, timeout=5)
    return snat_holders(proc.stdout)


def snat_holders(listing: str) -> set[tuple[str, int]]:
    """From `conntrack -L` lines: the reply tuple's destination, which is what a source-NATed
    connection holds (the second dst= and dport= of a line)."""
    out = set()
    for line in listing.splitlines():
        dsts = [w[4:] for w in line.split() if w.startswith("dst=")]
        dports = [w[6:] for w in line.split() if w.startswith("dport=")]
        if len(dsts) >= 2 and len(dports) >= 2:
            out.add((dsts[1], int(dports[1])))
    return out
