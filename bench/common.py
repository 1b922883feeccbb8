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


def container_cpu_ns(ref) -> dict[str, int]:
    """CPU time each of the lab's containers has used (its cgroup's cpuacct.usage, ns;
    cgroup v2's cpu.stat where that is what the machine has)."""
    ids = subprocess.run(["docker", "inspect", "--format", "{{.Name}} {{.Id}}",
                          *[ref.container(n) for n in ref.lab.node_names()]], capture_output=True, text=True,
                         timeout=120).stdout.split("\n")
    out = {}
    prefix = f"/{ref.container('')}"
    for line in filter(None, ids):
        name, cid = line.split()
        for path, read in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", lambda t: int(t)),
                           (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat",
                            lambda t: 1000 * int(t.split("usage_usec ")[1].split()[0]))):
            try:
                out[name[len(prefix):]] = read(open(path).read())
                break
            except OSError:
                continue
    return out


def idle_cpu_by_role(ref, seconds: float = 60.0) -> dict:
    """Each container's CPU over `seconds` of a lab at rest, in percent of one core,
    averaged per role (and over every container: `all`), with the busiest of each role."""
    before, t0 = container_cpu_ns(ref), time.monotonic()
    time.sleep(seconds)
    after, took = container_cpu_ns(ref), time.monotonic() - t0
    per = {n: 100 * (after[n] - before[n]) / 1e9 / took for n in after if n in before}
    roles: dict[str, list[float]] = {}
    for n, pct in per.items():
        roles.setdefault(ref.lab.role_of(n), []).append(pct)
    out = {role: {"containers": len(v), "mean": round(statistics.mean(v), 3), "max": round(max(v), 3)}
           for role, v in sorted(roles.items())}
    out["all"] = {"containers": len(per), "mean": round(statistics.mean(per.values()), 3),
                  "max": round(max(per.values()), 3), "seconds": round(took, 1)}
    return out


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
    from muxlab.fabric.generate import load_balancers
    import yaml
    doc = load_balancers(count + SKIP_VIPS, {vm.name: str(vm.ip) for vm in lab.vms})
    lbs = {f"bulk{i}": lb for i, lb in enumerate(list(doc["loadBalancers"].values())[SKIP_VIPS:])}
    for lb in lbs.values():
        lb["properties"].pop("probes")
        lb["properties"]["loadBalancingRules"][0]["properties"].pop("probe")
    path.write_text(yaml.safe_dump({"loadBalancers": lbs}))
    return path
