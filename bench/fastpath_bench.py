"""Issue 19 benchmark: a VM's traffic to a VIP with Fastpath on, off, and to the DIP directly,
in one run (two labs, one after the other: the default, and the same with `fastpath: false`).

From vm3 (host2), in each lab:
  - TCP throughput (iperf3): to the bench VIP 203.0.113.30:5201 (pool: vm1 on host1), and to
    vm1's DIP directly (host to edge to host: no MUX);
  - new TCP connections per second (muxlab.node.flows): to web 203.0.113.10:80 (six
    backends, a third on vm3's own host) and to vm1's DIP:8080;
  - MUX packets per flow: every MUX counts the traffic's packets both ways
    (muxlab.observe.flowcount), divided by the connections made.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from muxlab.cli import lab as labmod
from muxlab.observe import flowcount

from .common import BENCH_LAB, deployed, save, sh, summary

CALLER, OUT = "vm3", "203.0.113.11"          # vm3's outbound identity (web's outbound rule)
BENCH_VIP, WEB, DIP = "203.0.113.30", "203.0.113.10", "10.1.1.11"
CALLER_DIP = "10.1.2.13"
OFF_FOLDER = Path(__file__).resolve().parents[1] / ".labs" / "bench-nofastpath"


def counted(ref, src: str, dst: str, run) -> tuple:
    """run() with every MUX counting src <-> dst: (run's result, packets the MUXes carried)."""
    muxes = [m.name for m in ref.lab.muxes]
    for m in muxes:
        sh(ref, m, f"nft -f - <<'EOF'\n{flowcount.script(src, dst)}EOF")
    try:
        result = run()
        return result, sum(flowcount.packets(sh(ref, m, flowcount.LIST)) for m in muxes)
    finally:
        for m in muxes:
            sh(ref, m, flowcount.REMOVE)


def throughput(ref, target: str, seconds: int) -> float:
    out = json.loads(sh(ref, CALLER, f"iperf3 -c {target} -t {seconds} -J", timeout=seconds + 60))
    return round(out["end"]["sum_received"]["bits_per_second"] / 1e9, 3)


def conns(ref, target: str, port: int, n: int) -> float:
    out = json.loads(sh(ref, CALLER, f"python -m muxlab.node.flows --vip {target} --port {port} --flows {n} --workers 16",
                        timeout=300))
    if out["failures"]:
        raise RuntimeError(f"{out['failures']} connections to {target} failed: {out['errors'][:3]}")
    return out["flows_per_second"]


def measure(ref, reps: int, seconds: int, n: int) -> dict:
    rows = {k: [] for k in ("vip_gbit_s", "dip_gbit_s", "vip_conns_per_s", "dip_conns_per_s",
                            "vip_mux_packets_per_iperf_flow", "vip_mux_packets_per_conn", "dip_mux_packets")}
    for _ in range(reps):
        gbit, pk = counted(ref, OUT, BENCH_VIP, lambda: throughput(ref, BENCH_VIP, seconds))
        rows["vip_gbit_s"].append(gbit)
        rows["vip_mux_packets_per_iperf_flow"].append(pk / 2)   # iperf3: a control and a data connection
        gbit, pk = counted(ref, CALLER_DIP, DIP, lambda: throughput(ref, DIP, seconds))
        rows["dip_gbit_s"].append(gbit)
        rows["dip_mux_packets"].append(pk)
        rate, pk = counted(ref, OUT, WEB, lambda: conns(ref, WEB, 80, n))
        rows["vip_conns_per_s"].append(rate)
        rows["vip_mux_packets_per_conn"].append(round(pk / n, 2))
        rows["dip_conns_per_s"].append(conns(ref, DIP, 8080, n))
    return {k: summary(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=2000)
    a = ap.parse_args()
    result = {"params": vars(a)}
    with deployed() as ref:
        result["fastpath_on"] = measure(ref, a.reps, a.seconds, a.conns)
        print("fastpath on", json.dumps(result["fastpath_on"]))
    topology = labmod.write_variant(OFF_FOLDER, lambda fabric: fabric.__setitem__("fastpath", False))
    with deployed(BENCH_LAB, topology) as ref:
        result["fastpath_off"] = measure(ref, a.reps, a.seconds, a.conns)
        print("fastpath off", json.dumps(result["fastpath_off"]))
    on, off = result["fastpath_on"], result["fastpath_off"]
    result["ratios"] = {
        "vip_gbit_on_over_off": round(on["vip_gbit_s"]["median"] / off["vip_gbit_s"]["median"], 3),
        "vip_gbit_on_over_direct": round(on["vip_gbit_s"]["median"] / on["dip_gbit_s"]["median"], 3),
        "vip_conns_on_over_off": round(on["vip_conns_per_s"]["median"] / off["vip_conns_per_s"]["median"], 3),
        "mux_packets_per_iperf_flow_on_over_off": round(on["vip_mux_packets_per_iperf_flow"]["median"]
                                                        / max(off["vip_mux_packets_per_iperf_flow"]["median"], 1), 5)}
    save("fastpath", result)


if __name__ == "__main__":
    main()
