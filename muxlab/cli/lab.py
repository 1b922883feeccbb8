"""Deploy, destroy and inspect a lab: containerlab and docker as subprocesses, the managers'
API for the load balancers and what the agents report."""
from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import versions
from ..datapath.conventions import API_PORT, API_TOKEN, CA_CERT, MAGLEV_TABLES_FILE, PKI_FOLDER
from ..errors import MuxlabError
from ..fabric.lab import Lab, check_name, load_lab
from ..fabric.render import GENERATED, MGMT_DEFAULTS, render_lab_files
from ..lb.azure import LoadBalancer
from ..pki import ensure_pki
from .api import Api

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOPOLOGY = REPO / "containerlab" / "muxlab.clab.yml"


@dataclass(frozen=True)
class LabRef:
    """A deployed (or deployable) lab: its topology file, fabric and name."""
    topology: Path
    name: str
    lab: Lab

    @property
    def folder(self) -> Path:
        return self.topology.parent

    @property
    def state_dir(self) -> Path:
        """The operator's notes about this lab (faults injected); never seen by its nodes."""
        return self.folder / ".labs" / self.name

    def container(self, node: str) -> str:
        return f"clab-{self.name}-{node}"

    @property
    def mgmt_network(self) -> str:
        return MGMT_DEFAULTS["MUXLAB_MGMT_NET"] + ("" if self.name == DEFAULT_LAB_NAME else f"-{self.name}")

    def manager_urls(self) -> list[str]:
        return list(self.manager_url_map().values())

    @property
    def ca_file(self) -> Path:
        """The lab's CA certificate (the managers' API certificates are signed by it)."""
        return self.folder / PKI_FOLDER / CA_CERT

    @property
    def token(self) -> str:
        """The managers' API bearer token, from the lab's PKI."""
        path = self.folder / PKI_FOLDER / API_TOKEN
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
        if not token or not self.ca_file.is_file():
            raise MuxlabError(f"lab has no PKI: deploy it with muxlab up (no {path if not token else self.ca_file})")
        return token

    def manager_url_map(self) -> dict[str, str]:
        """Manager -> its API, at its management address (as Docker gave it); a manager whose
        container is not running has none and is left out."""
        urls = {}
        for m in self.lab.managers:
            proc = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                                   self.container(m)], capture_output=True, text=True)
            addr = proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else None
            if addr:
                urls[m] = f"https://{addr}:{API_PORT}"
        return urls

    def api(self, timeout: float = 15.0, managers: dict[str, str] | None = None) -> Api:
        """The managers' API (or those of `managers`: name -> URL): HTTPS by management
        address, each certificate checked for its manager's name against the lab's CA, with
        the lab's token."""
        by_name = self.manager_url_map() if managers is None else managers
        return Api(list(by_name.values()), timeout, token=self.token, ca=self.ca_file, names=list(by_name))


DEFAULT_LAB_NAME = "muxlab"


def mgmt_env(ref: LabRef) -> dict[str, str]:
    """The management network of a lab: the topology's defaults for the default lab (so plain
    containerlab deploys the same thing), the one it has when it is deployed, else the first
    free 172.30.N.0/24. (containerlab reads the topology with these variables on destroy
    too: without them it would name, and create, the default lab's network.)"""
    if ref.name == DEFAULT_LAB_NAME:
        return dict(MGMT_DEFAULTS)
    have = run(["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", ref.mgmt_network],
               check=False).stdout.strip()
    if have.endswith(".0/24"):
        prefix = have.rsplit(".", 1)[0]
        return {"MUXLAB_MGMT_NET": ref.mgmt_network, "MUXLAB_MGMT_SUBNET": have,
                "MUXLAB_MGMT_RANGE": f"{prefix}.0/25", "MUXLAB_MGMT_PREFIX": prefix}
    used = set()
    for net in run(["docker", "network", "ls", "-q"]).stdout.split():
        proc = run(["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", net], check=False)
        used |= set(proc.stdout.split())
    for n in range(2, 255):
        subnet = f"172.30.{n}.0/24"
        if subnet not in used:
            return {"MUXLAB_MGMT_NET": ref.mgmt_network, "MUXLAB_MGMT_SUBNET": subnet,
                    "MUXLAB_MGMT_RANGE": f"172.30.{n}.0/25", "MUXLAB_MGMT_PREFIX": f"172.30.{n}"}
    raise MuxlabError("no free /24 left in 172.30.0.0/16 for the lab's management network")


def resolve(topology: str | Path | None, name: str | None) -> LabRef:
    topo = Path(topology or DEFAULT_TOPOLOGY).resolve()
    if not topo.is_file():
        raise MuxlabError(f"topology {topo}: no such file")
    model = topo.parent / "lab.yml"
    if not model.is_file():
        raise MuxlabError(f"topology {topo}: its fabric {model} is missing")
    lab = load_lab(model)  # raises ModelError naming field and value: nothing deployed
    if name is not None:   # it names containers, a network and state folders: the fabric's rule
        check_name(name, "--name", "lab name")
    return LabRef(topo, name or lab.name, lab)


def write_variant(folder: Path, change) -> Path:
    """A copy of the default lab in `folder`, `change(fabric mapping)` applied to its lab.yml
    and its generated files rendered. Returns the topology to deploy."""
    source = DEFAULT_TOPOLOGY.parent
    folder.mkdir(parents=True, exist_ok=True)
    fabric = yaml.safe_load((source / "lab.yml").read_text())
    change(fabric)
    (folder / "lab.yml").write_text(yaml.safe_dump(fabric, sort_keys=False))
    shutil.copy(source / "loadbalancers.yml", folder / "loadbalancers.yml")
    render_folder(folder)
    return folder / DEFAULT_TOPOLOGY.name


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
    # the topology binds each node's certificate: a folder that can be deployed has its PKI
    ensure_pki(folder, lab)
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
    made = ensure_pki(ref.folder, ref.lab)   # a hand-written topology's folder too
    print(f"muxlab: lab PKI (CA, a certificate per infrastructure node, API token) in {made}", flush=True)
    env = dict(__import__("os").environ, **mgmt_env(ref))
    print(f"muxlab: deploying lab {ref.name!r} from {ref.topology}", flush=True)
    proc = run(["containerlab", "deploy", "-t", str(ref.topology), "--name", ref.name], timeout=900, check=False, env=env)
    if proc.returncode != 0:
        down(ref)
        raise MuxlabError(f"containerlab deploy failed (lab destroyed again):\n{(proc.stdout + proc.stderr)[-3000:]}")
    wait_converged(ref, wait)


def down(ref: LabRef) -> None:
    if shutil.which("containerlab"):
        env = dict(__import__("os").environ, **mgmt_env(ref))
        run(["containerlab", "destroy", "-t", str(ref.topology), "--name", ref.name, "--cleanup"], timeout=300, check=False,
            env=env)
    # containerlab removes what it knows; make sure nothing of this lab is left either way
    for c in containers(ref.name):
        run(["docker", "rm", "-f", c["container"]], check=False)
    run(["docker", "network", "rm", ref.mgmt_network], check=False)
    for made in (ref.state_dir, ref.folder / f"clab-{ref.name}"):
        remove_own(ref.folder, made)


def remove_own(folder: Path, path: Path) -> None:
    """Remove a directory muxlab (or containerlab, for this lab) made inside the lab folder,
    and nothing else: a path that resolves outside it is refused, whatever its name."""
    folder, target = folder.resolve(), path.resolve()
    if target == folder or not target.is_relative_to(folder):
        raise MuxlabError(f"refusing to remove {path}: it is not inside the lab folder {folder}")
    shutil.rmtree(target, ignore_errors=True)


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


def vip_nexthops(ref: LabRef, vips: list[str] | None = None) -> dict[str, list[str]]:
    """VIP -> MUX names its kernel route on the edge points to (empty: no route). `vips`:
    the frontend addresses to report (default: every one the managers hold)."""
    if vips is None:
        vips = frontends(ref.api().load_balancers())
    proc = docker_exec(ref, "edge", ["ip", "-j", "route", "show", "proto", "bgp"], check=False)
    routes = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    by_addr = {str(m.address): m.name for m in ref.lab.muxes}
    out = {v: [] for v in vips}
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
        proc = docker_exec(ref, m.name, ["cat", MAGLEV_TABLES_FILE], check=False) if m.name in running else None
        try:
            out[m.name] = json.loads(proc.stdout)["digest"] if proc and proc.returncode == 0 else None
        except (ValueError, KeyError):
            out[m.name] = None
    return out


def frontends(lbs: dict[str, dict], with_rules: bool = False) -> list[str]:
    """Frontend addresses of load balancers as the API returns them (with_rules: only those
    some load-balancing rule uses, the ones MUXes announce while a backend is up)."""
    out = set()
    for body in lbs.values():
        p = LoadBalancer.model_validate(body).properties
        used = {r.properties.frontendIPConfiguration.name for r in p.loadBalancingRules}
        out |= {str(fe.address) for fe in p.frontendIPConfigurations
                if fe.address is not None and (fe.name in used or not with_rules)}
    return sorted(out, key=ipaddress.IPv4Address)


def vip_address(lbs: dict[str, dict], vip: str) -> tuple[str, str]:
    """(load balancer, address) for a load balancer's name or one of its frontend addresses."""
    for name, lb in sorted(lbs.items()):
        addrs = frontends({name: lb})
        if vip == name and addrs:
            return name, addrs[0]
        if vip in addrs:
            return name, vip
    known = ", ".join(f"{n} ({', '.join(frontends({n: lb}))})" for n, lb in sorted(lbs.items()))
    raise MuxlabError(f"unknown VIP {vip!r}: give a load balancer's name or frontend address; known: {known or 'none'}")


def manager_view(ref: LabRef) -> dict:
    """Each manager's Raft role (or why it does not answer), the managers' status and their
    load balancers, in one round of calls."""
    out = {"managers": {}, "status": None, "load_balancers": {}}
    by_name = ref.manager_url_map()
    for m in ref.lab.managers:
        url = by_name.get(m)
        if url is None:
            out["managers"][m] = {"url": "-", "role": None, "status": "container not running"}
            continue
        try:
            out["managers"][m] = {"url": url, **ref.api(3, {m: url}).get("/cluster")}
        except MuxlabError as exc:
            out["managers"][m] = {"url": url, "role": None, "status": f"not answering ({exc})"[:120]}
    try:
        api = ref.api(5, by_name)
        out["status"] = api.get("/status")
        out["load_balancers"] = api.load_balancers()
    except MuxlabError:
        pass
    return out


def probes(ref: LabRef, status: dict | None) -> dict:
    """Per VM: its host's liveness and each probe's state, as the host agents report them."""
    if not status:
        return {}
    alive = {h["name"] for h in status["hosts"] if h["alive"]}
    by_vm: dict[str, dict] = {}
    for h in status["health"]:
        by_vm.setdefault(h["vm"], {})[h["probe"]] = {"up": h["up"], "last_error": h["reason"]}
    return {vm.name: {"host": vm.host, "host_alive": vm.host in alive, "probes": by_vm.get(vm.name, {})}
            for vm in ref.lab.vms}


def status(ref: LabRef) -> dict:
    nodes = containers(ref.name)
    running = {c["node"] for c in nodes if c["state"] == "running"}
    mv = (manager_view(ref) if any(m in running for m in ref.lab.managers)
          else {"managers": {}, "status": None, "load_balancers": {}})
    st = mv["status"]
    urls = [m["url"] for m in mv["managers"].values() if m.get("role")]
    result = {"lab": ref.name, "topology": str(ref.topology), "nodes": nodes, "bgp": {}, "vips": {},
              "manager_url": urls[0] if urls else None, "token": _token_or_none(ref),
              "ca_file": str(ref.ca_file) if ref.ca_file.is_file() else None, "managers": mv["managers"],
              "invalid": st.get("invalid", []) if st else [],   # stored rows the API would refuse: skipped
              "load_balancers": st["load_balancers"] if st else [], "nb_cfg": st["nb_cfg"] if st else None,
              "agents": ({m["name"]: {"role": "mux", "nb_cfg": m["nb_cfg"], "synced_at": m["synced_at"]} for m in st["muxes"]}
                         | {h["name"]: {"role": "host", "nb_cfg": h["nb_cfg"], "synced_at": h["synced_at"]}
                            for h in st["hosts"]}) if st else {},
              "drained": sorted(m["name"] for m in st["muxes"] if m["drained"]) if st else [],
              "faults": sorted(p.stem for p in (ref.state_dir / "faults").glob("*.json")),
              "probes": probes(ref, st), "mux_tables": mux_tables(ref, running),
              # the VIPs MUXes announce while a backend is in rotation
              "announceable": frontends(mv["load_balancers"], with_rules=True)}
    if "edge" in running:
        result["bgp"] = bgp_sessions(ref)
        result["vips"] = vip_nexthops(ref, frontends(mv["load_balancers"]))
    return result


def _token_or_none(ref: LabRef) -> str | None:
    try:
        return ref.token
    except MuxlabError:
        return None


def wait_converged(ref: LabRef, timeout: float) -> dict:
    """Until every node runs, every MUX session is up and every VIP has one next hop per MUX."""
    deadline = time.monotonic() + timeout
    want = sorted(m.name for m in ref.lab.muxes)
    agents = want + [h.name for h in ref.lab.hosts]
    while True:
        st = status(ref)
        ok = (len(st["nodes"]) == len(ref.lab.node_names()) and all(n["state"] == "running" for n in st["nodes"])
              and st["nb_cfg"] and all(st["agents"].get(a, {}).get("nb_cfg", -1) >= st["nb_cfg"] for a in agents)
              and all(st["bgp"].get(m) == "Established" for m in want)
              and all(st["vips"].get(v) == want for v in st["announceable"]))
        if ok:
            return st
        if time.monotonic() > deadline:
            raise MuxlabError(f"lab {ref.name!r} did not converge within {timeout:.0f} s:\n{format_status(st)}")
        time.sleep(1)


def probes_line(probes: dict, full: bool = False) -> str:
    """A VM's probes in one line: every probe with `full`, else how many are up and the
    down ones by name (a VM in 40 load balancers would otherwise print 40 probes)."""
    def down(n, s) -> str:
        return f"{n} (" + (s["last_error"] or "?") + ")"
    if not probes:
        return "-"
    if full:
        return ", ".join(f"{n}: up" if s["up"] else f"{n}: DOWN (" + (s["last_error"] or "?") + ")"
                         for n, s in probes.items())
    bad = [down(n, s) for n, s in probes.items() if not s["up"]]
    up = len(probes) - len(bad)
    return f"{up} up" + (f", {len(bad)} DOWN: " + ", ".join(bad) if bad else "")


def format_status(st: dict, all_probes: bool = False) -> str:
    lines = [f"lab {st['lab']}  ({st['topology']})", "", f"{'NODE':<10} {'CONTAINER':<28} STATE"]
    lines += [f"{n['node']:<10} {n['container']:<28} {n['state']}" for n in st["nodes"]] or ["(no containers)"]
    if st.get("managers"):
        lines += ["", f"{'MANAGER':<10} {'API':<28} RAFT ROLE"]
        for m, info in st["managers"].items():
            role = info.get("role") or "-"
            leader = "  (leader: self)" if info.get("leader") == "self" else ""
            lines.append(f"{m:<10} {info['url']:<28} {role}{leader}{'' if info.get('role') else '  ' + str(info.get('status'))}")
        lines.append(f"load balancers: {', '.join(st['load_balancers']) or '(none)'}   configuration nb_cfg {st['nb_cfg']}")
        for bad in st.get("invalid", []):
            lines.append(f"INVALID stored load balancer {bad['name']!r} (skipped by managers and agents; "
                         f"muxlab lb delete it): {bad['reason']}")
    if st.get("agents"):
        now = time.time()
        lines += ["", f"{'AGENT':<10} {'ROLE':<6} LAST SYNC (configuration applied)"]
        for a, info in sorted(st["agents"].items()):
            ago = f"{now - info['synced_at']:.1f} s ago" if info.get("synced_at") else "never"
            behind = "" if info["nb_cfg"] >= (st["nb_cfg"] or 0) else f"  BEHIND (at {info['nb_cfg']})"
            lines.append(f"{a:<10} {info['role']:<6} {ago}, nb_cfg {info['nb_cfg']}{behind}")
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
        lines += ["", f"{'VM':<8} {'HOST':<8} PROBES (in rotation?{'' if all_probes else ' --probes: each one'})"]
        for vm, p in st["probes"].items():
            host = p["host"] + ("" if p["host_alive"] else " DEAD")
            lines.append(f"{vm:<8} {host:<8} {probes_line(p['probes'], all_probes)}")
    if st.get("faults"):
        lines += ["", "injected faults (muxlab heal NODE): " + ", ".join(st["faults"])]
    return "\n".join(lines)
