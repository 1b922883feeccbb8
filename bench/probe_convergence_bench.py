"""Issue 10 benchmark, a probe flap at scale, end to end in a lab: with N VIPs held by the
managers (the default lab's load balancers plus N-4 without probes, one VIP each, the six VMs
as pool), vm3's application is stopped; measured are the time until the managers report vm3
Down on web/http (the probe's verdict), and from that verdict until every MUX's programmed
Maglev table for web/http excludes vm3 (the control plane and kernel update, which is what
grows with N). Then vm3 is healed and the same is measured back. Also each MUX agent's
resident memory and the size of its ruleset. All of it twice: with the default Maglev table
size (601 for six VMs) and in a lab whose fabric sets hashing.table_size 65537.
`python -m bench.probe_convergence_bench`."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from muxlab.cli import faults
from muxlab.cli import lab as labmod
from muxlab.model.conventions import MAGLEV_TABLES_FILE, rule_tables

from .common import BENCH_LAB, cli, down, save, sh, up, write_bulk_load_balancers

SIZES = (10, 100, 1000, 2000)
BASE_VIPS = 4  # the default lab's own frontends


def web_state(ref) -> str:
    rows = ref.api().post("/loadBalancers/web/loadBalancingRules/http/health")["loadBalancerBackendAddresses"]
    return next(r["state"] for r in rows if r["name"] == "vm3")


def muxes_have_vm3(ref) -> list[bool]:
    out = []
    for m in ref.lab.muxes:
        tables = rule_tables(json.loads(sh(ref, m.name, f"cat {MAGLEV_TABLES_FILE}")))
        out.append("vm3" in tables["web/http"])
    return out


def wait(what, fn, timeout=300, every=0.05) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(every)
    return time.monotonic()


def mux_memory(ref) -> dict:
    out = {}
    for m in ref.lab.muxes:
        rss = sh(ref, m.name, "ps -eo rss,args | grep '[m]ux.agent' | awk '{s+=$1} END {print s}'").strip()
        rules = sh(ref, m.name, "nft list table ip muxlab_mux | wc -c").strip()
        out[m.name] = {"agent_rss_mib": round(int(rss or 0) / 1024, 1), "ruleset_text_kib": round(int(rules) / 1024, 1)}
    return out


def one_lab(table_size: int | None) -> list[dict]:
    topology = None if table_size is None else labmod.write_variant(
        labmod.REPO / ".labs" / f"bench-table-{table_size}", lambda fabric: fabric.setdefault("hashing", {}).__setitem__("table_size", table_size))
    ref = up(topology=topology)
    where = ("--name", BENCH_LAB) + (("--topology", str(topology)) if topology else ())
    results = []
    try:
        for size in SIZES:
            path = write_bulk_load_balancers(size - BASE_VIPS, ref.lab, Path("/tmp/muxlab-probe-bench.yml"))
            try:
                t0 = time.monotonic()
                cli("apply", str(path), "--yes", "--timeout", "900", *where, timeout=1800)
                applied = time.monotonic() - t0
            except subprocess.CalledProcessError as exc:
                # recorded, not hidden
                error = next((line for line in exc.stderr.splitlines() if line.startswith("muxlab:")), exc.stderr[-300:])
                print(f"apply of {size} VIPs failed: {error}", flush=True)
                results.append({"vips": size, "table_size": table_size or 601, "apply_failed": error[:400]})
                break
            wait("vm3 up everywhere", lambda: web_state(ref) == "Up" and all(muxes_have_vm3(ref)), timeout=120)
            t_fault = time.monotonic()
            faults.fail(ref, "vm3", "stop-service")
            t_down = wait("managers report vm3 Down", lambda: web_state(ref) == "Down")
            t_out = wait("every MUX excludes vm3", lambda: not any(muxes_have_vm3(ref)))
            t_heal = time.monotonic()
            faults.heal(ref, "vm3")
            t_up = wait("managers report vm3 Up", lambda: web_state(ref) == "Up")
            t_in = wait("every MUX includes vm3", lambda: all(muxes_have_vm3(ref)))
            row = {"vips": size, "table_size": table_size or 601, "apply_s": round(applied, 2),
                   "fault_to_verdict_s": round(t_down - t_fault, 2),
                   "verdict_to_every_mux_excludes_s": round(t_out - t_down, 2),
                   "heal_to_verdict_s": round(t_up - t_heal, 2), "verdict_to_every_mux_includes_s": round(t_in - t_up, 2),
                   "mux_memory": mux_memory(ref), "mux_updates": mux_updates(ref)}
            print(row, flush=True)
            results.append(row)
    finally:
        down()
    return results


def mux_updates(ref) -> list[str]:
    """How mux1 applied its last four changes, from its agent's log (whole table or update)."""
    logs = subprocess.run(["docker", "logs", ref.container("mux1")], capture_output=True, text=True).stdout
    return [line.split("(", 1)[1].split(";")[0] for line in logs.splitlines() if "data path programmed" in line][-4:]


def main() -> None:
    results = one_lab(None) + one_lab(65537)
    save("probe_convergence", {"probe": "web/http-health, interval 1 s, threshold 2",
                               "note": "verdict-to-MUX includes polling every MUX's tables.json in turn (~0.1 s)",
                               "sizes": results})


if __name__ == "__main__":
    main()
