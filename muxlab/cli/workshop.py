"""`muxlab workshop list|start|check|hint|solve|reset`: guided exercises (workshops/NN-name/)
run against a deployed lab, with checks that measure the data plane and say PASS or FAIL in
words written for the learner. The exercise format is muxlab/workshop/exercise.py."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console
from rich.table import Table

from ..datapath.conventions import VXLAN_PORT
from ..errors import MuxlabError
from ..workshop.exercise import Check, Exercise, ExerciseError, Step, find, judge, load_exercises
from . import lab as labmod
from . import observe, tenant
from .lab import REPO, LabRef
from .traffic import is_address, run_flows

WORKSHOPS = REPO / "workshops"
console = Console(highlight=False)


def exercises() -> list[Exercise]:
    try:
        return load_exercises(WORKSHOPS)
    except ExerciseError as exc:
        raise MuxlabError(str(exc)) from None


def find_exercise(which: str) -> Exercise:
    try:
        return find(exercises(), which)
    except ExerciseError as exc:
        raise MuxlabError(str(exc)) from None


def lab_for(base: LabRef, ex: Exercise) -> LabRef:
    """The lab an exercise runs on: the one given, or its own lab folder deployed beside it."""
    if not ex.lab:
        return base
    return labmod.resolve(REPO / "containerlab" / ex.lab / "muxlab.clab.yml", f"{base.name}-{ex.lab}")


# --- steps ------------------------------------------------------------------------------

def run_step(ref: LabRef, ex: Exercise, step: Step, quiet: bool = False) -> None:
    if not quiet:
        console.print(f"  [dim]→ {step.describe()}[/dim]")
    if step.wait is not None:
        time.sleep(step.wait)
        return
    if step.exec is not None:
        proc = observe.sh(ref, step.exec["node"], step.exec["cmd"], timeout=120, check=False)
    else:
        argv = [sys.executable, "-m", "muxlab", *shlex.split(step.muxlab), "-t", str(ref.topology), "--name", ref.name]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ex.folder)
    if proc.returncode != 0 and step.check:
        raise MuxlabError(f"exercise {ex.slug}: step `{step.describe()}` failed ({proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-2000:]}")


def run_steps(ref: LabRef, ex: Exercise, steps: list[Step], quiet: bool = False) -> None:
    for step in steps:
        run_step(ref, ex, step, quiet)


# --- measurements: one function per check kind, each returning the facts a check judges --

def _traffic(ref: LabRef, a: dict) -> dict:
    r = run_flows(ref, a.get("from", "client1"), str(a["vip"]), int(a["port"]), int(a.get("flows", 100)),
                  udp=bool(a.get("udp")))
    served = max(1, r["served"])
    return {"failures": r["failures"], "served": r["served"], "dips": sorted(r["by_dip"]), "dip_count": len(r["by_dip"]),
            "max_share": round(max(r["by_dip"].values(), default=0) / served, 3), "by_dip": r["by_dip"],
            "errors": [e for e, _ in r["errors"]]}


def _nexthops(ref: LabRef, a: dict) -> dict:
    lb, address = labmod.vip_address(ref.api().load_balancers(), str(a["vip"]))
    hops = labmod.vip_nexthops(ref, [address])[address]
    return {"muxes": hops, "count": len(hops)}


def _bgp(ref: LabRef, a: dict) -> dict:
    s = labmod.bgp_sessions(ref)
    return {"established": sorted(m for m, st in s.items() if st == "Established"),
            "down": sorted(m for m, st in s.items() if st != "Established")}


def _health(ref: LabRef, a: dict) -> dict:
    rows = tenant.health(ref, a["lb"], a["rule"])["loadBalancerBackendAddresses"]
    return {"up": sorted(r["name"] for r in rows if r["state"] == "Up"),
            "down": sorted(r["name"] for r in rows if r["state"] != "Up"),
            "why": {r["name"]: r["detail"] for r in rows if r["state"] != "Up"},
            "reasons": {r["name"]: r["reason"] for r in rows}}


def _tables(ref: LabRef, a: dict) -> dict:
    running = {c["node"] for c in labmod.containers(ref.name) if c["state"] == "running"}
    digests = {m: d for m, d in labmod.mux_tables(ref, running).items() if d}
    return {"identical": len(set(digests.values())) == 1, "muxes": sorted(digests)}


def _dsr(ref: LabRef, a: dict) -> dict:
    """Requests and replies of a few flows as every MUX and host sees them: under DSR no reply
    crosses a MUX, and every request reaches a host inside VXLAN."""
    lbs = ref.api().load_balancers()
    _, vip = labmod.vip_address(lbs, str(a["vip"]))
    port = int(a["port"])
    muxes, hosts = [m.name for m in ref.lab.muxes], [h.name for h in ref.lab.hosts]
    filt = f"(tcp port {port} and host {vip}) or udp port {VXLAN_PORT}"
    res, caps = observe.capture(ref, muxes + hosts, filt, lambda: run_flows(ref, a.get("from", "client1"), vip, port,
                                                                              int(a.get("flows", 50))))

    def flow(p):
        return p.get("inner", p)
    replies_mux = sum(1 for m in muxes for p in caps[m] if flow(p)["src"] == vip)
    requests_mux = sum(1 for m in muxes for p in caps[m] if flow(p)["dst"] == vip and "vni" in p)
    replies_host = sum(1 for h in hosts for p in caps[h] if "vni" not in p and p["src"] == vip)
    vnis = sorted({p["vni"] for n in muxes + hosts for p in caps[n] if "vni" in p})
    return {"failures": res["failures"], "replies_through_muxes": replies_mux, "requests_encapsulated": requests_mux,
            "replies_leaving_hosts": replies_host, "vnis": vnis}


def _hold(ref: LabRef, a: dict, during: Callable[[], None]) -> dict:
    vip = str(a.get("vip", "web"))
    if not is_address(vip):  # a load balancer's name; an address may be any server (outbound)
        _, vip = labmod.vip_address(ref.api().load_balancers(), vip)
    h = observe.Hold(ref, a.get("from", "client1"), vip, int(a.get("port", 80)), int(a.get("conns", 24)),
                     float(a.get("duration", 8)), float(a.get("every", 0.05)))
    try:
        during()
    finally:
        run = h.result()
    return observe.hold_summary(run)


def _snat(ref: LabRef, a: dict) -> dict:
    rows = tenant.snat(ref, a["lb"])["value"]
    return {"vips": sorted({r["frontendIPAddress"] for r in rows}),
            "ports_in_use": sum(r["portsInUse"] or 0 for r in rows), "failures": sum(r["failures"] or 0 for r in rows),
            "by_vm": {r["name"]: {k: r[k] for k in ("allocatedPorts", "portsInUse", "failures")} for r in rows}}


def _nat(ref: LabRef, a: dict) -> dict:
    rows = tenant.nat(ref, a["lb"], a["rule"])["value"]
    return {"mappings": {str(r["frontendPort"]): r["backendAddress"]["name"] for r in rows}, "count": len(rows)}


def _status(ref: LabRef, a: dict) -> dict:
    st = labmod.status(ref)
    return {"hosts_alive": sorted(p["host"] for p in st["probes"].values() if p["host_alive"]),
            "hosts_dead": sorted({p["host"] for p in st["probes"].values() if not p["host_alive"]}),
            "running": sorted(n["node"] for n in st["nodes"] if n["state"] == "running"),
            "faults": st["faults"], "drained": st["drained"]}


def _managers(ref: LabRef, a: dict) -> dict:
    mv = labmod.manager_view(ref)
    roles = {m: info.get("role") for m, info in mv["managers"].items()}
    leaders = [m for m, info in mv["managers"].items() if info.get("leader") == "self"]
    return {"answering": sorted(m for m, r in roles.items() if r), "leader": leaders[0] if leaders else None,
            "api": mv["status"] is not None}


def _command(ref: LabRef, a: dict) -> dict:
    proc = observe.sh(ref, a["node"], a["cmd"], timeout=float(a.get("timeout", 60)), check=False)
    return {"rc": proc.returncode, "stdout": proc.stdout.strip(), "stderr": proc.stderr.strip()}


MEASURE: dict[str, Callable[[LabRef, dict], dict]] = {
    "traffic": _traffic, "nexthops": _nexthops, "bgp": _bgp, "health": _health, "tables": _tables, "dsr": _dsr,
    "snat": _snat, "nat": _nat, "status": _status, "managers": _managers, "command": _command}


@dataclass
class Outcome:
    check: Check
    passed: bool
    misses: list[str] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    seconds: float = 0.0


def run_check(ref: LabRef, ex: Exercise, check: Check) -> Outcome:
    t0 = time.monotonic()
    try:
        run_steps(ref, ex, check.before, quiet=True)
        if check.kind == "hold":  # measures what happens while its steps run: one attempt
            result = _hold(ref, check.args, lambda: run_steps(ref, ex, check.during, quiet=True))
            misses = judge(result, check.expect)
        else:
            deadline = t0 + check.timeout
            while True:
                try:
                    result = MEASURE[check.kind](ref, check.args)
                    misses = judge(result, check.expect)
                except (MuxlabError, KeyError) as exc:
                    result, misses = {}, [f"could not measure: {exc}"]
                if not misses or time.monotonic() + check.interval > deadline:
                    break
                time.sleep(check.interval)
    except (MuxlabError, KeyError) as exc:
        result, misses = {}, [f"could not measure: {exc}"]
    return Outcome(check, not misses, misses, result, time.monotonic() - t0)


# --- the verbs ------------------------------------------------------------------------------

def list_table() -> Table:
    t = Table(title="muxlab workshop: exercises (muxlab workshop start N)")
    for col in ("#", "exercise", "seed", "min", "lab", "checks"):
        t.add_column(col)
    for e in exercises():
        t.add_row(f"{e.number:02d}", e.title, e.seed, str(e.minutes), e.lab or "default", str(len(e.checks)))
    return t


def ensure_lab(ref: LabRef) -> bool:
    """Deploy an exercise's own lab when it is not running; True when this call deployed it."""
    if labmod.containers(ref.name):
        return False
    console.print(f"  deploying lab {ref.name} ({ref.topology.parent.name}) for this exercise")
    labmod.up(ref, wait=240)
    return True


def start(base: LabRef, ex: Exercise) -> None:
    ref = lab_for(base, ex)
    console.print(f"[bold]{ex.number:02d} {ex.title}[/bold]  (seed {ex.seed}, about {ex.minutes} min)")
    if ex.lab:
        ensure_lab(ref)
    run_steps(ref, ex, ex.start)
    console.print(f"  read {ex.folder.relative_to(REPO)}/README.md; `muxlab workshop check {ex.number}` when done")


def check(base: LabRef, ex: Exercise) -> bool:
    ref = lab_for(base, ex)
    console.print(f"[bold]{ex.number:02d} {ex.title}[/bold]")
    ok = True
    for c in ex.checks:
        o = run_check(ref, ex, c)
        ok &= o.passed
        if o.passed:
            console.print(f"  [bold green]PASS[/bold green] {c.name}  [dim]({o.seconds:.1f} s)[/dim]\n       {c.pass_}")
        else:
            console.print(f"  [bold red]FAIL[/bold red] {c.name}  [dim]({o.seconds:.1f} s)[/dim]\n       {c.fail}")
            for m in o.misses:
                console.print(f"       [red]· {m}[/red]")
    return ok


def unsolved_detected(base: LabRef, ex: Exercise) -> list[str]:
    """Before the solution, the checks that only measure (no steps of their own) run once,
    briefly; at least one must fail, or the checks cannot tell the exercise was not done.
    Returns the names of those that failed."""
    ref = lab_for(base, ex)
    failed = []
    for c in ex.checks:
        if c.before or c.during or c.kind == "hold":
            continue
        o = run_check(ref, ex, c.model_copy(update={"timeout": min(c.timeout, 2.0)}))
        if not o.passed:
            failed.append(c.name)
    return failed


def hint(ex: Exercise, n: int | None) -> str:
    hints = ex.hints if n is None else ex.hints[max(0, n - 1):n]
    return "\n".join(f"hint {i}: {h}" for i, h in enumerate(hints, start=n or 1))


def solve(base: LabRef, ex: Exercise) -> None:
    console.print(f"[bold]{ex.number:02d} {ex.title}[/bold]: the instructor's solution")
    run_steps(lab_for(base, ex), ex, ex.solution)


def reset(base: LabRef, ex: Exercise, deployed_here: bool = False) -> None:
    ref = lab_for(base, ex)
    console.print(f"[bold]{ex.number:02d} {ex.title}[/bold]: reset")
    if ex.lab and not labmod.containers(ref.name):
        return
    run_steps(ref, ex, ex.reset)
    if ex.lab and deployed_here:
        labmod.down(ref)
    elif ex.lab:
        console.print(f"  lab {ref.name} stays up: `muxlab down -t {ref.topology} --name {ref.name}` when done")


def check_all(base: LabRef, solve_first: bool, only: list[str] | None = None) -> dict[str, bool]:
    """Every exercise end to end: start, (its measuring checks must fail, then solve), check,
    reset. The lab returns to its start state after each, so they run in any order."""
    results: dict[str, bool] = {}
    unsolved: dict[str, str] = {}
    for ex in exercises():
        if only and str(ex.number) not in only and ex.slug not in only:
            continue
        deployed = ensure_lab(lab_for(base, ex)) if ex.lab else False
        try:
            start(base, ex)
            if solve_first and ex.solution:
                seen = unsolved_detected(base, ex)
                unsolved[ex.slug] = f"detected ({len(seen)} check(s) failed)" if seen else "NOT DETECTED"
                console.print(f"  before the solution, the checks see it undone: {unsolved[ex.slug]}")
                solve(base, ex)
            results[ex.slug] = check(base, ex) and unsolved.get(ex.slug) != "NOT DETECTED"
        except MuxlabError as exc:
            console.print(f"  [bold red]ERROR[/bold red] {exc}")
            results[ex.slug] = False
        finally:
            try:
                reset(base, ex, deployed_here=deployed)
                if not ex.lab:
                    labmod.wait_converged(base, 120)
            except MuxlabError as exc:
                console.print(f"  [bold red]reset failed[/bold red] {exc}")
                results[ex.slug] = False
    t = Table(title="workshop check --all" + (" --solve" if solve_first else ""))
    t.add_column("exercise")
    t.add_column("result")
    if solve_first:
        t.add_column("unsolved state")
    for slug, ok in results.items():
        t.add_row(slug, "[green]PASS[/green]" if ok else "[red]FAIL[/red]",
                  *([unsolved.get(slug, "(nothing to solve)")] if solve_first else []))
    console.print(t)
    console.print(json.dumps({"passed": sum(results.values()), "failed": len(results) - sum(results.values())}))
    return results
