"""Issue 10 benchmark, the MUX's share of a probe flap: with 10, 100, 1000 and 2000 VIPs (one
rule each, every pool the same six VMs) at the default Maglev table size and at 65537, the
time to compute the tables after one backend's host fails, then two ways for the kernel to
take it, in one throwaway network namespace: the whole table loaded again (what every change
cost before) and the incremental update the agent now applies (only the moved buckets). Also
the size of both scripts and the kernel memory (slab) the table holds. Pure MUX code, no lab:
this is the cost each MUX pays, alike, for a change.
`python -m bench.mux_update_bench` (root: it needs `unshare --net`)."""
from __future__ import annotations

import dataclasses
import subprocess
import tempfile
import time
from pathlib import Path

from mux import datapath
from muxlab.datapath import nfttable
from muxlab.datapath.conventions import MUX_TABLE, VXLAN_PORT
from muxlab.fabric.generate import load_balancers
from muxlab.fabric.lab import load_lab
from muxlab.lb.azure import LoadBalancer
from muxlab.lb.compiler import compile_facts

from .common import save

LAB = "containerlab/lab.yml"
SIZES = [10, 100, 1000, 2000]


def slab_kib() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


# in the namespace: load the healthy table; time the flapped one loaded whole; back to the
# healthy table; time the update; each `date` brackets one nft transaction
KERNEL = f"""ip link add vxlan4242 type vxlan id 4242 dstport {VXLAN_PORT}
nft -f healthy && grep ^Slab: /proc/meminfo
date +%s%N; nft -f flapped_whole; date +%s%N
nft -f healthy
date +%s%N; nft -f flapped_update; date +%s%N
nft list table ip {MUX_TABLE} | md5sum; nft -f flapped_whole; nft list table ip {MUX_TABLE} | md5sum
"""


def in_kernel(scripts: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as d:
        for name, text in scripts.items():
            Path(d, name).write_text(text)
        before = slab_kib()
        proc = subprocess.run(["unshare", "--net", "sh", "-e", "-c", KERNEL], cwd=d, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = proc.stdout.split("\n")
    t = [int(x) for x in out[1:5]]
    return {"whole_s": (t[1] - t[0]) / 1e9, "update_s": (t[3] - t[2]) / 1e9,
            "slab_kib": int(out[0].split()[1]) - before, "same_result": out[5] == out[6]}


def one(fabric, vips: int) -> dict:
    vm_ips = {vm.name: str(vm.ip) for vm in fabric.vms}
    lbs = {n: LoadBalancer.model_validate(lb) for n, lb in load_balancers(vips, vm_ips)["loadBalancers"].items()}
    for lb in lbs.values():   # no probe: the health below decides
        lb.properties.probes = []
        lb.properties.loadBalancingRules[0].properties.probe = None
    facts = compile_facts(lbs, fabric)
    # as a MUX agent: it knows the healthy tables, never the flapped ones (an earlier row
    # of this run computed them: forget it)
    datapath.maglev_table.cache_clear()
    datapath.bucket_elements.cache_clear()
    healthy = datapath.ruleset(fabric, facts, datapath.rule_tables(fabric, facts, datapath.Health()))
    flapped_health = datapath.Health(dead_hosts=frozenset({"host2"}))   # vm3 and vm4 leave every table
    t0 = time.monotonic()
    flapped_tables = datapath.rule_tables(fabric, facts, flapped_health)
    flapped = datapath.ruleset(fabric, facts, flapped_tables)
    tables = time.monotonic() - t0            # the tables and the wanted nft table as data: both ways need them
    t1 = time.monotonic()
    whole = flapped.render()
    render = time.monotonic() - t1
    t1 = time.monotonic()
    update = nfttable.update(healthy, flapped)
    diff = time.monotonic() - t1
    k = in_kernel({"healthy": healthy.render(), "flapped_whole": whole, "flapped_update": update})
    return {"vips": vips, "table_size": flapped_tables[0].size, "maps": len({s.table_name for s in flapped_tables}),
            "compute_tables_s": round(tables, 3),
            "whole": {"render_s": round(render, 3), "nft_s": round(k["whole_s"], 3),
                      "total_s": round(tables + render + k["whole_s"], 3), "script_bytes": len(whole)},
            "update": {"diff_s": round(diff, 3), "nft_s": round(k["update_s"], 3),
                       "total_s": round(tables + diff + k["update_s"], 3), "script_bytes": len(update),
                       "element_operations": update.count(",") + update.count("element")},
            "kernel_slab_kib": k["slab_kib"], "update_ends_like_whole_load": k["same_result"]}


def main() -> None:
    base = load_lab(LAB)
    rows = []
    for size in (None, 65537):
        fabric = dataclasses.replace(base, table_size=size)
        for vips in SIZES:
            r = one(fabric, vips)
            print(r, flush=True)
            rows.append(r)
    save("mux_update", {"rows": rows, "note": "after a host fails: the whole table loaded again vs the incremental update, one namespace; pools with the same members and probe share one Maglev map"})


if __name__ == "__main__":
    main()
