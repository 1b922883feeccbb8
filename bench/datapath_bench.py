"""Issue 3 benchmark: the load-balanced path against a direct routed path between the same
client and VM, in one lab run, reported as ratios.

- iperf3 TCP throughput: client1 -> 203.0.113.30 (bench VIP, pool = vm1) vs -> 10.1.1.11 (vm1)
- small-packet UDP: iperf3 -u -l 64, unlimited rate: packets/s received by vm1
- new TCP connections per second: client1 -> VIP:80 (all six DIPs) vs -> 10.1.1.11:8080
"""
from __future__ import annotations

import argparse
import json


from .common import down, save, sh, summary, up

VIP, DIP = "203.0.113.30", "10.1.1.11"


def iperf(ref, target: str, udp: bool, seconds: int) -> dict:
    args = f"-c {target} -t {seconds} -J" + (" -u -b 0 -l 64" if udp else "")
    out = json.loads(sh(ref, "client1", f"iperf3 {args}", timeout=seconds + 60))
    end = out["end"]
    if udp:
        s = end["sum"]
        # packets the server actually received per second
        return {"pps": round((s["packets"] - s["lost_packets"]) / s["seconds"]), "lost_percent": round(s["lost_percent"], 2)}
    return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3)}


def conns(ref, target: str, port: int, n: int) -> float:
    out = json.loads(sh(ref, "client1", f"python -m muxlab.node.flows --vip {target} --port {port} --flows {n} --workers 16", timeout=300))
    if out["failures"]:
        raise RuntimeError(f"{out['failures']} connections failed: {out['errors']}")
    return out["flows_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=3000)
    a = ap.parse_args()
    ref = up()
    try:
        rows = {"tcp_gbit_s": ([], []), "udp64_pps": ([], []), "new_conns_per_s": ([], [])}
        for _ in range(a.reps):  # alternate paths so drift hits both alike
            rows["tcp_gbit_s"][0].append(iperf(ref, VIP, False, a.seconds)["gbit_s"])
            rows["tcp_gbit_s"][1].append(iperf(ref, DIP, False, a.seconds)["gbit_s"])
            rows["udp64_pps"][0].append(iperf(ref, VIP, True, a.seconds)["pps"])
            rows["udp64_pps"][1].append(iperf(ref, DIP, True, a.seconds)["pps"])
            rows["new_conns_per_s"][0].append(conns(ref, "203.0.113.10", 80, a.conns))
            rows["new_conns_per_s"][1].append(conns(ref, DIP, 8080, a.conns))
        result = {}
        for metric, (lb, direct) in rows.items():
            lb_s, d_s = summary(lb), summary(direct)
            result[metric] = {"load_balanced": lb_s, "direct": d_s, "ratio_lb_over_direct": round(lb_s["median"] / d_s["median"], 3)}
            print(metric, result[metric]["ratio_lb_over_direct"], lb_s["median"], d_s["median"])
        save("datapath", result)
    finally:
        down()


if __name__ == "__main__":
    main()
