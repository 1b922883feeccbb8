"""What a failure did to traffic, from a holdclient run. Pure."""
from __future__ import annotations


def analyse(run: dict, t_fault: float) -> dict:
    """Share of long-lived connections broken, and the time from the fault until new
    connections were all served again (0 when none went unserved)."""
    conns = run["conns"]
    broken = [c for c in conns if c["broken_at"] is not None]
    after = [a for a in run["attempts"] if a[0] >= t_fault]
    failed = [a for a in after if not a[1]]
    if failed:
        last_fail = max(a[0] for a in failed)
        later_ok = [a[0] for a in after if a[1] and a[0] > last_fail]
        recovery = (min(later_ok) - t_fault) if later_ok else None  # None: never recovered in the run
    else:
        recovery = 0.0
    return {
        "conns": len(conns), "broken": len(broken), "broken_share": round(len(broken) / len(conns), 4) if conns else 0.0,
        "broken_errors": sorted({c["error"] for c in broken}),
        "attempts_after_fault": len(after), "unserved_after_fault": len(failed),
        "recovery_s": None if recovery is None else round(recovery, 3),
        "dips_of_new_connections": sorted({a[3] for a in after if a[1]}),
    }
