"""Counting one traffic's packets through a node, whatever its own tables do: an nft table of
its own, hooked before everything of the lab's (priority -400), counting packets from `src` to
`dst` (one port, or all) and back. Fastpath's tests and benchmark read it on every MUX: how
many packets of a flow the MUX tier carried. Pure: scripts and listings only."""
from __future__ import annotations

import json

TABLE = "muxlab_flowcount"


def script(src: str, dst: str, port: int | None = None) -> str:
    """The table, replacing any earlier one (counters from zero)."""
    there = f"ip saddr {src} ip daddr {dst}" + (f" tcp dport {port}" if port else "")
    back = f"ip saddr {dst} ip daddr {src}" + (f" tcp sport {port}" if port else "")
    return (f"table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n"
            "  counter there {}\n  counter back {}\n"
            "  chain pre {\n    type filter hook prerouting priority -400; policy accept;\n"
            f"    {there} counter name there\n    {back} counter name back\n  }}\n}}\n")


LIST = f"nft -j list table ip {TABLE}"
REMOVE = f"nft delete table ip {TABLE}"


def packets(listing: str) -> int:
    """Both directions' packets, from `nft -j list table` of it (LIST)."""
    return sum(x["counter"]["packets"] for x in json.loads(listing)["nftables"] if "counter" in x)
