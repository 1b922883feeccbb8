"""Issues 3 and 10 benchmark: the load-balanced path against a direct routed path between the
same client and VM, and both against a bare veth pair between two namespaces (the machine's
own reference), all in one run, reported as ratios.

- iperf3 TCP throughput: client1 -> 203.0.113.30 (bench VIP, pool = vm1) vs -> 10.1.1.11 (vm1)
- small-packet UDP: iperf3 -u -l 64, unlimited rate: packets/s received by vm1
- new TCP connections per second: client1 -> VIP:80 (all six DIPs) vs -> 10.1.1.11:8080

The edge keeps the internet out of the VNet (docs/datapath.md): the direct path exists only
while this benchmark holds the DIP in the edge's set bench_direct (`direct_path`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time

from muxlab.datapath.conventions import EDGE_TABLE, UPLINK_IF
from muxlab.versions import NODE_IMAGE

from .common import CPU_KINDS, cpu_jiffies, deployed, save, sh, summary

VIP, DIP = "203.0.113.30", "10.1.1.11"


def iperf(ref, target: str, udp: bool, seconds: int) -> dict:
    args = f"-c {target} -t {seconds} -J" + (" -u -b 0 -l 64" if udp else "")
    return parse_iperf(json.loads(sh(ref, "client1", f"iperf3 {args}", timeout=seconds + 60)), udp)


def parse_iperf(out: dict, udp: bool) -> dict:
    end = out["end"]
    if udp:
        s = end["sum"]
        # packets the server actually received per second
        return {"pps": round((s["packets"] - s["lost_packets"]) / s["seconds"]), "lost_percent": round(s["lost_percent"], 2)}
    return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3)}


class BareVeth:
    """Two containers of the node image with nothing but one veth pair between them: what
    this machine's kernel carries between two namespaces, no lab, no hops."""

    def __init__(self):
        self.names = [f"muxlab-bench-veth{i}" for i in (1, 2)]

    def __enter__(self):
        for n in self.names:
            subprocess.run(["docker", "rm", "-f", n], capture_output=True)
            subprocess.run(["docker", "run", "-d", "--name", n, "--network", "none", "--cap-add", "NET_ADMIN",
                            "--entrypoint", "sleep", NODE_IMAGE, "infinity"], check=True, capture_output=True)
        pids = [subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", n], check=True, capture_output=True,
                               text=True).stdout.strip() for n in self.names]
        subprocess.run(["ip", "link", "add", "bv1", "netns", pids[0], "type", "veth", "peer", "name", "bv2",
                        "netns", pids[1]], check=True)
        for n, dev, addr in ((self.names[0], "bv1", "10.255.0.1/30"), (self.names[1], "bv2", "10.255.0.2/30")):
            self.sh(n, f"ip addr add {addr} dev {dev} && ip link set {dev} up")
        subprocess.Popen(["docker", "exec", "-d", self.names[1], "iperf3", "-s"]).wait()
        time.sleep(0.5)
        return self

    def sh(self, name, cmd, timeout=120):
        return subprocess.run(["docker", "exec", name, "sh", "-c", cmd], check=True, capture_output=True, text=True,
                              timeout=timeout).stdout

    def iperf(self, udp: bool, seconds: int) -> dict:
        args = f"-c 10.255.0.2 -t {seconds} -J" + (" -u -b 0 -l 64" if udp else "")
        return parse_iperf(json.loads(self.sh(self.names[0], f"iperf3 {args}", timeout=seconds + 60)), udp)

    def __exit__(self, *exc):
        for n in self.names:
            subprocess.run(["docker", "rm", "-f", n], capture_output=True)


@contextlib.contextmanager
def direct_path(ref, dip: str = DIP):
    """Let the internet reach `dip` directly for the block: the reference path. The edge
    drops any packet from an internet port to a private address (counter internet_to_private)
    unless the address is in its set bench_direct, empty by default."""
    sh(ref, "edge", f"nft add element ip {EDGE_TABLE} bench_direct {{ {dip} }}")
    try:
        yield
    finally:
        sh_quiet(ref, "edge", f"nft delete element ip {EDGE_TABLE} bench_direct {{ {dip} }}")


def sh_quiet(ref, node: str, cmd: str) -> None:
    """Run cmd on node without raising: cleanup must not hide the error that led to it."""
    from muxlab.cli.lab import docker_exec
    proc = docker_exec(ref, node, ["sh", "-c", cmd], check=False)
    if proc.returncode != 0:
        print(f"warning: {node}: {cmd}: {proc.stderr.strip()}")


def conns(ref, target: str, port: int, n: int) -> float:
    out = json.loads(sh(ref, "client1", f"python -m muxlab.node.flows --vip {target} --port {port} --flows {n} --workers 16", timeout=300))
    if out["failures"]:
        raise RuntimeError(f"{out['failures']} connections failed: {out['errors']}")
    return out["flows_per_second"]


TARGETS = {"tcp_lb_over_direct": 0.85, "tcp_lb_over_bare_veth": 0.5, "udp64_lb_over_direct": 0.7}


def perf_symbols(path: str) -> dict[str, float]:
    """Self time per kernel or user symbol, in percent of all samples (every CPU, idle too)."""
    rep = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "symbol", "--stdio"],
                         capture_output=True, text=True).stdout
    out = {}
    for line in rep.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].endswith("%") and not line.startswith("#"):
            out[words[2] if words[1] in ("[k]", "[.]") else words[1]] = float(words[0].rstrip("%"))
    return out


def profiled_run(ref, target: str, seconds: int) -> dict:
    """One TCP run to `target` under `perf record -a`: throughput, the machine's CPU split,
    CPU time per GB moved, per-symbol CPU time per GB, the average packet size vm1 received,
    and the drops each node's lab interfaces counted."""
    nodes = ["edge", *ref.lab.agents, "client1", "vm1"]

    def drops() -> dict[str, dict[str, int]]:
        """Per node, per lab interface: packets dropped in and out so far."""
        count = ("for d in /sys/class/net/eth[1-9]*; do echo ${d##*/} "
                 "$(( $(cat $d/statistics/rx_dropped) + $(cat $d/statistics/tx_dropped) )); done")
        return {n: {d: int(x) for d, x in (line.split() for line in sh(ref, n, count).splitlines())} for n in nodes}

    def vm1_rx() -> tuple[int, int]:
        return tuple(map(int, sh(ref, "vm1", f"cat /sys/class/net/{UPLINK_IF}/statistics/rx_packets "
                                              f"/sys/class/net/{UPLINK_IF}/statistics/rx_bytes").split()))

    before_d, before_c, before_rx = drops(), cpu_jiffies(), vm1_rx()
    perf = subprocess.Popen(["perf", "record", "-a", "-o", "/tmp/muxlab-bench.perf", "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gbit = iperf(ref, target, False, seconds)["gbit_s"]
    perf.wait()
    after_c, after_d, after_rx = cpu_jiffies(), drops(), vm1_rx()
    kinds = CPU_KINDS[:7]   # user .. softirq: what a forwarding machine spends its time on
    total = sum(after_c[k] - before_c[k] for k in kinds)
    split = {k: round(100 * (after_c[k] - before_c[k]) / total, 1) for k in kinds}
    cpu_seconds = seconds * (os.cpu_count() or 1)      # what perf -a sampled, idle included
    gb = gbit * seconds / 8
    per_gb = {sym: 10 * pct * cpu_seconds / gb for sym, pct in perf_symbols("/tmp/muxlab-bench.perf").items()}
    dropped = {n: {d: after_d[n][d] - before_d[n].get(d, 0) for d in after_d[n] if after_d[n][d] - before_d[n].get(d, 0)}
               for n in after_d}
    packets = after_rx[0] - before_rx[0]
    return {"gbit_s": gbit, "cpu_percent": split,
            "busy_cpu_ms_per_gb": round((100 - split["idle"]) * cpu_seconds * 10 / gb, 1),
            "vm1_avg_packet_bytes": round((after_rx[1] - before_rx[1]) / packets) if packets else 0,
            "drops": {n: d for n, d in dropped.items() if d}, "symbol_ms_per_gb": per_gb}


IDLE_SYMBOLS = ("pv_native_safe_halt", "default_idle", "cpu_idle_poll", "intel_idle", "acpi_safe_halt")


def profile(ref, seconds: int) -> dict:
    """Where the load-balanced path's time goes, against the direct path in the same run. One
    TCP flow is bound by its sender's core, which also runs, inline, every hop's forwarding of
    its packets (the other core runs the receiver and the agents), so the throughput ratio
    follows the CPU time each path spends per GB. The kernel
    functions whose CPU time per GB grows most from direct to load-balanced are the extra hops'
    cost (MUX: routing by mark, nftables, conntrack, VXLAN encapsulation; host: decapsulation)."""
    lb, direct = profiled_run(ref, VIP, seconds), profiled_run(ref, DIP, seconds)
    lb_sym, d_sym = lb.pop("symbol_ms_per_gb"), direct.pop("symbol_ms_per_gb")
    extra = {sym: lb_sym.get(sym, 0) - d_sym.get(sym, 0) for sym in lb_sym.keys() | d_sym.keys()
             if sym not in IDLE_SYMBOLS}
    top = sorted(extra, key=extra.get, reverse=True)[:15]
    return {"load_balanced": lb, "direct": direct,
            "extra_cpu_ms_per_gb": [{"symbol": sym, "load_balanced": round(lb_sym.get(sym, 0), 2),
                                     "direct": round(d_sym.get(sym, 0), 2), "extra": round(extra[sym], 2)} for sym in top]}


def offload_state(ref) -> dict:
    out = {}
    for node in ("edge", "mux1", "host1", "client1", "vm1"):
        # each node's UPLINK_IF (the edge's port of the same name is its link to mux1)
        text = sh(ref, node, f"ethtool -k {UPLINK_IF}; echo threaded-napi: $(cat /sys/class/net/{UPLINK_IF}/threaded)")
        out[node] = {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
                     if k in ("tx-checksumming", "tcp-segmentation-offload", "generic-receive-offload",
                              "rx-udp-gro-forwarding", "threaded-napi")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=3000)
    a = ap.parse_args()
    with deployed() as ref:
        rows = {"tcp_gbit_s": ([], [], []), "udp64_pps": ([], [], []), "new_conns_per_s": ([], [], [])}
        with BareVeth() as bare, direct_path(ref):
            for _ in range(a.reps):  # alternate paths so drift hits all alike
                rows["tcp_gbit_s"][0].append(iperf(ref, VIP, False, a.seconds)["gbit_s"])
                rows["tcp_gbit_s"][1].append(iperf(ref, DIP, False, a.seconds)["gbit_s"])
                rows["tcp_gbit_s"][2].append(bare.iperf(False, a.seconds)["gbit_s"])
                rows["udp64_pps"][0].append(iperf(ref, VIP, True, a.seconds)["pps"])
                rows["udp64_pps"][1].append(iperf(ref, DIP, True, a.seconds)["pps"])
                rows["udp64_pps"][2].append(bare.iperf(True, a.seconds)["pps"])
                rows["new_conns_per_s"][0].append(conns(ref, "203.0.113.10", 80, a.conns))
                rows["new_conns_per_s"][1].append(conns(ref, DIP, 8080, a.conns))
        result = {"offloads": offload_state(ref)}
        for metric, (lb, direct, veth) in rows.items():
            lb_s, d_s = summary(lb), summary(direct)
            result[metric] = {"load_balanced": lb_s, "direct": d_s, "ratio_lb_over_direct": round(lb_s["median"] / d_s["median"], 3)}
            if veth:
                v_s = summary(veth)
                result[metric] |= {"bare_veth": v_s, "ratio_lb_over_bare_veth": round(lb_s["median"] / v_s["median"], 3)}
            print(metric, result[metric])
        got = {"tcp_lb_over_direct": result["tcp_gbit_s"]["ratio_lb_over_direct"],
               "tcp_lb_over_bare_veth": result["tcp_gbit_s"]["ratio_lb_over_bare_veth"],
               "udp64_lb_over_direct": result["udp64_pps"]["ratio_lb_over_direct"]}
        result["targets"] = {k: {"target": t, "measured": got[k], "met": got[k] >= t} for k, t in TARGETS.items()}
        if not all(t["met"] for t in result["targets"].values()):
            with direct_path(ref):
                result["profile"] = profile(ref, a.seconds)
        save("datapath", result)


if __name__ == "__main__":
    main()
