"""Deploy, destroy and inspect a lab: containerlab and docker as subprocesses."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import versions
from .errors import MuxlabError
from .model import Lab, load_lab
from .render import GENERATED, render_lab_files

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOPOLOGY = REPO / "containerlab" / "muxlab.clab.yml"


@dataclass(frozen=True)
class LabRef:
    """A deployed (or deployable) lab: its topology file, model and name."""
    topology: Path
    name: str
    lab: Lab

    @property
    def folder(self) -> Path:
        return self.topology.parent

    @cached_property
    def store(self) -> Path:
        """The lab's live-state directory: where its running nodes have it mounted (a lab
        deployed with plain containerlab uses the topology's `store/`), else where `muxlab up`
        will put it."""
        for node in ("edge", *(m.name for m in self.lab.muxes)):
            proc = subprocess.run(["docker", "inspect", "-f", '{{range .Mounts}}{{if eq .Destination "/var/lib/muxlab"}}'
                                   '{{.Source}}{{end}}{{end}}', self.container(node)], capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout.strip():
                return Path(proc.stdout.strip())
        return self.default_store

    @property
    def default_store(self) -> Path:
        return self.folder / ".labs" / self.name / "store"

    def container(self, node: str) -> str:
        return f"clab-{self.name}-{node}"


def resolve(topology: str | Path | None, name: str | None) -> LabRef:
    topo = Path(topology or DEFAULT_TOPOLOGY).resolve()
    if not topo.is_file():
        raise MuxlabError(f"topology {topo}: no such file")
    model = topo.parent / "lab.yml"
    if not model.is_file():
        raise MuxlabError(f"topology {topo}: its lab model {model} is missing")
    lab = load_lab(model)  # raises ModelError naming field and value: nothing deployed
    return LabRef(topo, name or lab.name, lab)


def render_folder(folder: Path) -> list[Path]:
    """(Re)write the generated files of a lab folder from its lab.yml; returns those changed."""
    model_path = folder / "lab.yml"
    lab = load_lab(model_path)
    changed = []
    for rel, text in render_lab_files(lab, model_path.read_text()).items():
        path = folder / rel
        if rel == "lab.yml" or (path.exists() and path.read_text() == text):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changed.append(path)
    return changed


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command; a failure (or a hang past `timeout`) is a MuxlabError with its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise MuxlabError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise MuxlabError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def require_tools() -> None:
    if not shutil.which("docker"):
        raise MuxlabError("Docker is not installed: run `muxlab bootstrap`")
    if run(["docker", "info"], timeout=30, check=False).returncode != 0:
        raise MuxlabError("the Docker engine is not running: run `muxlab bootstrap` (it starts it)")
    if not shutil.which("containerlab"):
        raise MuxlabError("containerlab is not installed: run `muxlab bootstrap`")


def require_images() -> None:
    for ref in (versions.ROUTER_IMAGE, versions.NODE_IMAGE):
        if run(["docker", "image", "inspect", ref], check=False).returncode != 0:
            raise MuxlabError(f"image {ref} is missing: run `muxlab images build`")


def containers(name: str) -> list[dict]:
    proc = run(["docker", "ps", "-a", "--filter", f"label=containerlab={name}", "--format", "{{json .}}"])
    out = []
    for line in proc.stdout.splitlines():
        c = json.loads(line)
        labels = dict(kv.split("=", 1) for kv in c.get("Labels", "").split(",") if "=" in kv)
        out.append({"container": c["Names"], "node": labels.get("clab-node-name", c["Names"]), "state": c["State"]})
    return sorted(out, key=lambda c: c["node"])


def up(ref: LabRef, wait: float = 180) -> None:
    require_tools()
    require_images()
    if containers(ref.name):
        raise MuxlabError(f"lab {ref.name!r} is already running: `muxlab down --name {ref.name}` first, or pick another --name")
    if ref.topology.read_text().startswith(GENERATED):
        for path in render_folder(ref.folder):
            print(f"muxlab: re-rendered {path.relative_to(ref.folder)} from lab.yml")
    store = ref.default_store
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    env = dict(__import__("os").environ, MUXLAB_STORE=str(store))
    print(f"muxlab: deploying lab {ref.name!r} from {ref.topology}", flush=True)
    proc = run(["containerlab", "deploy", "-t", str(ref.topology), "--name", ref.name], timeout=900, check=False, env=env)
    if proc.returncode != 0:
        run(["containerlab", "destroy", "-t", str(ref.topology), "--name", ref.name, "--cleanup"], timeout=300, check=False)
        raise MuxlabError(f"containerlab deploy failed (lab destroyed again):\n{(proc.stdout + proc.stderr)[-3000:]}")
    wait_converged(ref, wait)


def down(ref: LabRef) -> None:
    store = ref.store  # ask the running nodes before they go
    if shutil.which("containerlab"):
        run(["containerlab", "destroy", "-t", str(ref.topology), "--name", ref.name, "--cleanup"], timeout=300, check=False)
    # containerlab removes what it knows; make sure nothing of this lab is left either way
    for c in containers(ref.name):
        run(["docker", "rm", "-f", c["container"]], check=False)
    shutil.rmtree(ref.folder / ".labs" / ref.name, ignore_errors=True)
    # a lab deployed with plain containerlab keeps its store in the topology's folder: empty it
    if store.is_dir():
        for entry in store.iterdir():
            if entry.name != ".gitignore":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(ref.folder / f"clab-{ref.name}", ignore_errors=True)


def docker_exec(ref: LabRef, node: str, argv: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker", "exec", ref.container(node), *argv], timeout=timeout, check=check)


def bgp_sessions(ref: LabRef) -> dict[str, str]:
    """MUX name -> BGP state as the edge sees it."""
    proc = docker_exec(ref, "edge", ["vtysh", "-c", "show bgp ipv4 unicast summary json"], check=False)
    peers = {}
    try:
        peers = json.loads(proc.stdout).get("peers", {})
    except ValueError:
        pass
    by_addr = {str(m.address): m.name for m in ref.lab.muxes}
    return {by_addr.get(ip, ip): p.get("state", "?") for ip, p in peers.items()} | {
        m.name: "Down" for m in ref.lab.muxes if str(m.address) not in peers}


def vip_nexthops(ref: LabRef) -> dict[str, list[str]]:
    """VIP -> MUX names its kernel route on the edge points to (empty: no route)."""
    proc = docker_exec(ref, "edge", ["ip", "-j", "route", "show", "proto", "bgp"], check=False)
    routes = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    by_addr = {str(m.address): m.name for m in ref.lab.muxes}
    out = {str(v.address): [] for v in ref.lab.vips}
    for r in routes:
        dst = r.get("dst", "")
        if dst not in out:
            continue
        hops = [h.get("gateway") for h in r.get("nexthops", [])] or [r.get("gateway")]
        out[dst] = sorted(by_addr.get(h, h) for h in hops if h)
    return out


def mux_tables(ref: LabRef, running: set[str]) -> dict[str, str | None]:
    """MUX -> digest of the Maglev tables it has programmed (equal digests: identical tables)."""
    out = {}
    for m in ref.lab.muxes:
        proc = docker_exec(ref, m.name, ["cat", "/run/muxlab/tables.json"], check=False) if m.name in running else None
        try:
            out[m.name] = json.loads(proc.stdout)["digest"] if proc and proc.returncode == 0 else None
        except (ValueError, KeyError):
            out[m.name] = None
    return out


def probes(ref: LabRef) -> dict:
    """Per VM: its host's liveness and each probe's state, as the host agents report them."""
    from .state import fresh_hosts, health_reports
    reports = health_reports(ref.store)
    alive = fresh_hosts(reports, time.time())
    out = {}
    for vm in ref.lab.vms:
        states = reports.get(vm.host, {}).get("vms", {}).get(vm.name, {})
        out[vm.name] = {"host": vm.host, "host_alive": vm.host in alive,
                        "probes": {p: {"up": st["up"], "fail_streak": st["fail_streak"], "ok_streak": st["ok_streak"],
                                       "last_error": st["last_error"]} for p, st in states.items()}}
    return out


def status(ref: LabRef) -> dict:
    nodes = containers(ref.name)
    running = {c["node"] for c in nodes if c["state"] == "running"}
    result = {"lab": ref.name, "topology": str(ref.topology), "nodes": nodes, "bgp": {}, "vips": {},
              "drained": sorted(p.name for p in (ref.store / "drain").glob("*")),
              "faults": sorted(p.stem for p in (ref.store / "faults").glob("*.json")),
              "probes": probes(ref), "mux_tables": mux_tables(ref, running)}
    if "edge" in running:
        result["bgp"] = bgp_sessions(ref)
        result["vips"] = vip_nexthops(ref)
    return result


def wait_converged(ref: LabRef, timeout: float) -> dict:
    """Until every node runs, every MUX session is up and every VIP has one next hop per MUX."""
    deadline = time.monotonic() + timeout
    want = sorted(m.name for m in ref.lab.muxes)
    while True:
        st = status(ref)
        ok = (len(st["nodes"]) == len(ref.lab.node_names()) and all(n["state"] == "running" for n in st["nodes"])
              and all(st["bgp"].get(m) == "Established" for m in want)
              and all(h == want for h in st["vips"].values()))
        if ok:
            return st
        if time.monotonic() > deadline:
            raise MuxlabError(f"lab {ref.name!r} did not converge within {timeout:.0f} s:\n{format_status(st)}")
        time.sleep(1)


def format_status(st: dict) -> str:
    lines = [f"lab {st['lab']}  ({st['topology']})", "", f"{'NODE':<10} {'CONTAINER':<28} STATE"]
    lines += [f"{n['node']:<10} {n['container']:<28} {n['state']}" for n in st["nodes"]] or ["(no containers)"]
    if st["bgp"]:
        lines += ["", f"{'MUX':<10} BGP SESSION ON THE EDGE"]
        lines += [f"{m:<10} {s}" for m, s in sorted(st["bgp"].items())]
    if st["vips"]:
        lines += ["", f"{'VIP':<16} ECMP NEXT HOPS IN THE EDGE'S KERNEL"]
        lines += [f"{v:<16} {', '.join(h) or '(no route: blackholed)'}"
                  for v, h in sorted(st["vips"].items(), key=lambda kv: ipaddress.ip_address(kv[0]))]
    if st.get("mux_tables"):
        digests = {d for d in st["mux_tables"].values() if d}
        lines += ["", f"{'MUX':<10} MAGLEV TABLES ({'identical' if len(digests) == 1 else 'DIFFER'})"]
        lines += [f"{m:<10} {d or '-'}{'  (drained)' if m in st.get('drained', []) else ''}"
                  for m, d in st["mux_tables"].items()]
    if st.get("probes"):
        lines += ["", f"{'VM':<8} {'HOST':<8} PROBES (in rotation?)"]
        for vm, p in st["probes"].items():
            host = p["host"] + ("" if p["host_alive"] else " DEAD")
            probes_txt = ", ".join(f"{n}: {'up' if s['up'] else 'DOWN (' + (s['last_error'] or '?') + ')'}"
                                   for n, s in p["probes"].items()) or "-"
            lines.append(f"{vm:<8} {host:<8} {probes_txt}")
    if st.get("faults"):
        lines += ["", "injected faults (muxlab heal NODE): " + ", ".join(st["faults"])]
    return "\n".join(lines)


def apply_model(ref: LabRef, model_path: str | Path) -> Lab:
    """Validate a new LB model and hand it to the running lab's MUXes and host agents.

    Only the load-balancer part (VIPs, rules, pools, probes, hashing) can change live; nodes
    and addressing are the topology and need a redeploy. Nothing is written unless valid."""
    new = load_lab(model_path)
    old = ref.lab
    for attr in ("muxes", "hosts", "vms", "clients", "vni", "edge_asn", "mux_asn"):
        if getattr(new, attr) != getattr(old, attr):
            raise MuxlabError(f"{model_path}: field {attr!r} differs from the deployed lab's; "
                              "nodes and addressing need `muxlab down` and `muxlab up`")
    if not containers(ref.name):
        raise MuxlabError(f"lab {ref.name!r} is not running")
    from .state import write_atomic
    write_atomic(ref.store / "lab.yml", Path(model_path).read_text())
    return new
