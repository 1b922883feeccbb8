"""Issue 10 benchmark, a probe flap at scale, end to end in a lab: with N VIPs held by the
managers (the default lab's load balancers plus N-4 without probes, one VIP each, the six VMs
as pool), vm3's application is stopped; measured are the time until the managers report vm3
Down on web/http, and from the probe's verdict (when vm3's host saw the state change) until
every MUX's kernel holds web/http's Maglev table without vm3 (each MUX records when it
changed): the control plane and kernel update, which is what grows with N. Then vm3 is healed and the same is measured back. Also each MUX agent's
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
from muxlab.datapath.conventions import MAGLEV_TABLES_FILE, MUX_TABLE, rule_tables

from .common import BENCH_LAB, cli, deployed, save, sh, write_bulk_load_balancers

SIZES = (10, 100, 1000, 2000)
BASE_VIPS = 4  # the default lab's own frontends


def vm3_verdict(ref) -> tuple[str, float | None]:
    """vm3's state on web/http, and when its host's probe reached that verdict."""
    rows = ref.api().post("/loadBalancers/web/loadBalancingRules/http/health")["loadBalancerBackendAddresses"]
    row = next(r for r in rows if r["name"] == "vm3")
    return row["state"], row.get("since")


def web_state(ref) -> str:
    return vm3_verdict(ref)[0]


def mux_reports(ref) -> list[dict]:
    return [json.loads(sh(ref, m.name, f"cat {MAGLEV_TABLES_FILE}")) for m in ref.lab.muxes]


def muxes_have_vm3(ref) -> list[bool]:
    return ["vm3" in rule_tables(r)["web/http"] for r in mux_reports(ref)]


def last_mux_change(ref) -> float:
    """When the last MUX's kernel took web/http's current table (each MUX records when a
    map's contents changed; the containers share the machine's clock)."""
    return max(r["changed_at"][r["rules"]["web/http"]] for r in mux_reports(ref))


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
        rules = sh(ref, m.name, f"nft list table ip {MUX_TABLE} | wc -c").strip()
        out[m.name] = {"agent_rss_mib": round(int(rss or 0) / 1024, 1), "ruleset_text_kib": round(int(rules) / 1024, 1)}
    return out


def one_lab(table_size: int | None) -> list[dict]:
    topology = None if table_size is None else labmod.write_variant(
        labmod.REPO / ".labs" / f"bench-table-{table_size}", lambda fabric: fabric.setdefault("hashing", {}).__setitem__("table_size", table_size))
    where = ("--name", BENCH_LAB) + (("--topology", str(topology)) if topology else ())
    results = []
    with deployed(topology=topology) as ref:
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
            down_since = vm3_verdict(ref)[1]
            wait("every MUX excludes vm3", lambda: not any(muxes_have_vm3(ref)))
            out_at = last_mux_change(ref)
            t_heal = time.monotonic()
            faults.heal(ref, "vm3")
            t_up = wait("managers report vm3 Up", lambda: web_state(ref) == "Up")
            up_since = vm3_verdict(ref)[1]
            wait("every MUX includes vm3", lambda: all(muxes_have_vm3(ref)))
            in_at = last_mux_change(ref)
            row = {"vips": size, "table_size": table_size or 601, "apply_s": round(applied, 2),
                   "fault_to_verdict_s": round(t_down - t_fault, 2),
                   "verdict_to_every_mux_excludes_s": round(out_at - down_since, 3),
                   "heal_to_verdict_s": round(t_up - t_heal, 2), "verdict_to_every_mux_includes_s": round(in_at - up_since, 3),
                   "mux_memory": mux_memory(ref), "mux_updates": mux_updates(ref)}
            print(row, flush=True)
            results.append(row)
    return results


def mux_updates(ref) -> list[str]:
    """How mux1 applied its last four changes, from its agent's log (whole table or update)."""
    logs = subprocess.run(["docker", "logs", ref.container("mux1")], capture_output=True, text=True).stdout
    return [line.split("(", 1)[1].split(";")[0] for line in logs.splitlines() if "data path programmed" in line][-4:]


def main() -> None:
    results = one_lab(None) + one_lab(65537)
    save("probe_convergence", {"probe": "web/http-health, interval 1 s, threshold 2",
                               "note": "verdict: when vm3's host's probe changed state (its Backend_Health since); every MUX: the latest of the MUXes' own record of when web/http's map changed in their kernel; one clock, no polling in these two figures",
                               "sizes": results})


if __name__ == "__main__":
    main()
