"""The tenant's commands: load balancers through the managers' API (`muxlab apply`, `lb`,
`pool`, `backend`, `swap`, `health`, `instance`). Each is a few API calls; the managers validate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..datapath.conventions import BUSY_FILE
from ..errors import MuxlabError
from ..lb.azure import LoadBalancer, canonical, load_document
from ..lb.check import allocate_public_ips
from ..lb.csdef import load_csdef
from ..lb.diff import diff
from .lab import LabRef, docker_exec, frontends

def held(ref: LabRef) -> dict[str, LoadBalancer]:
    return {n: LoadBalancer.model_validate(lb) for n, lb in ref.api().load_balancers().items()}


def load_file(path: str, roles: str | None, fabric) -> dict[str, LoadBalancer]:
    """The load balancers a file describes: Azure's shape (YAML, JSON, ARM), or a classic cloud
    service's ServiceDefinition (.csdef) with its roles file (`--roles`; default: beside it,
    NAME.roles.yml). Either is refused whole, naming the field, before anybody is asked."""
    if Path(path).suffix.lower() != ".csdef":
        if roles is not None:
            raise MuxlabError(f"--roles {roles}: only a ServiceDefinition (.csdef) takes a roles file")
        return load_document(path)
    roles = roles or str(Path(path).with_suffix(".roles.yml"))
    if not Path(roles).exists():
        raise MuxlabError(f"--roles {roles}: no such file (a ServiceDefinition needs its roles: the VIP and each "
                          "role's VMs, see examples/cloudservice/)")
    name, lb = load_csdef(path, roles, fabric)
    return {name: lb}


def apply(ref: LabRef, path: str, yes: bool, prune: bool, wait: bool = True, timeout: float = 120.0,
          roles: str | None = None) -> str:
    new = load_file(path, roles, ref.lab)  # refuses a malformed file before talking to anybody
    # a bulk write (thousands of load balancers) is validated whole before it is stored:
    # give the manager time to answer, and the agents time to apply it
    api = ref.api(timeout=timeout)
    old = held(ref)
    # compare with the addresses the managers will keep for public IPs given only by id
    changes = diff(old, allocate_public_ips(new, ref.lab, old), prune)
    print(f"muxlab apply {path} -> lab {ref.name!r}:")
    print("\n".join(f"  {line}" for line in changes) if changes else "  no change")
    if not changes:
        return "nothing to apply"
    if not yes:
        if not sys.stdin.isatty():
            raise MuxlabError("not applied: confirm with --yes when not at a terminal")
        if input("apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
            return "not applied"
    body = {"loadBalancers": {n: canonical(lb) for n, lb in new.items()}, "prune": prune}
    result = api.post("/applyLoadBalancers", body)
    lines = [f"applied in one transaction (configuration {result['nb_cfg']})"]
    if wait:
        waited = api.wait_synced(ref.lab.agents, nb_cfg=result["nb_cfg"], timeout=timeout)
        lines.append(f"every MUX and host agent has it ({waited:.2f} s)")
    return "\n".join(lines)


def lb_list(ref: LabRef) -> str:
    lbs = ref.api().load_balancers()
    rows = [f"{'LOAD BALANCER':<16} {'FRONTENDS':<32} RULES"]
    for name, lb in sorted(lbs.items()):
        p = lb["properties"]
        rules = ", ".join(f"{r['name']} {r['properties']['protocol']}/{r['properties']['frontendPort']}"
                          for r in p.get("loadBalancingRules", []))
        rows.append(f"{name:<16} {', '.join(frontends({name: lb})):<32} {rules or '-'}")
    return "\n".join(rows)


def lb_show(ref: LabRef, name: str) -> str:
    return json.dumps(ref.api().get(f"/loadBalancers/{name}"), indent=2)


def lb_delete(ref: LabRef, name: str) -> str:
    ref.api().delete(f"/loadBalancers/{name}")
    return f"deleted load balancer {name}"


def _vm_ip(ref: LabRef, vm: str) -> tuple[str, str]:
    for v in ref.lab.vms:
        if vm in (v.name, str(v.ip)):
            return v.name, str(v.ip)
    raise MuxlabError(f"{vm!r} is no VM of the lab (VMs: {', '.join(f'{v.name} {v.ip}' for v in ref.lab.vms)})")


def _pool(ref: LabRef, lb: str, pool: str) -> dict:
    body = ref.api().get(f"/loadBalancers/{lb}")
    for p in body["properties"].get("backendAddressPools", []):
        if p["name"] == pool:
            return p
    names = [p["name"] for p in body["properties"].get("backendAddressPools", [])]
    raise MuxlabError(f"load balancer {lb} has no backend pool {pool!r} (pools: {', '.join(names) or 'none'})")


def _put_pool(ref: LabRef, lb: str, pool: dict) -> None:
    body = {"properties": {"loadBalancerBackendAddresses": pool["properties"].get("loadBalancerBackendAddresses", [])}}
    ref.api().put(f"/loadBalancers/{lb}/backendAddressPools/{pool['name']}", body)


def pool_change(ref: LabRef, lb: str, pool: str, vms: list[str], add: bool) -> str:
    """Scale out (add) or in (remove) by VM name or address."""
    p = _pool(ref, lb, pool)
    members = p["properties"].setdefault("loadBalancerBackendAddresses", [])
    for vm in vms:
        name, ip = _vm_ip(ref, vm)
        present = [m for m in members if m["properties"]["ipAddress"] == ip]
        if add and not present:
            members.append({"name": name, "properties": {"ipAddress": ip}})
        elif not add:
            if not present:
                raise MuxlabError(f"{name} ({ip}) is not in {lb}/{pool}")
            members.remove(present[0])
    _put_pool(ref, lb, p)
    return f"{lb}/{pool}: {', '.join(m['name'] for m in members) or '(empty)'}"


def admin_state(ref: LabRef, lb: str, vm: str, state: str, pool: str | None) -> str:
    """`backend drain`: adminState Down (no new flows; established ones go on); `undrain`: None."""
    name, ip = _vm_ip(ref, vm)
    body = ref.api().get(f"/loadBalancers/{lb}")
    pools = [p for p in body["properties"].get("backendAddressPools", []) if pool in (None, p["name"])
             and any(m["properties"]["ipAddress"] == ip for m in p["properties"].get("loadBalancerBackendAddresses", []))]
    if not pools:
        raise MuxlabError(f"{name} ({ip}) is in no backend pool of {lb}" + (f" named {pool}" if pool else ""))
    for p in pools:
        for m in p["properties"]["loadBalancerBackendAddresses"]:
            if m["properties"]["ipAddress"] == ip:
                m["properties"]["adminState"] = state
        _put_pool(ref, lb, p)
    return f"{name} in {lb} ({', '.join(p['name'] for p in pools)}): adminState {state}"


def swap(ref: LabRef, a: str, b: str) -> str:
    out = ref.api().post("/swapFrontends", {"loadBalancers": [a, b]})
    return "\n".join(f"{n}: now {', '.join(addrs)}" for n, addrs in out.items())


def health(ref: LabRef, lb: str, rule: str) -> dict:
    return ref.api().post(f"/loadBalancers/{lb}/loadBalancingRules/{rule}/health")


def format_health(h: dict) -> str:
    lines = [f"rule {h['loadBalancingRule']}: {h['up']} up, {h['down']} down",
             f"{'BACKEND':<8} {'ADDRESS':<12} {'STATE':<6} {'REASON (Azure)':<40} WHY"]
    lines += [f"{b['name']:<8} {b['ipAddress']:<12} {b['state']:<6} {b['reason']:<40} {b['detail']}"
              for b in h["loadBalancerBackendAddresses"]]
    return "\n".join(lines)



def snat(ref: LabRef, lb: str) -> dict:
    return ref.api().get(f"/loadBalancers/{lb}/outboundSnat")


def format_snat(s: dict) -> str:
    lines = [f"outbound SNAT of {s['loadBalancer']}:",
             f"  {'backend':8} {'ip':12} {'host':7} {'frontend':14} {'ranges':14} {'ports':>6} {'in use':>7} {'failures':>8}"]
    for b in s["value"]:
        ranges = ",".join(f"{lo}-{hi}" for lo, hi in b["ranges"])
        lines.append(f"  {b['name']:8} {b['ipAddress']:12} {b['host']:7} {b['frontendIPAddress']:14} {ranges:14} "
                     f"{b['allocatedPorts']:>6} {b['portsInUse'] if b['portsInUse'] is not None else '-':>7} "
                     f"{b['failures'] if b['failures'] is not None else '-':>8}")
    if not s["value"]:
        lines.append("  (no backend of this load balancer has its outbound identity here)")
    return "\n".join(lines)


def nat(ref: LabRef, lb: str, rule: str) -> dict:
    return ref.api().get(f"/loadBalancers/{lb}/inboundNatRules/{rule}/portMappings")


def format_nat(m: dict) -> str:
    lines = [f"  {'frontend port':>13}  {'backend':8} {'ip':12} {'backend port':>12}  protocol"]
    for x in m["value"]:
        lines.append(f"  {x['frontendPort']:>13}  {x['backendAddress']['name']:8} {x['backendAddress']['ipAddress']:12} "
                     f"{x['backendPort']:>12}  {x['protocol']}")
    return "\n".join(lines)


def instance_status(ref: LabRef, vm: str, busy: bool) -> str:
    """A classic role instance's own status (seed 003's StatusCheck event): busy takes it out of
    rotation for every endpoint without a probe of its own; the guest agent tells the host at
    its next heartbeat (muxlab.node.vmservice)."""
    if ref.lab.role_of(vm) != "vm":
        raise MuxlabError(f"{vm} is a {ref.lab.role_of(vm)}: only a VM's guest reports a status")
    docker_exec(ref, vm, ["sh", "-c", f"touch {BUSY_FILE}" if busy else f"rm -f {BUSY_FILE}"])
    if busy:
        return (f"{vm} reports itself Busy (NotReady) to its host's WireServer: it leaves rotation for endpoints the "
                f"guest agent probe decides.\nundo: muxlab instance {vm} ready")
    return f"{vm} reports itself Ready again"
