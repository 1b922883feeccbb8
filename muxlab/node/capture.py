"""Summarise a pcap as JSON, inside a lab container: `python -m muxlab.node.capture FILE`.

One record per IPv4 packet: outer addresses and ports, and for VXLAN the VNI, the inner
Ethernet destination and the inner IPv4/L4 header. Tests and people read headers, not text.
"""
from __future__ import annotations

import json
import sys


def summarise(path: str) -> list[dict]:
    from scapy.all import IP, TCP, UDP, Ether, rdpcap  # noqa: imported lazily: scapy is slow to load
    from scapy.layers.vxlan import VXLAN

    out = []
    for pkt in rdpcap(path):
        ip = pkt.getlayer(IP)
        if ip is None:
            continue
        rec = {"src": ip.src, "dst": ip.dst, "proto": ip.proto, "len": ip.len, "fragment": bool(ip.flags.MF or ip.frag)}
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
                rec["inner_dmac"] = inner_eth.dst
            if inner is not None:
                rec["inner"] = {"src": inner.src, "dst": inner.dst, "proto": inner.proto, "len": inner.len}
                il4 = inner.getlayer(TCP) or inner.getlayer(UDP)
                if il4 is not None:
                    rec["inner"]["sport"], rec["inner"]["dport"] = il4.sport, il4.dport
        out.append(rec)
    return out


if __name__ == "__main__":
    print(json.dumps(summarise(sys.argv[1])))
