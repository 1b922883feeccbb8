"""Issue 10 benchmark: the scale curve of this machine. For labs written by `muxlab generate`,
from (3 MUXes, 3 hosts, 6 VMs) upwards until one does not deploy (or --max steps): deploy
time, memory per node and in total, idle CPU, time to converge after a change, and MUX-kill
failover time. Writes results/scale.json and results/scale.png.
`python -m bench.scale_bench [--steps N]`."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from muxlab.cli import lab as labmod
from muxlab.model.generate import generate

from .common import RESULTS, cli, cpu_jiffies, save
from .lab_bench import kill_and_time

NAME = "muxlab-scale"
FOLDER = Path(__file__).resolve().parents[1] / ".labs" / "scale"
# (MUXes, hosts, VMs per host): the first is the default lab's shape
SIZES = [(3, 3, 2), (4, 6, 2), (6, 10, 2), (8, 16, 2), (8, 24, 3), (10, 32, 3), (12, 48, 3), (16, 64, 3)]
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def mib(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([A-Za-z]+)", text.strip())
    return float(m.group(1)) * UNITS.get(m.group(2), 1) / 2**20 if m else 0.0


def node_stats() -> dict[str, dict]:
    """Memory and CPU of every container of the lab (docker stats, one sample)."""
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{json .}}"], capture_output=True, text=True,
                         timeout=300).stdout
    stats = {}
    for line in out.splitlines():
        s = json.loads(line)
        if s["Name"].startswith(f"clab-{NAME}-"):
            stats[s["Name"][len(f"clab-{NAME}-"):]] = {"mem_mib": round(mib(s["MemUsage"].split("/")[0]), 1),
                                                       "cpu_percent": float(s["CPUPerc"].rstrip("%") or 0)}
    return stats


def machine_cpu_busy(seconds: float) -> float:
    """Share of both cores busy over `seconds` (/proc/stat), in percent."""
    before = cpu_jiffies()
    time.sleep(seconds)
    after = cpu_jiffies()
    total = sum(after.values()) - sum(before.values())
    idle = sum(after[k] - before[k] for k in ("idle", "iowait"))
    return round(100 * (1 - idle / total), 1)


def available_mib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def converge_after_change(ref) -> float:
    """From a PUT of a new load balancer until every agent applied it and the edge routes its
    VIP to every MUX."""
    api = ref.api()
    lb = api.get("/loadBalancers/lb1")
    fe = lb["properties"]["frontendIPConfigurations"][0]["properties"]
    fe.clear()
    fe["publicIPAddress"] = {"id": "/publicIPAddresses/probe-pip", "properties": {"ipAddress": "203.0.113.250"}}
    t0 = time.monotonic()
    api.put("/loadBalancers/converge", lb)
    api.wait_synced(ref.lab.agents, timeout=300)
    deadline = time.monotonic() + 300
    while labmod.vip_nexthops(ref, ["203.0.113.250"]).get("203.0.113.250") != [m.name for m in ref.lab.muxes]:
        if time.monotonic() > deadline:
            raise RuntimeError("the new VIP never reached every MUX as a next hop")
        time.sleep(0.1)
    took = time.monotonic() - t0
    api.delete("/loadBalancers/converge")
    return round(took, 3)


def one(muxes: int, hosts: int, per_host: int) -> dict:
    for rel, text in generate("scale", muxes, hosts, per_host, 1, 3).items():
        FOLDER.mkdir(parents=True, exist_ok=True)
        (FOLDER / rel).write_text(text)
    labmod.render_folder(FOLDER)
    topo = str(FOLDER / "muxlab.clab.yml")
    cli("down", "-t", topo, "--name", NAME, timeout=600)
    before = available_mib()
    t0 = time.monotonic()
    cli("up", "-t", topo, "--name", NAME, "--wait", "900", timeout=1800)
    deploy = round(time.monotonic() - t0, 1)
    ref = labmod.resolve(FOLDER / "muxlab.clab.yml", NAME)
    time.sleep(5)
    stats = node_stats()
    by_role: dict[str, list[float]] = {}
    for node, s in stats.items():
        by_role.setdefault(ref.lab.role_of(node), []).append(s["mem_mib"])
    return {"muxes": muxes, "hosts": hosts, "vms": hosts * per_host, "nodes": len(stats), "deploy_s": deploy,
            "mem_total_mib": round(sum(s["mem_mib"] for s in stats.values()), 1),
            "machine_mem_used_mib": round(before - available_mib(), 1),
            "mem_per_node_mib": {role: round(sum(v) / len(v), 1) for role, v in sorted(by_role.items())},
            "idle_cpu_percent_of_machine": machine_cpu_busy(10),
            "converge_after_change_s": converge_after_change(ref),
            "mux_kill_nexthop_removed_s": round(kill_and_time(ref, ref.lab.muxes[-1].name, str(ref.lab.muxes[-1].address)), 3)}


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["nodes"] for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, key, label in ((axes[0][0], "deploy_s", "deploy (s)"), (axes[0][1], "mem_total_mib", "memory, all nodes (MiB)"),
                           (axes[1][0], "idle_cpu_percent_of_machine", "idle CPU (% of 2 cores)"),
                           (axes[1][1], "mux_kill_nexthop_removed_s", "MUX kill: next hop gone (s)")):
        ax.plot(x, [p[key] for p in points], marker="o")
        ax.set_xlabel("containers in the lab")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
    axes[0][0].plot(x, [p["converge_after_change_s"] for p in points], marker="s", label="converge after a change (s)")
    axes[0][0].legend()
    fig.suptitle("muxlab scale curve on this machine (bench/scale_bench.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=len(SIZES))
    a = ap.parse_args()
    points, stopped = [], None
    try:
        for size in SIZES[:a.steps]:
            print(f"scale: {size} ...", flush=True)
            try:
                points.append(one(*size))
                print(json.dumps(points[-1]), flush=True)
            except Exception as exc:   # the largest lab is the one before what fails, and why it failed
                stopped = {"size": list(size), "error": str(exc)[-2000:]}
                break
    finally:
        subprocess.run(["python", "-m", "muxlab", "down", "-t", str(FOLDER / "muxlab.clab.yml"), "--name", NAME],
                       capture_output=True, timeout=600)
    save("scale", {"points": points, "stopped_at": stopped, "steps_tried": a.steps})
    if points:
        plot(points, RESULTS / "scale.png")


if __name__ == "__main__":
    main()
