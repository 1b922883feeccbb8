"""The northbound API: Azure Load Balancer's REST paths without the subscription prefix.

    GET    /loadBalancers                                  list (Azure's {"value": [...]})
    PUT    /loadBalancers/{lb}                             create or replace (201 / 200)
    GET    /loadBalancers/{lb}
    DELETE /loadBalancers/{lb}
    PUT    /loadBalancers/{lb}/backendAddressPools/{pool}  scale out / in, adminState
    DELETE /loadBalancers/{lb}/backendAddressPools/{pool}
    PUT    /loadBalancers/{lb}/inboundNatRules/{rule}
    DELETE /loadBalancers/{lb}/inboundNatRules/{rule}
    POST   /loadBalancers/{lb}/loadBalancingRules/{rule}/health   per backend: Up/Down and why
    POST   /swapFrontends                                  VIP swap between two load balancers
    POST   /applyLoadBalancers                             several at once, one transaction (`muxlab apply`)
    GET    /loadBalancers/{lb}/inboundNatRules/{rule}/portMappings   who has which frontend port
    GET    /loadBalancers/{lb}/outboundSnat                per backend: VIP, port ranges, in use, failures
    PUT    /muxes/{mux}                                    {"drained": true|false}
    PUT    /mtu                                            {"remedies": [...]}: what MUXes do about too-big packets
    GET    /status, /cluster, /sync                        operators and tests

Every write is validated whole and is one OVSDB transaction; a rejected request answers 4xx
with Azure's error shape, each detail naming the field path and value, and changes nothing.
Served by every manager (uvicorn, port 8080 on its management address).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from muxlab.model.compiled import compile_services
from muxlab.model.conventions import API_PORT
from muxlab.model.fabric import ModelError, load_lab
from muxlab.model.service import BackendAddressPool, InboundNatRule, LoadBalancer, canonical, load_document
from muxlab.node.desired import STALE_AFTER
from muxlab.node.ovsdb import DB_NAME, manager_addresses, managers_remote
from muxlab.node.runtime import FABRIC_PATH

from .cluster import CTL
from .store import Store, Unavailable

SEED_FILE = os.environ.get("MUXLAB_SEED", "/etc/muxlab/loadbalancers.yml")

app = FastAPI(title="muxlab SLB manager", version="1.0",
              description="Northbound API of muxlab's software load balancer manager, in Azure Load Balancer's shape. "
                          "State lives in the managers' replicated OVSDB (Raft).")
_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        fabric = load_lab(FABRIC_PATH)
        _store = Store(fabric, managers_remote(len(fabric.managers)))
    return _store


# ---------------------------------------------------------------- errors, Azure's shape


def error(status: int, code: str, message: str, details: list[tuple[str, Any, str]] = ()) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "code": code, "message": message,
        "details": [{"target": path, "value": value if isinstance(value, (str, int, float, bool, type(None))) else str(value),
                     "message": msg} for path, value, msg in details]}})


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError):
    details = []
    for e in exc.errors():
        loc = [p for p in e["loc"] if p != "body"]
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        details.append((path or "(body)", e.get("input"), msg))
    return error(400, "InvalidRequestFormat", "the request body is not a valid load balancer resource", details)


@app.exception_handler(ModelError)
async def _model_error(request: Request, exc: ModelError):
    return error(400, "InvalidLoadBalancer", f"invalid {exc.what}: nothing was changed", exc.problems)


@app.exception_handler(Unavailable)
async def _unavailable(request: Request, exc: Unavailable):
    return error(503, "ManagerUnavailable", str(exc))


def not_found(kind: str, name: str, known) -> JSONResponse:
    return error(404, "NotFound", f"no {kind} named {name!r} ({', '.join(sorted(known)) or 'none'})")


class NoSuchLoadBalancer(Exception):
    def __init__(self, name: str, held):
        self.name, self.held = name, held


@app.exception_handler(NoSuchLoadBalancer)
async def _no_such_lb(request: Request, exc: NoSuchLoadBalancer):
    return not_found("load balancer", exc.name, exc.held)


def snapshot_holding(name: str) -> dict:
    """The store's snapshot, when it holds load balancer `name`; else the request ends in a
    404 naming the ones it holds."""
    snap = store().snapshot()
    if name not in snap["load_balancers"]:
        raise NoSuchLoadBalancer(name, snap["load_balancers"])
    return snap


class PoolBody(BackendAddressPool):
    name: str | None = None   # from the URL


class NatRuleBody(InboundNatRule):
    name: str | None = None   # from the URL


def resource(name: str, lb: LoadBalancer) -> dict:
    body = canonical(lb)
    body.update(name=name, id=f"/loadBalancers/{name}", type="Microsoft.Network/loadBalancers")
    return body


# ---------------------------------------------------------------- load balancers


@app.get("/loadBalancers")
def list_lbs():
    held = store().snapshot()["load_balancers"]
    return {"value": [resource(n, lb) for n, lb in sorted(held.items())]}


@app.get("/loadBalancers/{name}")
def get_lb(name: str):
    return resource(name, snapshot_holding(name)["load_balancers"][name])


@app.put("/loadBalancers/{name}", status_code=200)
def put_lb(name: str, lb: LoadBalancer):
    created = {}

    def edit(held):
        created["new"] = name not in held
        return {name: lb}
    cfg, stored = store().change(edit)
    return JSONResponse(status_code=201 if created["new"] else 200, content=resource(name, stored[name]),
                        headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.delete("/loadBalancers/{name}")
def delete_lb(name: str):
    snapshot_holding(name)
    cfg, _ = store().change(lambda held: {name: None})
    return JSONResponse(status_code=200, content={"deleted": name}, headers={"X-Muxlab-Nb-Cfg": str(cfg)})


def _child(name: str, kind: str, child_name: str, body: Any | None):
    """PUT (body) or DELETE (None) one child of a load balancer: the parent is rewritten
    whole and validated whole."""
    missing = {}

    def edit(held):
        if name not in held:
            missing["lb"] = sorted(held)
            return {}
        lb = held[name].model_copy(deep=True)
        children = getattr(lb.properties, kind)
        idx = next((i for i, c in enumerate(children) if c.name == child_name), None)
        if body is None:
            if idx is None:
                missing["child"] = [c.name for c in children]
                return {}
            children.pop(idx)
        else:
            item = (BackendAddressPool if kind == "backendAddressPools" else InboundNatRule).model_validate(
                {**body.model_dump(exclude_none=True), "name": child_name})
            if idx is None:
                children.append(item)
            else:
                children[idx] = item
        return {name: lb}
    cfg, stored = store().change(edit)
    if "lb" in missing:
        return not_found("load balancer", name, missing["lb"])
    if "child" in missing:
        return not_found(kind[:-1], child_name, missing["child"])
    if body is None:
        return JSONResponse({"deleted": f"{name}/{kind}/{child_name}"}, headers={"X-Muxlab-Nb-Cfg": str(cfg)})
    out = next(c for c in getattr(stored[name].properties, kind) if c.name == child_name)
    content = json.loads(out.model_dump_json(exclude_none=True))
    content["id"] = f"/loadBalancers/{name}/{kind}/{child_name}"
    return JSONResponse(content, headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.put("/loadBalancers/{name}/backendAddressPools/{pool}")
def put_pool(name: str, pool: str, body: PoolBody):
    return _child(name, "backendAddressPools", pool, body)


@app.delete("/loadBalancers/{name}/backendAddressPools/{pool}")
def delete_pool(name: str, pool: str):
    return _child(name, "backendAddressPools", pool, None)


@app.put("/loadBalancers/{name}/inboundNatRules/{rule}")
def put_nat_rule(name: str, rule: str, body: NatRuleBody):
    return _child(name, "inboundNatRules", rule, body)


@app.delete("/loadBalancers/{name}/inboundNatRules/{rule}")
def delete_nat_rule(name: str, rule: str):
    return _child(name, "inboundNatRules", rule, None)


class ApplyRequest(BaseModel):
    loadBalancers: dict[str, LoadBalancer]
    prune: bool = Field(False, description="also delete the load balancers not named here")


@app.post("/applyLoadBalancers")
def apply_lbs(req: ApplyRequest):
    """Create or replace every load balancer given (and with prune, delete the others), all
    in one transaction: `muxlab apply FILE`."""
    def edit(held):
        out: dict = dict(req.loadBalancers)
        if req.prune:
            out.update({n: None for n in held if n not in req.loadBalancers})
        return out
    cfg, stored = store().change(edit)
    return JSONResponse({"applied": sorted(stored), "nb_cfg": cfg}, headers={"X-Muxlab-Nb-Cfg": str(cfg)})


# ---------------------------------------------------------------- health, swap, drain


@app.post("/loadBalancers/{name}/loadBalancingRules/{rule}/health")
def rule_health(name: str, rule: str):
    snap = snapshot_holding(name)
    held = snap["load_balancers"]
    fabric = store().fabric
    svc = compile_services({name: held[name]}, fabric)
    rules = [r for r in svc.rules if r.name in (rule, f"{rule}-tcp", f"{rule}-udp")]
    if not rules:
        return not_found("load-balancing rule", rule, [r.name for r in held[name].properties.loadBalancingRules])
    probes = {(h["vm"], h["probe"]): h for h in snap["health"]}
    alive = {h["name"] for h in snap["hosts"] if h["alive"]}
    out = []
    r = rules[0]
    for b in r.backends:
        host = fabric.vm(b.vm).host
        probe = probes.get((b.vm, r.probe.key)) if r.probe else None
        since = None   # when the probe's verdict last changed, by the host's clock (when a probe decided)
        if b.admin == "Down":
            state, why = "Down", "adminState is Down"
        elif host not in alive:
            state, why = "Down", f"host {host} is not reporting (agent silent for more than {STALE_AFTER:.0f} s)"
        elif b.admin == "Up":
            state, why = "Up", "adminState is Up (probes ignored)"
        elif r.probe is None:
            state, why = "Up", "no probe on this rule"
        elif probe is None:
            state, why = "Up", f"probe {r.probe.key} not reported yet"
        elif probe["up"]:
            state, why, since = "Up", f"probe {r.probe.key} succeeds", probe["since"]
        else:
            state, why, since = "Down", f"probe {r.probe.key} fails: {probe['reason']}", probe["since"]
        out.append({"name": b.vm, "ipAddress": b.ip, "host": host, "state": state, "reason": why, "since": since})
    return {"loadBalancingRule": rule, "up": sum(o["state"] == "Up" for o in out),
            "down": sum(o["state"] == "Down" for o in out), "loadBalancerBackendAddresses": out}


class SwapRequest(BaseModel):
    loadBalancers: list[str] = Field(min_length=2, max_length=2, description="the two load balancers whose frontends swap")


@app.post("/swapFrontends")
def swap_frontends(req: SwapRequest):
    """VIP swap (seed 003): the two load balancers exchange their frontend addresses, in
    order, in one transaction. New connections to a VIP reach the other pool; established
    ones stay where they are (the MUXes pin them by conntrack)."""
    a, b = req.loadBalancers
    missing = {}

    def edit(held):
        for n in (a, b):
            if n not in held:
                missing["lb"] = (n, sorted(held))
                return {}
        la, lb = held[a].model_copy(deep=True), held[b].model_copy(deep=True)
        fa, fb = la.properties.frontendIPConfigurations, lb.properties.frontendIPConfigurations
        if len(fa) != len(fb):
            raise ModelError([("loadBalancers", req.loadBalancers,
                               f"{a} has {len(fa)} frontends and {b} has {len(fb)}: a swap pairs them one to one")],
                             "swap")
        for x, y in zip(fa, fb):
            x.properties, y.properties = y.properties, x.properties
        return {a: la, b: lb}
    cfg, stored = store().change(edit)
    if "lb" in missing:
        return not_found("load balancer", *missing["lb"])
    return JSONResponse({n: [str(fe.address) for fe in stored[n].properties.frontendIPConfigurations] for n in (a, b)},
                        headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.get("/loadBalancers/{name}/inboundNatRules/{rule}/portMappings")
def port_mappings(name: str, rule: str):
    """Azure's inbound NAT rule port mappings: which backend has which frontend port."""
    snap = snapshot_holding(name)
    held = snap["load_balancers"]
    rules = {n.name: n.properties for n in held[name].properties.inboundNatRules}
    if rule not in rules:
        return not_found("inbound NAT rule", rule, sorted(rules))
    n = rules[rule]
    fabric = store().fabric
    mapping = snap["allocations"].get(name, {}).get("nat", {}).get(rule, {})
    return {"value": [{"inboundNatRuleName": rule, "protocol": n.protocol, "frontendPort": port,
                       "backendPort": port if n.enableFloatingIP else n.backendPort,
                       "backendAddress": {"name": vm, "ipAddress": str(fabric.vm(vm).ip)}}
                      for vm, port in sorted(mapping.items(), key=lambda kv: kv[1])]}


@app.get("/loadBalancers/{name}/outboundSnat")
def outbound_snat(name: str):
    """Outbound SNAT of a load balancer's backends (a muxlab view; Azure shows it as metrics):
    each backend's frontend address and port range, the ports its connections hold and the
    connections refused because the range was full."""
    snap = snapshot_holding(name)
    held = snap["load_balancers"]
    fabric = store().fabric
    svc = compile_services(held, fabric, snap["allocations"])
    usage = {vm: u for h in snap["hosts"] for vm, u in h["snat_usage"].items()}
    out = []
    for x in sorted((x for x in svc.snat if x.lb == name), key=lambda x: (str(x.vip), x.lo)):
        u = usage.get(x.vm, {})
        out.append({"name": x.vm, "ipAddress": x.ip, "host": fabric.vm(x.vm).host, "rule": x.rule,
                    "frontendIPAddress": str(x.vip), "protocols": list(x.protocols), "ranges": [[x.lo, x.hi]],
                    "allocatedPorts": x.ports, "portsInUse": u.get("in_use"), "failures": u.get("failures")})
    return {"loadBalancer": name, "value": out}


class MtuRemedies(BaseModel):
    remedies: list[Literal["mss-clamp", "icmp"]] = Field(
        description="mss-clamp: SYNs (MUX) and SYN-ACKs (host) promise no more than the overlay carries; "
                    "icmp: MUXes send ICMP fragmentation-needed to the client. [] reproduces the black hole.")


@app.put("/mtu")
def put_mtu(body: MtuRemedies):
    store().set_mtu_remedies(body.remedies)
    return {"remedies": sorted(set(body.remedies))}


class MuxState(BaseModel):
    drained: bool


@app.put("/muxes/{mux}")
def put_mux(mux: str, body: MuxState):
    fabric = store().fabric
    if mux not in {m.name for m in fabric.muxes}:
        return not_found("MUX", mux, [m.name for m in fabric.muxes])
    store().set_drained(mux, body.drained)
    return {"name": mux, "drained": body.drained}


# ---------------------------------------------------------------- operators


def cluster_status() -> dict:
    """This manager's member of the Raft cluster, from ovsdb-server itself."""
    proc = subprocess.run(["ovs-appctl", "-t", str(CTL), "cluster/status", DB_NAME], capture_output=True, text=True,
                          timeout=5)
    out = {"manager": socket.gethostname(), "role": None, "leader": None, "term": None, "status": None}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "Role":
            out["role"] = value
        elif key == "Leader":
            out["leader"] = value
        elif key == "Term":
            out["term"] = int(value) if value.isdigit() else value
        elif key == "Status":
            out["status"] = value
    if proc.returncode != 0:
        out["status"] = (proc.stderr or proc.stdout).strip()[-200:]
    return out


@app.get("/cluster")
def cluster():
    return cluster_status()


@app.get("/status")
def status():
    snap = store().snapshot()
    snap["load_balancers"] = sorted(snap["load_balancers"])
    snap["manager"] = cluster_status()
    snap["now"] = time.time()
    return snap


@app.get("/sync")
def sync():
    """nb_cfg of the configuration and what each agent has applied (like `ovn-nbctl --wait`)."""
    snap = store().snapshot()
    agents = {m["name"]: m["nb_cfg"] for m in snap["muxes"]} | {h["name"]: h["nb_cfg"] for h in snap["hosts"]}
    return {"nb_cfg": snap["nb_cfg"], "agents": agents}


def seed_in_background() -> None:
    """manager1 stores the lab's initial load balancers the first time the cluster runs."""
    def run():
        try:
            lbs = load_document(SEED_FILE)
            if store().seed(lbs):
                print(f"[manager] stored the initial load balancers from {SEED_FILE}: {', '.join(sorted(lbs))}", flush=True)
        except Exception as exc:  # the API still serves; `muxlab apply` can store them
            print(f"[manager] could not store the initial load balancers: {exc}", flush=True)
    threading.Thread(target=run, daemon=True).start()


def main() -> None:
    import uvicorn
    fabric = load_lab(FABRIC_PATH)
    me = socket.gethostname()
    addr = manager_addresses(len(fabric.managers))[fabric.managers.index(me)]
    store()
    if me == fabric.managers[0] and os.path.exists(SEED_FILE):
        seed_in_background()
    uvicorn.run(app, host=addr, port=API_PORT, log_level="warning")


if __name__ == "__main__":
    main()
