"""Summarise a pcap as JSON, inside a lab container: `python -m muxlab.node.capture FILE [--detail]`.

One record per IPv4 packet: outer addresses and ports, and for VXLAN the VNI, the inner
Ethernet destination and the inner IPv4/L4 header. Tests and people read headers, not text.
"""
from __future__ import annotations

import json
import sys


def summarise(path: str, detail: bool = False, ifnames: dict[int, str] | None = None) -> list[dict]:
    """detail: also each packet's time, interface and direction (a `-i any` capture, whose
    Linux cooked v2 header carries them) and its outer MAC addresses where the link has them;
    `ifnames`: the capturing node's interface names by index (default: this namespace's).
    Pure over the file, so the operator's machine runs it too, on pcaps of nodes (the edge)
    whose image has no Python."""
    from scapy.all import IP, TCP, UDP, Ether, rdpcap  # noqa: imported lazily: scapy is slow to load
    from scapy.layers.l2 import CookedLinuxV2
    from scapy.layers.vxlan import VXLAN

    if detail and ifnames is None:
        import socket
        ifnames = {i: n for i, n in socket.if_nameindex()}
    out = []
    for pkt in rdpcap(path):
        ip = pkt.getlayer(IP)
        if ip is None:
            continue
        rec = {"src": ip.src, "dst": ip.dst, "proto": ip.proto, "len": ip.len, "fragment": bool(ip.flags.MF or ip.frag)}
        if detail:
            rec["time"] = float(pkt.time)
            if isinstance(pkt, CookedLinuxV2):
                rec["iface"] = ifnames.get(pkt.ifindex, str(pkt.ifindex))
                rec["out"] = pkt.pkttype == 4  # sent by this node
                if pkt.lladdrlen == 6:
                    rec["smac"] = ":".join(f"{b:02x}" for b in bytes(pkt.src)[:6])
        l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
        if l4 is not None:
            rec["sport"], rec["dport"] = l4.sport, l4.dport
        if isinstance(l4, TCP):
            rec["flags"] = str(l4.flags)
        vx = pkt.getlayer(VXLAN)
        if vx is not None:
            rec["vni"] = vx.vni
            inner_eth = vx.getlayer(Ether)
            inner = inner_eth.getlayer(IP) if inner_eth is not None else None
            if inner_eth is not None:
                rec["inner_dmac"], rec["inner_smac"] = inner_eth.dst, inner_eth.src
            if inner is not None:
                rec["inner"] = {"src": inner.src, "dst": inner.dst, "proto": inner.proto, "len": inner.len}
                il4 = inner.getlayer(TCP) or inner.getlayer(UDP)
                if il4 is not None:
                    rec["inner"]["sport"], rec["inner"]["dport"] = il4.sport, il4.dport
                if isinstance(il4, TCP):
                    rec["inner"]["flags"] = str(il4.flags)
        out.append(rec)
    return out


if __name__ == "__main__":
    print(json.dumps(summarise(sys.argv[1], detail="--detail" in sys.argv[2:])))
