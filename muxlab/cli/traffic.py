"""`muxlab traffic`: run the flow generator in a client container and summarise per DIP."""
from __future__ import annotations

import ipaddress
import json

from ..errors import MuxlabError
from ..lb.azure import LoadBalancer
from ..lb.check import protocols
from .lab import LabRef, docker_exec, vip_address


def run_flows(ref: LabRef, source: str, vip: str, port: int, flows: int, udp: bool = False,
              sport: int = 0, timeout: float = 2.0, keep_results: bool = False) -> dict:
    if ref.lab.role_of(source) not in ("client", "vm"):
        raise MuxlabError(f"--from {source}: traffic starts at a client (or a VM), not a {ref.lab.role_of(source)}")
    proto = "udp" if udp else "tcp"
    try:
        lbs = ref.api(timeout=5).load_balancers()
    except MuxlabError:
        if not is_address(vip):
            raise MuxlabError(f"--vip {vip}: no manager answers to say which address that is; give the address") from None
        lbs = None  # the data path works without managers: send to the address as given
    if lbs is None:
        lb, address, rules = vip, vip, None
    else:
        lb, address = vip_address(lbs, vip)  # names the known VIPs when unknown
        rules = served_ports(LoadBalancer.model_validate(lbs[lb]), address)
    if rules is not None and not any(r == (proto, port) for r in rules):
        have = ", ".join(f"{p}/{n}" for p, n in rules[:20]) or "none"
        raise MuxlabError(f"--port {port}: VIP {lb} ({address}) has no {proto} rule on that port (rules: {have})")
    argv = ["python", "-m", "muxlab.node.flows", "--vip", address, "--port", str(port), "--flows", str(flows),
            "--timeout", str(timeout)] + (["--udp"] if udp else []) + (["--sport", str(sport)] if sport else [])
    proc = docker_exec(ref, source, argv, timeout=60 + flows * timeout)
    result = json.loads(proc.stdout)
    result["vip_name"] = lb
    result["from"] = source
    dips = {vm.name: str(vm.ip) for vm in ref.lab.vms}
    result["dips"] = {name: dips.get(name, "?") for name in result["by_dip"]}
    if not keep_results:
        result.pop("results")
    return result


def served_ports(lb: LoadBalancer, address: str) -> list[tuple[str, int]]:
    """(protocol, port) the address answers on: its load-balancing rules and inbound NAT rules."""
    fes = {fe.name for fe in lb.properties.frontendIPConfigurations if str(fe.address) == address}
    out = [(p, r.properties.frontendPort) for r in lb.properties.loadBalancingRules
           if r.properties.frontendIPConfiguration.name in fes for p in protocols(r.properties.protocol)]
    out += [(p, port) for n in lb.properties.inboundNatRules if n.properties.frontendIPConfiguration.name in fes
            for p in protocols(n.properties.protocol) for port in n.properties.frontend_ports]
    return out


def is_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def format_result(r: dict) -> str:
    lines = [f"{r['flows']} {r['protocol'].upper()} flows from {r['from']} to {r['vip_name']} {r['vip']}:{r['port']}"
             f" in {r['seconds']} s ({r['flows_per_second']} flows/s)", "",
             f"{'DIP':<12} {'VM':<8} {'FLOWS':>6} {'SHARE':>7}"]
    total = max(1, r["served"])
    for name, n in r["by_dip"].items():
        lines.append(f"{r['dips'][name]:<12} {name:<8} {n:>6} {100 * n / total:>6.1f}%")
    lines.append("")
    lines.append(f"served {r['served']}, failed {r['failures']}")
    for err, n in r["errors"]:
        lines.append(f"  {n} x {err}")
    return "\n".join(lines)
