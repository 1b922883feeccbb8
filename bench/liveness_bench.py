"""Issue 18 benchmark: a host frozen (`docker pause`) until its DIPs are out of every MUX's
kernel Maglev maps, with the managers running and with every manager stopped; and the idle
CPU of every container of the default lab at rest, per role (cgroup CPU time over 60 s).
Writes results/liveness.json. `python -m bench.liveness_bench [--reps N]`."""
from __future__ import annotations

import argparse
import subprocess
import time

from muxlab.cli import faults
from muxlab.datapath.conventions import LIVENESS_DEAD_AFTER_S, LIVENESS_INTERVAL_S, MUX_TABLE, dip_mark

from .common import deployed, idle_cpu_by_role, save, summary

# runs in a MUX: prints the time (ns) at which none of `marks` is in a Maglev map any more
POLL = """
import json, subprocess, sys, time
marks = set(map(int, sys.argv[1].split(",")))
deadline = time.time() + 30
print("READY", flush=True)
while time.time() < deadline:
    doc = json.loads(subprocess.run(["nft", "-j", "list", "table", "ip", "{table}"], capture_output=True, text=True).stdout)
    held = {{int(e[1], 0) if isinstance(e[1], str) else e[1] for i in doc["nftables"] if "map" in i
             and i["map"]["name"].startswith("maglev_") for e in i["map"].get("elem", [])}}
    if not marks & held:
        print(time.time_ns(), flush=True)
        sys.exit(0)
    time.sleep(0.01)
print("timeout", flush=True)
sys.exit(1)
"""


def dips_out(ref, host: str) -> float:
    """Pause `host`; seconds until its DIPs left the last MUX's maps (each MUX polls itself)."""
    marks = ",".join(str(dip_mark(vm.ip)) for vm in ref.lab.vms_on(host))
    pollers = [subprocess.Popen(["docker", "exec", ref.container(m.name), "/opt/muxlab/bin/python", "-c",
                                 POLL.format(table=MUX_TABLE), marks], stdout=subprocess.PIPE, text=True)
               for m in ref.lab.muxes]
    for p in pollers:
        assert p.stdout.readline().strip() == "READY"
    t0 = time.time_ns()
    faults.fail(ref, host, "pause")
    try:
        outs = [p.communicate(timeout=60)[0].strip() for p in pollers]
    finally:
        faults.heal(ref, host)
    if any(o == "timeout" for o in outs):
        raise RuntimeError(f"{host}'s DIPs never left every MUX: {outs}")
    return (max(map(int, outs)) - t0) / 1e9


def back_in(ref, host: str, timeout: float = 30) -> None:
    marks = {dip_mark(vm.ip) for vm in ref.lab.vms_on(host)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(marks <= held_marks(ref, m.name) for m in ref.lab.muxes):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{host}'s DIPs did not come back")


def held_marks(ref, mux: str) -> set[int]:
    import json
    doc = json.loads(subprocess.run(["docker", "exec", ref.container(mux), "nft", "-j", "list", "table", "ip", MUX_TABLE],
                                    capture_output=True, text=True, timeout=60).stdout)
    return {int(e[1], 0) if isinstance(e[1], str) else e[1] for i in doc["nftables"]
            if "map" in i and i["map"]["name"].startswith("maglev_") for e in i["map"].get("elem", [])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    with deployed() as ref:
        time.sleep(10)   # let start-up settle before measuring rest
        idle = idle_cpu_by_role(ref, 60)
        print("idle", idle, flush=True)
        hosts = [h.name for h in ref.lab.hosts]
        with_managers = []
        for i in range(a.reps):
            with_managers.append(dips_out(ref, hosts[i % len(hosts)]))
            back_in(ref, hosts[i % len(hosts)])
        managers = [ref.container(m) for m in ref.lab.managers]
        subprocess.run(["docker", "stop", "-t", "2", *managers], check=True, capture_output=True, timeout=120)
        try:
            without = []
            for i in range(a.reps):
                without.append(dips_out(ref, hosts[i % len(hosts)]))
                back_in(ref, hosts[i % len(hosts)])
        finally:
            subprocess.run(["docker", "start", *managers], check=True, capture_output=True, timeout=120)
    save("liveness", {
        "idle_cpu_percent_of_a_core": idle,
        "beacon_interval_s": LIVENESS_INTERVAL_S, "dead_after_s": LIVENESS_DEAD_AFTER_S,
        "host_paused_dips_out_of_every_mux_s": summary(with_managers),
        "host_paused_dips_out_of_every_mux_managers_stopped_s": summary(without)})


if __name__ == "__main__":
    main()
