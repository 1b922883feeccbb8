"""The `muxlab` command."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import MuxlabError
from ..model.fabric import ModelError


def _lab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", "-t", help="containerlab topology (default: containerlab/muxlab.clab.yml); its lab.yml is the fabric")
    p.add_argument("--name", help="lab name (default: the model's name); containers are clab-NAME-NODE")


def cmd_bootstrap(a) -> None:
    from . import bootstrap
    bootstrap.run()


def cmd_images(a) -> None:
    from . import images
    from .lab import require_tools
    require_tools()
    images.build_all(no_cache=a.no_cache)


def cmd_generate(a) -> None:
    from pathlib import Path

    from muxlab.model.generate import GenerateError, generate

    from .lab import render_folder
    folder = Path(a.output).resolve()
    try:
        files = generate(a.lab_name or folder.name, a.muxes, a.hosts, a.vms_per_host, a.clients, a.lbs, a.managers)
    except GenerateError as exc:
        raise MuxlabError(str(exc)) from None
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).write_text(text)
    render_folder(folder)
    print(f"wrote {folder}: deploy it with `muxlab up -t {folder / 'muxlab.clab.yml'}`")
    if a.split:
        import yaml

        from muxlab.model.generate import split_topology
        # each machine's address: given, or an environment variable with a placeholder default
        machines = (a.machines.split(",") if a.machines else
                    [f"${{MUXLAB_MACHINE_{i}:=192.168.100.{i}}}" for i in range(1, a.split + 1)])
        if len(machines) != a.split:
            raise MuxlabError(f"--machines {a.machines}: {len(machines)} addresses for --split {a.split}")
        topo = yaml.safe_load((folder / "muxlab.clab.yml").read_text())
        for i, part in enumerate(split_topology(topo, machines), start=1):
            path = folder / f"muxlab.m{i}.clab.yml"
            path.write_text(f"# Machine {i} of {a.split} (docs/scaling.md): `containerlab deploy -t {path.name}` there.\n"
                            + yaml.safe_dump(part, sort_keys=False))
            print(f"wrote {path} ({len(part['topology']['nodes'])} nodes)")


def cmd_render(a) -> None:
    from pathlib import Path

    from .lab import DEFAULT_TOPOLOGY, render_folder
    folder = Path(a.topology or DEFAULT_TOPOLOGY).resolve().parent
    changed = render_folder(folder)
    for p in changed:
        print(f"rendered {p}")
    if not changed:
        print(f"{folder}: up to date with lab.yml")


def cmd_up(a) -> None:
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    lab.up(ref, wait=a.wait)
    print(lab.format_status(lab.status(ref)))


def cmd_down(a) -> None:
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    lab.down(ref)
    print(f"lab {ref.name!r} destroyed")


def cmd_status(a) -> None:
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    st = lab.status(ref)
    print(json.dumps(st, indent=2) if a.json else lab.format_status(st))


def cmd_apply(a) -> None:
    from . import lab, tenant
    print(tenant.apply(lab.resolve(a.topology, a.name), a.file, a.yes, a.prune, timeout=a.timeout))


def cmd_lb(a) -> None:
    from . import lab, tenant
    ref = lab.resolve(a.topology, a.name)
    print({"list": lambda: tenant.lb_list(ref), "show": lambda: tenant.lb_show(ref, a.lb),
           "delete": lambda: tenant.lb_delete(ref, a.lb)}[a.lb_cmd]())


def cmd_pool(a) -> None:
    from . import lab, tenant
    print(tenant.pool_change(lab.resolve(a.topology, a.name), a.lb, a.pool, a.vms, add=a.pool_cmd == "add"))


def cmd_backend(a) -> None:
    from . import lab, tenant
    state = "Down" if a.backend_cmd == "drain" else "None"
    print(tenant.admin_state(lab.resolve(a.topology, a.name), a.lb, a.vm, state, a.pool))


def cmd_swap(a) -> None:
    from . import lab, tenant
    print(tenant.swap(lab.resolve(a.topology, a.name), a.lb_a, a.lb_b))


def cmd_health(a) -> None:
    from . import lab, tenant
    h = tenant.health(lab.resolve(a.topology, a.name), a.lb, a.rule)
    print(json.dumps(h, indent=2) if a.json else tenant.format_health(h))


def cmd_snat(a) -> None:
    from . import lab, tenant
    s = tenant.snat(lab.resolve(a.topology, a.name), a.lb)
    print(json.dumps(s, indent=2) if a.json else tenant.format_snat(s))


def cmd_nat(a) -> None:
    from . import lab, tenant
    m = tenant.nat(lab.resolve(a.topology, a.name), a.lb, a.rule)
    print(json.dumps(m, indent=2) if a.json else tenant.format_nat(m))


def cmd_mtu(a) -> None:
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    if a.remedies is None:
        print("remedies: " + (", ".join(ref.api().get("/status").get("mtu_remedies", [])) or "none"))
        return
    remedies = [] if a.remedies == ["none"] else a.remedies
    api = ref.api()
    api.put("/mtu", {"remedies": remedies})
    api.wait_synced(ref.lab.agents)
    print(f"remedies: {', '.join(remedies) or 'none'} (every MUX and host has it)")


def cmd_fail(a) -> None:
    from . import faults, lab
    print(faults.fail(lab.resolve(a.topology, a.name), a.node, a.mode))


def cmd_heal(a) -> None:
    from . import faults, lab
    print(faults.heal(lab.resolve(a.topology, a.name), a.node))


def cmd_drain(a) -> None:
    from . import faults, lab
    print(faults.drain(lab.resolve(a.topology, a.name), a.mux, on=a.cmd == "drain"))


def cmd_traffic(a) -> None:
    from . import lab, traffic
    ref = lab.resolve(a.topology, a.name)
    result = traffic.run_flows(ref, a.source, a.vip, a.port, a.flows, udp=a.udp)
    print(json.dumps(result, indent=2) if a.json else traffic.format_result(result))
    if result["failures"]:
        sys.exit(1)


def _verbs(sub, name: str, help: str, dest: str, verbs: dict[str, list], fn) -> None:
    """A command with verbs (`muxlab pool add|remove ...`); each verb's arguments are names
    or (name, add_argument keywords)."""
    p = sub.add_parser(name, help=help)
    vsub = p.add_subparsers(dest=dest, required=True)
    for verb, args in verbs.items():
        q = vsub.add_parser(verb)
        for arg in args:
            q.add_argument(arg) if isinstance(arg, str) else q.add_argument(arg[0], **arg[1])
        _lab_args(q)
        q.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="muxlab", description="Emulated cloud software load balancer (Ananta / Azure SLB) on containerlab.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("bootstrap", help="install/start prerequisites: Docker engine, containerlab, mmdebstrap")
    p.set_defaults(fn=cmd_bootstrap)
    p = sub.add_parser("images", help="build the lab images")
    isub = p.add_subparsers(dest="images_cmd", required=True)
    b = isub.add_parser("build", help="build base (if needed), router and node images")
    b.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    b.set_defaults(fn=cmd_images)
    p = sub.add_parser("generate", help="write a lab of any size (fabric, load balancers, topology) into a folder")
    p.add_argument("--muxes", type=int, default=3)
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--vms-per-host", type=int, default=2)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--lbs", type=int, default=1, help="load balancers, one VIP each (public while 203.0.113.0/24 lasts)")
    p.add_argument("--managers", type=int, default=3)
    p.add_argument("--lab-name", help="the lab's name (default: the folder's)")
    p.add_argument("-o", "--output", required=True, help="the folder to write")
    p.add_argument("--split", type=int, default=0, help="also write one topology per machine, for N machines")
    p.add_argument("--machines", help="the machines' addresses, comma-separated (default: MUXLAB_MACHINE_i variables)")
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("render", help="re-render the topology and configs from lab.yml (the fabric)")
    p.add_argument("--topology", "-t")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("up", help="deploy a lab and wait until BGP/ECMP converged")
    _lab_args(p)
    p.add_argument("--wait", type=float, default=180, help="seconds to wait for convergence (default 180)")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("down", help="destroy a lab")
    _lab_args(p)
    p.set_defaults(fn=cmd_down)
    p = sub.add_parser("status", help="nodes, BGP sessions and ECMP next hops")
    _lab_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("apply", help="show the difference, then create or replace the file's load balancers live")
    p.add_argument("file", help="load balancers: YAML or JSON (muxlab's loadBalancers file, one LB, or an ARM template)")
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking (scripts)")
    p.add_argument("--prune", action="store_true", help="also delete load balancers the file does not name")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the managers' answer and for every agent to apply it (default 120)")
    _lab_args(p)
    p.set_defaults(fn=cmd_apply)
    _verbs(sub, "lb", "list, show or delete load balancers", "lb_cmd", {"list": [], "show": ["lb"], "delete": ["lb"]}, cmd_lb)
    _verbs(sub, "pool", "scale a backend pool out (add) or in (remove)", "pool_cmd",
           dict.fromkeys(("add", "remove"), ["lb", "pool", ("vms", dict(nargs="+", metavar="VM", help="VM name or address"))]),
           cmd_pool)
    _verbs(sub, "backend", "adminState of a backend: drain (Down: no new flows) or undrain", "backend_cmd",
           dict.fromkeys(("drain", "undrain"), ["lb", "vm", ("--pool", dict(help="only in this pool (default: every pool of the LB that has it)"))]),
           cmd_backend)
    p = sub.add_parser("swap", help="VIP swap: two load balancers exchange their frontends")
    p.add_argument("lb_a")
    p.add_argument("lb_b")
    _lab_args(p)
    p.set_defaults(fn=cmd_swap)
    p = sub.add_parser("health", help="per backend of a rule: Up or Down, and why")
    p.add_argument("lb")
    p.add_argument("rule")
    p.add_argument("--json", action="store_true")
    _lab_args(p)
    p.set_defaults(fn=cmd_health)
    for verb, what, args in (("snat", "outbound SNAT per backend: VIP, port ranges, ports in use, failures", ["lb"]),
                             ("nat", "an inbound NAT rule's port mappings: which backend has which frontend port",
                              ["lb", "rule"])):
        p = sub.add_parser(verb, help=what)
        q = p.add_subparsers(dest=f"{verb}_cmd", required=True).add_parser("show")
        for arg in args:
            q.add_argument(arg)
        q.add_argument("--json", action="store_true")
        _lab_args(q)
        q.set_defaults(fn=cmd_snat if verb == "snat" else cmd_nat)
    p = sub.add_parser("mtu", help="what MUXes and hosts do about packets too big for the overlay")
    p.add_argument("remedies", nargs="*", default=None, choices=["mss-clamp", "icmp", "none"],
                   help="set: any of mss-clamp, icmp; 'none' shows the black hole; nothing: show")
    _lab_args(p)
    p.set_defaults(fn=cmd_mtu)
    from .faults import MODES
    p = sub.add_parser("fail", help="inject a fault: kill, pause, link-down, stop-service or crash a node")
    p.add_argument("node")
    p.add_argument("--mode", required=True, choices=MODES)
    _lab_args(p)
    p.set_defaults(fn=cmd_fail)
    p = sub.add_parser("heal", help="undo the fault `muxlab fail` injected on a node")
    p.add_argument("node")
    _lab_args(p)
    p.set_defaults(fn=cmd_heal)
    for verb, what in (("drain", "withdraw a MUX's VIPs gracefully (its flows move to the other MUXes)"),
                       ("undrain", "let a drained MUX announce its VIPs again")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("mux")
        _lab_args(p)
        p.set_defaults(fn=cmd_drain)
    p = sub.add_parser("traffic", help="open N flows from a client to a VIP and show which DIP served each")
    _lab_args(p)
    p.add_argument("--from", dest="source", default="client1", help="client node (default client1)")
    p.add_argument("--vip", required=True, help="VIP name or address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--flows", type=int, default=100)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_traffic)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except ModelError as exc:
        print(f"muxlab: {exc}", file=sys.stderr)
        sys.exit(2)
    except (MuxlabError, KeyError) as exc:
        print(f"muxlab: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        sys.exit(1)
