"""The `muxlab` command."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import MuxlabError
from ..fabric.lab import ModelError


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

    from muxlab.fabric.generate import GenerateError, generate

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

        from muxlab.fabric.generate import split_topology
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

    from ..datapath.conventions import PKI_FOLDER
    from .lab import DEFAULT_TOPOLOGY, render_folder
    folder = Path(a.topology or DEFAULT_TOPOLOGY).resolve().parent
    changed = render_folder(folder)
    for p in changed:
        print(f"rendered {p}")
    if not changed:
        print(f"{folder}: up to date with lab.yml")
    print(f"lab PKI (plain `containerlab deploy` binds it): {folder / PKI_FOLDER}")


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
    print(json.dumps(st, indent=2) if a.json else lab.format_status(st, a.probes))


def cmd_apply(a) -> None:
    from . import lab, tenant
    print(tenant.apply(lab.resolve(a.topology, a.name), a.file, a.yes, a.prune, timeout=a.timeout, roles=a.roles))


def cmd_instance(a) -> None:
    from . import lab, tenant
    print(tenant.instance_status(lab.resolve(a.topology, a.name), a.vm, a.status == "busy"))


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
    from muxlab.fabric.lab import MTU_REMEDIES
    bad = [r for r in a.remedies if r not in (*MTU_REMEDIES, "none")] or (["none"] if "none" in a.remedies
                                                                            and len(a.remedies) > 1 else [])
    if bad:
        raise MuxlabError(f"muxlab mtu: {bad[0]!r} is not a remedy: give any of {', '.join(MTU_REMEDIES)}, "
                          "or none alone (nothing: show the current ones)")
    ref = lab.resolve(a.topology, a.name)
    if not a.remedies:
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


def cmd_workshop(a) -> None:
    from . import lab, workshop
    verb = a.workshop_cmd
    if verb == "list":
        workshop.console.print(workshop.list_table())
        return
    if verb == "hint":
        print(workshop.hint(workshop.find_exercise(a.exercise), a.n))
        return
    ref = lab.resolve(a.topology, a.name)
    if verb == "check" and a.all:
        results = workshop.check_all(ref, a.solve, a.only.split(",") if a.only else None)
        sys.exit(0 if all(results.values()) else 1)
    if a.exercise is None:
        raise MuxlabError(f"workshop {verb}: name an exercise (number or folder; `muxlab workshop list`)")
    ex = workshop.find_exercise(a.exercise)
    if verb == "check":
        sys.exit(0 if workshop.check(ref, ex) else 1)
    {"start": workshop.start, "solve": workshop.solve, "reset": workshop.reset}[verb](ref, ex)


def cmd_capture(a) -> None:
    from pathlib import Path

    from . import capture, lab
    ref = lab.resolve(a.topology, a.name)
    counts = capture.capture(ref, a.points, Path(a.write), a.duration, a.filter)
    print(f"wrote {a.write}: {sum(counts.values())} packets, one time line")
    for label, n in sorted(counts.items()):
        print(f"  {label:<16} {n}")


def cmd_trace(a) -> None:
    from pathlib import Path

    from . import lab, trace
    ref = lab.resolve(a.topology, a.name)
    t = trace.trace(ref, a.source, a.to, a.port, udp=a.udp)
    if a.svg:
        trace.write_picture(ref, t, Path(a.svg))
    print(json.dumps(t, indent=2) if a.json else trace.format_trace(t))
    if a.svg and not a.json:
        print(f"\npicture: {a.svg} (request in blue, reply in orange)")
    if not t["answered"]:
        sys.exit(1)


def cmd_graph(a) -> None:
    from pathlib import Path

    from ..fabric.drawing import topology_svg
    from ..fabric.render import links
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    if a.mermaid:  # containerlab's own rendering, from the topology file (it writes a file and names it)
        import re
        proc = lab.run(["containerlab", "graph", "-t", str(ref.topology), "--mermaid"], timeout=60)
        made = re.search(r"file: (\S+\.mermaid)", proc.stdout + proc.stderr)
        if not made:
            raise MuxlabError(f"containerlab graph --mermaid wrote no file:\n{proc.stdout}{proc.stderr}")
        Path(a.output).write_text(Path(made.group(1)).read_text())
        print(f"wrote {a.output} (containerlab's mermaid)")
        return
    Path(a.output).write_text(topology_svg(ref.lab, links(ref.lab), title=f"lab {ref.name}"))
    print(f"wrote {a.output}")


def cmd_watch(a) -> None:
    from . import lab, watch
    try:
        watch.watch(lab.resolve(a.topology, a.name), a.interval, once=a.once)
    except KeyboardInterrupt:
        pass


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
    p.add_argument("--probes", action="store_true", help="every probe of every VM (default: counts, and the down ones)")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("apply", help="show the difference, then create or replace the file's load balancers live")
    p.add_argument("file", help="load balancers: YAML or JSON (muxlab's loadBalancers file, one LB, or an ARM template), "
                                "or a classic cloud service's ServiceDefinition (.csdef)")
    p.add_argument("--roles", help="a .csdef's roles file: its VIP and each role's VMs (default: NAME.roles.yml beside it)")
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking (scripts)")
    p.add_argument("--prune", action="store_true", help="also delete load balancers the file does not name")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the managers' answer and for every agent to apply it (default 120)")
    _lab_args(p)
    p.set_defaults(fn=cmd_apply)
    p = sub.add_parser("instance", help="a classic role instance reports itself busy or ready (seed 003's StatusCheck)")
    p.add_argument("vm")
    p.add_argument("status", choices=("busy", "ready"))
    _lab_args(p)
    p.set_defaults(fn=cmd_instance)
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
    # no argparse `choices`: with nargs="*" it refuses the empty list ("invalid choice: []")
    p.add_argument("remedies", nargs="*", metavar="REMEDY",
                   help="set: any of mss-clamp, icmp; 'none' shows the black hole; nothing: show")
    _lab_args(p)
    p.set_defaults(fn=cmd_mtu)
    from .faults import MODES
    p = sub.add_parser("fail", help="inject a fault: kill, pause, link-down, stop-service or crash a node; strict rp_filter on the edge")
    p.add_argument("node")
    p.add_argument("--mode", required=True, choices=MODES)
    _lab_args(p)
    p.set_defaults(fn=cmd_fail)
    p = sub.add_parser("heal", help="restore a node however it failed (muxlab fail, or docker stop/kill/pause by hand)")
    p.add_argument("node")
    _lab_args(p)
    p.set_defaults(fn=cmd_heal)
    p = sub.add_parser("workshop", help="guided exercises with automatic checks (workshops/NN-name/)")
    wsub = p.add_subparsers(dest="workshop_cmd", required=True)
    wsub.add_parser("list", help="the exercises").set_defaults(fn=cmd_workshop)
    for verb, what in (("start", "set the lab up for an exercise (faults, load balancers)"),
                       ("check", "run an exercise's checks: PASS/FAIL with what it means; exit 1 on any FAIL"),
                       ("hint", "the exercise's hints (all, or the Nth)"),
                       ("solve", "apply the instructor's solution"),
                       ("reset", "undo the exercise: the lab as it was before `start`")):
        q = wsub.add_parser(verb, help=what)
        q.add_argument("exercise", nargs="?" if verb == "check" else None, help="number or folder name")
        if verb == "hint":
            q.add_argument("n", nargs="?", type=int, help="only the Nth hint")
        else:
            _lab_args(q)
        if verb == "check":
            q.add_argument("--all", action="store_true", help="every exercise end to end: start, check, reset")
            q.add_argument("--solve", action="store_true", help="with --all: apply each solution before checking")
            q.add_argument("--only", help="with --all: these exercises (comma-separated numbers)")
        q.set_defaults(fn=cmd_workshop)
    for verb, what in (("drain", "withdraw a MUX's VIPs gracefully (its flows move to the other MUXes)"),
                       ("undrain", "let a drained MUX announce its VIPs again")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("mux")
        _lab_args(p)
        p.set_defaults(fn=cmd_drain)
    from .capture import DEFAULT_FILTER
    p = sub.add_parser("capture", help="capture on several nodes at once into one time-ordered pcapng (interfaces named NODE:IF)")
    p.add_argument("points", nargs="+", metavar="NODE[:IF]", help="where to capture (no IF: every lab interface of the node)")
    p.add_argument("-w", "--write", required=True, metavar="FILE.pcapng")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10; Ctrl-C stops early)")
    p.add_argument("--filter", default=DEFAULT_FILTER, help=f"tcpdump filter (default: {DEFAULT_FILTER!r})")
    _lab_args(p)
    p.set_defaults(fn=cmd_capture)
    p = sub.add_parser("trace", help="send one flow and show its walk hop by hop (captures and nftrace on every node)")
    p.add_argument("--from", dest="source", default="client1", help="client (or VM) node (default client1)")
    p.add_argument("--to", required=True, help="VIP: load balancer name or frontend address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--svg", metavar="FILE", help="also draw the topology with the request and reply paths")
    _lab_args(p)
    p.set_defaults(fn=cmd_trace)
    p = sub.add_parser("watch", help="live dashboard: BGP/BFD per MUX, next hops, packets/s, probes, managers, events")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="two samples (for the rates), print, exit (no full screen)")
    _lab_args(p)
    p.set_defaults(fn=cmd_watch)
    p = sub.add_parser("graph", help="the lab as a picture (SVG, nodes grouped by role), or containerlab's mermaid")
    p.add_argument("-o", "--output", default="muxlab-lab.svg", help="file to write (default muxlab-lab.svg)")
    p.add_argument("--mermaid", action="store_true", help="write containerlab's mermaid graph instead of the SVG")
    _lab_args(p)
    p.set_defaults(fn=cmd_graph)
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
