"""The `muxlab` command."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import MuxlabError
from .model import ModelError


def _lab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", "-t", help="containerlab topology (default: containerlab/muxlab.clab.yml); its lab.yml is the model")
    p.add_argument("--name", help="lab name (default: the model's name); containers are clab-NAME-NODE")


def cmd_bootstrap(a) -> None:
    from . import bootstrap
    bootstrap.run()


def cmd_images(a) -> None:
    from . import images
    from .lab import require_tools
    require_tools()
    images.build_all(no_cache=a.no_cache)


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
    from . import lab
    ref = lab.resolve(a.topology, a.name)
    new = lab.apply_model(ref, a.model)
    print(f"applied {a.model} to lab {ref.name!r}: {len(new.vips)} VIPs, "
          f"{sum(len(v.rules) for v in new.vips)} rules; MUXes and host agents reprogram within a second")


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
    p = sub.add_parser("render", help="re-render the topology and configs from lab.yml")
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
    p = sub.add_parser("apply", help="validate a changed lab model and apply its VIPs/rules/pools live")
    p.add_argument("model", help="lab model YAML (same nodes and addressing as the running lab)")
    _lab_args(p)
    p.set_defaults(fn=cmd_apply)
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
