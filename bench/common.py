"""Shared pieces of the benchmarks: a lab of their own, timing, result files."""
from __future__ import annotations

import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from muxlab.cli import lab as labmod

RESULTS = Path(__file__).resolve().parent / "results"
BENCH_LAB = "muxlab-bench"


def cli(*args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "muxlab", *args], capture_output=True, text=True, timeout=timeout, check=True)


def up(name=BENCH_LAB, topology: Path | None = None) -> labmod.LabRef:
    """Deploy the default lab, or the one of `topology`, as `name` (after removing any old one)."""
    cli("down", "--name", name, timeout=300)
    where = ("--topology", str(topology)) if topology else ()
    cli("up", "--name", name, "--wait", "240", *where)
    return labmod.resolve(str(topology) if topology else None, name)


def down(name=BENCH_LAB) -> None:
    subprocess.run([sys.executable, "-m", "muxlab", "down", "--name", name], capture_output=True, timeout=300)


@contextlib.contextmanager
def deployed(name=BENCH_LAB, topology: Path | None = None):
    """A benchmark's lab, deployed for the block and removed after it, whatever happens."""
    ref = up(name, topology)
    try:
        yield ref
    finally:
        down(name)


def sh(ref, node, cmd, timeout=120):
    return labmod.docker_exec(ref, node, ["sh", "-c", cmd], timeout=timeout).stdout


CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


def cpu_jiffies() -> dict[str, int]:
    """Jiffies of the whole machine by kind (/proc/stat): containers share one kernel."""
    return dict(zip(CPU_KINDS, map(int, open("/proc/stat").readline().split()[1:])))


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def machine() -> dict:
    return {"cpus": __import__("os").cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


# the first public addresses (203.0.113.10-39) hold the default lab's own VIPs
SKIP_VIPS = 30


def write_bulk_load_balancers(count: int, lab, path: Path) -> Path:
    """`count` load balancers bulk0.. (one VIP each after the default lab's, the lab's VMs as
    pool, no probe: probes would cost every host one check per load balancer), as a file."""
    from muxlab.model.generate import load_balancers
    import yaml
    doc = load_balancers(count + SKIP_VIPS, {vm.name: str(vm.ip) for vm in lab.vms})
    lbs = {f"bulk{i}": lb for i, lb in enumerate(list(doc["loadBalancers"].values())[SKIP_VIPS:])}
    for lb in lbs.values():
        lb["properties"].pop("probes")
        lb["properties"]["loadBalancingRules"][0]["properties"].pop("probe")
    path.write_text(yaml.safe_dump({"loadBalancers": lbs}))
    return path
