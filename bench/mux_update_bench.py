"""Issue 10 benchmark, the MUX's share of a probe flap: with 10, 100, 1000 and 2000 VIPs (one
rule each, every pool the same six VMs) at the default Maglev table size and at 65537, the
time to compute the tables and render the ruleset after one backend fails, the time for the
kernel to take it (`nft -f` in a throwaway network namespace), the ruleset's size, and the
kernel memory it holds (slab, before and after loading). Pure MUX code, no lab: this is the
cost each MUX pays, alike, for any change.
`python -m bench.mux_update_bench` (root: it needs `unshare --net`)."""
from __future__ import annotations

import dataclasses
import subprocess
import time

from muxlab.model.compiled import compile_services
from muxlab.model.fabric import load_lab
from muxlab.model.generate import load_balancers
from muxlab.model.service import LoadBalancer
from mux import datapath

from .common import save

LAB = "containerlab/lab.yml"
SIZES = [10, 100, 1000, 2000]


def slab_kib() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def load_in_kernel(ruleset: str) -> tuple[float, int]:
    """Seconds for nft to load `ruleset` in a fresh namespace, and the slab it grew by."""
    before = slab_kib()
    t0 = time.monotonic()
    proc = subprocess.run(["unshare", "--net", "sh", "-c",
                           "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && nft -f /dev/stdin && "
                           "grep ^Slab: /proc/meminfo"], input=ruleset, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    held = int(proc.stdout.split()[1]) - before
    return took, held


def one(fabric, vips: int) -> dict:
    vm_ips = {vm.name: str(vm.ip) for vm in fabric.vms}
    lbs = {n: LoadBalancer.model_validate(lb) for n, lb in load_balancers(vips, vm_ips)["loadBalancers"].items()}
    for lb in lbs.values():   # no probe: the health below decides
        lb.properties.probes = []
        lb.properties.loadBalancingRules[0].properties.probe = None
    svc = compile_services(lbs, fabric)
    flapped = datapath.Health(dead_hosts=frozenset({"host2"}))   # vm3 and vm4 leave every table
    t0 = time.monotonic()
    svcs = datapath.services(fabric, svc, flapped)
    tables = time.monotonic() - t0
    ruleset = datapath.render_nft(fabric, svc, svcs)
    render = time.monotonic() - t0 - tables
    kernel, slab = load_in_kernel(ruleset)
    return {"vips": vips, "table_size": svcs[0].size, "maps": len({s.table_name for s in svcs}),
            "compute_tables_s": round(tables, 3), "render_s": round(render, 3), "nft_load_s": round(kernel, 3),
            "total_s": round(tables + render + kernel, 3), "ruleset_bytes": len(ruleset), "kernel_slab_kib": slab}


def main() -> None:
    base = load_lab(LAB)
    rows = []
    for size in (None, 65537):
        fabric = dataclasses.replace(base, table_size=size)
        for vips in SIZES:
            r = one(fabric, vips)
            print(r, flush=True)
            rows.append(r)
    save("mux_update", {"rows": rows, "note": "one full re-render per change; identical pools share one Maglev map"})


if __name__ == "__main__":
    main()
