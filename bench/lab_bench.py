"""Issue 2 benchmark: deploy time with cold and warm images; time for a killed MUX's next
hop to leave the edge's kernel table (polled every 20 ms inside the edge)."""
from __future__ import annotations

import argparse
import subprocess
import time

from muxlab import versions
from muxlab.cli import images

from .common import BENCH_LAB, cli, down, save, summary, up


def deploy_once() -> float:
    down()
    t0 = time.monotonic()
    cli("up", "--name", BENCH_LAB, "--wait", "240")  # returns once BGP + ECMP converged
    return time.monotonic() - t0


def cold_deploy() -> dict:
    down()
    subprocess.run(["docker", "rmi", "-f", versions.NODE_IMAGE, versions.ROUTER_IMAGE], capture_output=True)
    t0 = time.monotonic()
    images.build("router", no_cache=True)
    images.build("node", no_cache=True)
    build = time.monotonic() - t0
    deploy = deploy_once()
    return {"build_s": round(build, 1), "deploy_s": round(deploy, 1), "total_s": round(build + deploy, 1)}


POLL = """t0=$(date +%s%N); while :; do
  if ! ip route show 203.0.113.10 | grep -q 'via {addr} '; then echo $(date +%s%N); exit 0; fi
  sleep 0.02
  [ $(( $(date +%s%N) - t0 )) -gt 30000000000 ] && echo timeout && exit 1
done"""


def kill_once(mux: str, addr: str) -> float:
    return kill_and_time(up(), mux, addr)


def kill_and_time(ref, mux: str, addr: str) -> float:
    """`docker kill` of a MUX until its next hop leaves the edge's kernel, in seconds."""
    poller = subprocess.Popen(["docker", "exec", ref.container("edge"), "sh", "-c", POLL.format(addr=addr)],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    t_kill = time.time_ns()
    subprocess.run(["docker", "kill", ref.container(mux)], check=True, capture_output=True)
    out, _ = poller.communicate(timeout=60)
    if "timeout" in out:
        raise RuntimeError(f"{mux}'s next hop never left the edge")
    return (int(out.strip()) - t_kill) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-cold", action="store_true")
    a = ap.parse_args()
    try:
        result = {}
        if not a.skip_cold:
            result["cold"] = cold_deploy()
            print("cold", result["cold"])
        warm = [deploy_once() for _ in range(3)]
        result["warm_deploy_s"] = summary(warm)
        print("warm", result["warm_deploy_s"])
        muxes = [("mux1", "10.0.1.1"), ("mux2", "10.0.1.3"), ("mux3", "10.0.1.5")]
        kills = [kill_once(*muxes[i % 3]) for i in range(a.reps)]
        result["kill_nexthop_removal_s"] = summary(kills)
        result["kill_poll_interval_ms"] = 20
        print("kill", result["kill_nexthop_removal_s"])
        save("lab", result)
    finally:
        down()


if __name__ == "__main__":
    main()
