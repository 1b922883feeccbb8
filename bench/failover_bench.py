"""Issue 4 benchmark: for kill, pause, link-down and drain of a MUX, the time until new
connections to the VIP are all served again (a client opens one every 20 ms, each must be
answered within 1 s) and the share of 24 established connections broken; >= 5 repetitions
each. Also the time from a VM's service stopping to its removal from a MUX's tables."""
from __future__ import annotations

import argparse
import json
import subprocess
import time

from muxlab.cli import faults
from muxlab.cli.failover import analyse
from muxlab.cli.lab import vip_nexthops
from muxlab.datapath.conventions import MAGLEV_TABLES_FILE
from muxlab.lb.azure import LoadBalancer
from muxlab.lb.compiler import compile_facts

from .common import deployed, save, summary
from .lab_bench import POLL

MUXES = ["mux1", "mux2", "mux3"]


def hold(ref, duration: float) -> subprocess.Popen:
    p = subprocess.Popen(["docker", "exec", ref.container("client1"), "python", "-m", "muxlab.node.holdclient",
                          "--vip", "203.0.113.10", "--port", "80", "--conns", "24", "--duration", str(duration),
                          "--every", "0.02", "--new-timeout", "1.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if not line.startswith("READY"):
        raise RuntimeError(f"holdclient: {line}{p.stderr.read()}")
    return p


def wait_full(ref, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(h == MUXES for h in vip_nexthops(ref).values()):
            return
        time.sleep(0.2)
    raise RuntimeError("lab did not return to full ECMP")


def one(ref, mode: str, mux: str) -> dict:
    addr = str(next(m.address for m in ref.lab.muxes if m.name == mux))
    p = hold(ref, 8.0)
    poller = subprocess.Popen(["docker", "exec", ref.container("edge"), "sh", "-c", POLL.format(addr=addr)],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    t = time.time()
    if mode == "drain":
        faults.drain(ref, mux, True)
    else:
        faults.fail(ref, mux, mode)
    out, _ = p.communicate(timeout=120)
    r = analyse(json.loads(out), t)
    gone = poller.communicate(timeout=60)[0].strip()
    r["nexthop_removed_s"] = None if gone == "timeout" else round(int(gone) / 1e9 - t, 3)
    if mode == "drain":
        faults.drain(ref, mux, False)
    else:
        faults.heal(ref, mux)
    wait_full(ref)
    time.sleep(1.0)
    return r


REMOVAL = f"""while grep -q '"vm3"' {MAGLEV_TABLES_FILE}; do sleep 0.02; done; date +%s%N"""
RETURN = f"""until grep -q '"vm3"' {MAGLEV_TABLES_FILE}; do sleep 0.02; done; date +%s%N"""


def vm_removal(ref) -> tuple[float, float]:
    poll = subprocess.Popen(["docker", "exec", ref.container("mux1"), "sh", "-c", REMOVAL], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    t = time.time_ns()
    faults.fail(ref, "vm3", "stop-service")
    removed = (int(poll.communicate(timeout=60)[0]) - t) / 1e9
    poll = subprocess.Popen(["docker", "exec", ref.container("mux1"), "sh", "-c", RETURN], stdout=subprocess.PIPE, text=True)
    t = time.time_ns()
    faults.heal(ref, "vm3")
    back = (int(poll.communicate(timeout=60)[0]) - t) / 1e9
    time.sleep(1)
    return removed, back


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    with deployed() as ref:
        result = {"client": "24 long-lived TCP connections + a new connection every 20 ms (served = answered within 1 s)"}
        for mode in ("kill", "pause", "link-down", "drain"):
            runs = [one(ref, mode, MUXES[i % 3]) for i in range(a.reps)]
            rec = [r["recovery_s"] for r in runs if r["recovery_s"] is not None]
            result[mode] = {"recovery_s": summary(rec) if rec else None,
                            "never_recovered": sum(1 for r in runs if r["recovery_s"] is None),
                            "broken_share": summary([r["broken_share"] for r in runs]),
                            "unserved_attempts": summary([r["unserved_after_fault"] for r in runs]),
                            "nexthop_removed_s": summary([r["nexthop_removed_s"] for r in runs if r["nexthop_removed_s"] is not None])}
            print(mode, json.dumps(result[mode]["recovery_s"]), "broken", result[mode]["broken_share"]["max"], flush=True)
        lbs = {n: LoadBalancer.model_validate(lb) for n, lb in ref.api().load_balancers().items()}
        probe = compile_facts(lbs, ref.lab).probes()["web/http-health"]   # as the agents compile it
        pairs = [vm_removal(ref) for _ in range(a.reps)]
        result["vm_service_stop_to_removal_s"] = summary([p[0] for p in pairs])
        result["vm_service_start_to_return_s"] = summary([p[1] for p in pairs])
        result["probe"] = {"interval_s": probe.interval, "timeout_s": probe.timeout,
                           "unhealthy_threshold": probe.unhealthy_threshold, "healthy_threshold": probe.healthy_threshold}
        print("vm removal", result["vm_service_stop_to_removal_s"], "return", result["vm_service_start_to_return_s"])
        save("failover", result)


if __name__ == "__main__":
    main()
