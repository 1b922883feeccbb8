"""Issue 10/18 benchmark: the scale curve of this machine. For labs written by `muxlab
generate`, from (3 MUXes, 3 hosts, 6 VMs) upwards until one does not deploy, converge or fail
over as designed (a killed MUX's next hop gone within FAILOVER_S, no held connection broken):
deploy time, memory per node and in total, idle CPU per role (cgroup CPU time at rest), time
to converge after a change, MUX-kill failover with held connections, and what ran out.
Writes results/scale.json and results/scale.png.
`python -m bench.scale_bench [--steps N] [--sizes M,H,V M,H,V ...]`."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path

from muxlab.cli import lab as labmod
from muxlab.fabric.generate import generate

from muxlab.cli.observe import Hold, hold_summary

from .common import RESULTS, cli, cpu_jiffies, idle_cpu_by_role, save
from .lab_bench import kill_and_time

NAME = "muxlab-scale"
FOLDER = Path(__file__).resolve().parents[1] / ".labs" / "scale"
# (MUXes, hosts, VMs per host): the first is the default lab's shape
SIZES = [(3, 3, 2), (4, 6, 2), (6, 10, 2), (8, 16, 2), (8, 24, 3), (10, 32, 3), (12, 48, 3), (16, 64, 3)]
FAILOVER_S = 0.3     # a killed MUX out of ECMP within this, as issue 18 asks
IDLE_S = 30          # the window of the idle-CPU measurement at each point
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
    while sorted(labmod.vip_nexthops(ref, ["203.0.113.250"]).get("203.0.113.250") or []) != sorted(m.name for m in ref.lab.muxes):
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
    time.sleep(10)   # start-up settles
    stats = node_stats()
    by_role: dict[str, list[float]] = {}
    for node, s in stats.items():
        by_role.setdefault(ref.lab.role_of(node), []).append(s["mem_mib"])
    point = {"muxes": muxes, "hosts": hosts, "vms": hosts * per_host, "nodes": len(stats), "deploy_s": deploy,
             "mem_total_mib": round(sum(s["mem_mib"] for s in stats.values()), 1),
             "machine_mem_used_mib": round(before - available_mib(), 1),
             "machine_mem_available_mib": round(available_mib(), 1),
             "mem_per_node_mib": {role: round(sum(v) / len(v), 1) for role, v in sorted(by_role.items())}}
    busy = machine_cpu_busy(10)
    point["idle_cpu_percent_of_machine"] = busy
    point["idle_cpu_percent_of_a_core"] = idle_cpu_by_role(ref, IDLE_S)
    point["converge_after_change_s"] = converge_after_change(ref)
    # held connections through the MUX that is killed (and the others)
    victim = ref.lab.muxes[-1]
    hold = Hold(ref, ref.lab.clients[0].name, "203.0.113.10", 80, conns=24, duration=8)
    time.sleep(1)
    point["mux_kill_nexthop_removed_s"] = round(kill_and_time(ref, victim.name, str(victim.address)), 3)
    held = hold_summary(hold.result())
    point["mux_kill_held"] = {k: held[k] for k in ("conns", "broken", "new_connections", "new_failures")}
    point["ok"] = point["mux_kill_nexthop_removed_s"] < FAILOVER_S and held["broken"] == 0
    if not point["ok"]:
        point["ran_out"] = (f"failover: next hop gone in {point['mux_kill_nexthop_removed_s']} s, "
                            f"{held['broken']} held connections broken; machine {busy} % busy at rest")
    return point


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
    ap.add_argument("--sizes", nargs="*", help="MUXES,HOSTS,VMS_PER_HOST each (default: the built-in curve)")
    a = ap.parse_args()
    sizes = [tuple(map(int, x.split(","))) for x in a.sizes] if a.sizes else SIZES[:a.steps]
    points, stopped = [], None
    try:
        for size in sizes:
            print(f"scale: {size} ...", flush=True)
            try:
                points.append(one(*size))
                print(json.dumps(points[-1]), flush=True)
                # each point on disk as soon as it is measured: a run cut short keeps what it measured
                save("scale", {"points": points, "stopped_at": None, "sizes_tried": [list(x) for x in sizes],
                               "failover_limit_s": FAILOVER_S, "complete": False})
            except Exception as exc:   # the largest lab is the one before what fails, and why it failed
                stopped = {"size": list(size), "error": str(exc)[-2000:], "machine_mem_available_mib": available_mib()}
                break
            if not points[-1]["ok"]:
                stopped = {"size": list(size), "error": points[-1]["ran_out"]}
                break
    finally:
        subprocess.run(["python", "-m", "muxlab", "down", "-t", str(FOLDER / "muxlab.clab.yml"), "--name", NAME],
                       capture_output=True, timeout=600)
    save("scale", {"points": points, "stopped_at": stopped, "sizes_tried": [list(x) for x in sizes],
                   "failover_limit_s": FAILOVER_S, "complete": True})
    if points:
        plot(points, RESULTS / "scale.png")


if __name__ == "__main__":
    main()
