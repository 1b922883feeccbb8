"""Issue 10 benchmark, many VIPs through BGP: on the default lab, `muxlab apply` of N load
balancers (one VIP each, the lab's six VMs as pool, no probe), then the time until the edge's
kernel holds every VIP with every MUX as next hop, and after `docker kill` of a MUX the time
until its N next hops have left. `python -m bench.bgp_scale_bench [--vips 2000]`."""
from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from .common import BENCH_LAB, cli, deployed, save, sh, write_bulk_load_balancers


def edge_counts(ref) -> tuple[int, dict[str, int]]:
    """(BGP routes in the edge's kernel, per MUX address how many of them have it as a next
    hop), from one listing."""
    lines = [line for line in sh(ref, "edge", "ip -o route").splitlines() if " proto bgp" in line]
    via = {str(m.address): sum(f"via {m.address} " in line for line in lines) for m in ref.lab.muxes}
    return len(lines), via


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vips", type=int, default=2000)
    a = ap.parse_args()
    with deployed() as ref:
        path = write_bulk_load_balancers(a.vips, ref.lab, Path("/tmp/muxlab-bgp-scale.yml"))
        base_total, _ = edge_counts(ref)
        want = base_total + a.vips
        mux = ref.lab.muxes[-1]
        t0 = time.monotonic()
        cli("apply", str(path), "--yes", "--name", BENCH_LAB, timeout=1800)
        api_s = time.monotonic() - t0
        while True:   # every VIP via every MUX, not only via one of them
            total, via = edge_counts(ref)
            if total >= want and min(via.values()) >= want:
                break
            if time.monotonic() - t0 > 1200:
                raise RuntimeError(f"after 1200 s the edge holds {total} of {want} VIPs; per MUX: {via}")
            time.sleep(0.2)
        announced_s = time.monotonic() - t0
        t1 = time.monotonic()
        subprocess.run(["docker", "kill", ref.container(mux.name)], check=True, capture_output=True)
        while edge_counts(ref)[1][str(mux.address)] > 0:
            if time.monotonic() - t1 > 600:
                raise RuntimeError(f"{mux.name}'s next hops did not leave within 600 s")
            time.sleep(0.1)
        withdrawn_s = time.monotonic() - t1
        result = {"vips": a.vips, "muxes": len(ref.lab.muxes), "apply_returned_s": round(api_s, 2),
                  "every_vip_via_every_mux_s": round(announced_s, 2), "killed_mux_nexthops_gone_s": round(withdrawn_s, 2)}
        print(result)
        save("bgp_scale", result)


if __name__ == "__main__":
    main()
