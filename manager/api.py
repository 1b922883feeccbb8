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
    PUT    /cloudServices/{name}                           a classic ServiceDefinition (.csdef XML) and its roles:
                                                           stored as the load balancer {name} (seed 003)
    POST   /swapFrontends                                  VIP swap between two load balancers
    POST   /applyLoadBalancers                             several at once, one transaction (`muxlab apply`)
    GET    /loadBalancers/{lb}/inboundNatRules/{rule}/portMappings   who has which frontend port
    GET    /loadBalancers/{lb}/outboundSnat                per backend: VIP, port ranges, in use, failures
    PUT    /muxes/{mux}                                    {"drained": true|false}
    PUT    /mtu                                            {"remedies": [...]}: what MUXes do about too-big packets
    GET    /status, /cluster, /sync                        operators and tests

Every write is validated whole and is one OVSDB transaction; a rejected request answers 4xx
with Azure's error shape, each detail naming the field path and value, and changes nothing.
Served by every manager over HTTPS (uvicorn, port 8080 on its management address; its
certificate names the manager and is signed by the lab's CA: muxlab.datapath.conventions PKI_*).

Input rules, checked before any body is parsed or any state is read:
- Authentication: every path but the OpenAPI document (/openapi.json, /docs, /redoc) needs
  `Authorization: Bearer <token>`, the token in PKI_DIR/api-token. Without the header: 401
  AuthenticationFailed; with another scheme or a wrong token: 401 InvalidAuthenticationToken
  (as Azure Resource Manager answers; never 403, which Azure keeps for a valid identity that
  lacks permission). Both carry `WWW-Authenticate: Bearer`.
- Body size: at most 1 MiB (MAX_BODY), 32 MiB for /applyLoadBalancers (MAX_APPLY_BODY: about
  25,000 load balancers in one transaction); larger: 413 RequestEntityTooLarge naming the limit.
- JSON bodies: a key given twice in one object is 400 InvalidRequestFormat naming the object's
  path and the key (json would silently keep the last one).
- Names: every resource name, in the URL and in the body, follows Azure's rule: 1-80
  characters, letters, digits, '_', '.', '-', starting with a letter or digit and ending with
  a letter, digit or '_'. Another name is 400 (InvalidResourceName for the URL's) naming the
  parameter or field and the value.

A Load_Balancer row written around the API that the API would refuse (muxlab.lb.rows) is
skipped by every reader and listed in GET /status `invalid` [{name, reason}]; GET of it
answers 409 StoredLoadBalancerInvalid with the reason, DELETE removes it, PUT replaces it.
"""
from __future__ import annotations

import hmac
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from muxlab.datapath.conventions import API_PORT, API_TOKEN, NODE_CERT, NODE_KEY, PKI_DIR, SEED_FILE
from muxlab.fabric.lab import ModelError, load_lab
from muxlab.lb.csdef import parse_csdef
from muxlab.lb.azure import (AZURE_NAME, NAME_RULE, BackendAddressPool, InboundNatRule, LoadBalancer, Name,
                                  canonical, error_message, is_azure_name, json_duplicates,
                                  json_loads_pairs, load_document, loc_path)
from muxlab.node.ovsdb import DB_NAME, PKI_DIR_ENV, manager_addresses, managers_remote
from muxlab.node.runtime import FABRIC_PATH

from .cluster import CTL
from .store import Store, Unavailable

SEED_PATH = os.environ.get("MUXLAB_SEED", SEED_FILE)
PKI = os.environ.get(PKI_DIR_ENV, PKI_DIR)   # overrides for tests
TOKEN_FILE = os.environ.get("MUXLAB_API_TOKEN_FILE", os.path.join(PKI, API_TOKEN))
MAX_BODY = 1 << 20            # bytes of a request body
MAX_APPLY_BODY = 32 << 20     # of POST /applyLoadBalancers (2000 load balancers: about 2.5 MB)
OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

# documents the bearer scheme in the OpenAPI document; InputGuard enforces it, before a body is read
_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="the lab's API token (lab folder: pki/api-token; `muxlab status --json` shows it)")

app = FastAPI(title="muxlab SLB manager", version="1.0", dependencies=[Depends(_bearer)],
              description="Northbound API of muxlab's software load balancer manager, in Azure Load Balancer's shape. "
                          "State lives in the managers' replicated OVSDB (Raft). Every path but this document needs "
                          "`Authorization: Bearer <token>`. Bodies: at most 1 MiB (/applyLoadBalancers: 32 MiB).")
_store: Store | None = None
_token: bytes | None = None

LbName = Annotated[str, Path(pattern=AZURE_NAME, description="the load balancer's name (Azure resource name)")]
ChildName = Annotated[str, Path(pattern=AZURE_NAME, description="the child resource's name (Azure resource name)")]


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


def bad_url_name(details: list[tuple[str, Any, str]]) -> JSONResponse:
    return error(400, "InvalidResourceName", "a name in the URL is not a valid resource name", details)


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError):
    details, in_url = [], True
    for e in exc.errors():
        loc = tuple(e["loc"])
        if loc[:1] == ("path",):   # a URL parameter: path.NAME
            path = "path." + ".".join(str(p) for p in loc[1:])
        else:
            in_url = False
            path = loc_path(tuple(p for p in loc if p != "body"))
        details.append((path or "(body)", e.get("input"), error_message(e)))
    if details and in_url:
        return bad_url_name(details)
    return error(400, "InvalidRequestFormat", "the request body is not a valid load balancer resource", details)


# ---------------------------------------------------------------- authentication and input limits


def load_token(path: str = TOKEN_FILE) -> bytes | None:
    """The API's bearer token (its file's text, stripped), or None when there is no file."""
    try:
        token = open(path, "rb").read().strip()
    except OSError:
        return None
    return token or None


def _unauthorized(code: str, message: str, challenge: str = "Bearer") -> JSONResponse:
    resp = error(401, code, message)
    resp.headers["WWW-Authenticate"] = challenge
    return resp


def authenticate(headers: dict[str, str]) -> JSONResponse | None:
    """None when the request carries the API token, else the answer (401 / 503)."""
    global _token
    if _token is None:
        _token = load_token()
    if _token is None:
        return error(503, "ManagerMisconfigured", f"this manager has no API token ({TOKEN_FILE}): it refuses every call")
    value = headers.get("authorization")
    if value is None:
        return _unauthorized("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing: "
                                                     "send 'Authorization: Bearer <token>' (the lab's pki/api-token).",
                             'Bearer realm="muxlab"')
    scheme, _, given = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _unauthorized("InvalidAuthenticationToken", "The 'Authorization' header must be 'Bearer <token>'.",
                             'Bearer realm="muxlab", error="invalid_request"')
    if not hmac.compare_digest(given.strip().encode(), _token):
        return _unauthorized("InvalidAuthenticationToken", "The access token is invalid.",
                             'Bearer realm="muxlab", error="invalid_token"')
    return None


def body_limit(path: str) -> int:
    return MAX_APPLY_BODY if path == "/applyLoadBalancers" else MAX_BODY


def _too_large(limit: int, size: int | None) -> JSONResponse:
    got = f" ({size} bytes)" if size is not None else ""
    return error(413, "RequestEntityTooLarge",
                 f"the request body{got} is larger than this path's limit of {limit} bytes ({limit >> 20} MiB)")


class InputGuard:
    """ASGI middleware, before routing, body parsing and any store call: the bearer token,
    an encoded '/' in a name, the body size limit and duplicate keys in a JSON body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        answer = None if path in OPEN_PATHS else authenticate(headers)
        if answer is None:
            answer = self._encoded_slash(scope)
        limit = body_limit(path)
        if answer is None and headers.get("content-length", "").strip().isdigit() \
                and int(headers["content-length"]) > limit:
            answer = _too_large(limit, int(headers["content-length"]))
        if answer is not None:
            return await answer(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":   # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await _too_large(limit, None)(scope, receive, send)
        body = b"".join(chunks)
        if body:
            try:
                problems = json_duplicates(json_loads_pairs(body))
            except ValueError:   # not JSON: the route's own parsing says so
                problems = []
            if problems:
                return await error(400, "InvalidRequestFormat", "the request body has a key twice in one object",
                                   problems)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    @staticmethod
    def _encoded_slash(scope) -> JSONResponse | None:
        """A name with '/' arrives percent-encoded (%2F) and would route as two segments."""
        raw = (scope.get("raw_path") or b"").decode("latin-1")
        for segment in raw.split("?")[0].split("/"):
            if "%2f" in segment.lower() or "%5c" in segment.lower():
                name = urllib.parse.unquote(segment)
                return bad_url_name([("path", name, NAME_RULE)])
        return None


app.add_middleware(InputGuard)


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
    return lb_missing(exc.name, exc.held)


def stored_invalid(name: str, reason: str) -> JSONResponse:
    return error(409, "StoredLoadBalancerInvalid",
                 f"load balancer {name!r} is stored but invalid (written around the API): DELETE it, or PUT a valid "
                 "one in its place", [(name, name, reason)])


def lb_missing(name: str, known) -> JSONResponse:
    """404 for a load balancer the store does not hold; 409 when it holds it as an invalid row."""
    reason = store().invalid_reason(name)
    return stored_invalid(name, reason) if reason is not None else not_found("load balancer", name, known)


def snapshot_holding(name: str) -> dict:
    """The store's snapshot, when it holds load balancer `name`; else the request ends in a
    404 naming the ones it holds (409 with the reason when its row is invalid)."""
    snap = store().snapshot()
    if name not in snap["load_balancers"]:
        raise NoSuchLoadBalancer(name, snap["load_balancers"])
    return snap


class PoolBody(BackendAddressPool):
    name: Name | None = None   # from the URL


class NatRuleBody(InboundNatRule):
    name: Name | None = None   # from the URL


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
def get_lb(name: LbName):
    return resource(name, snapshot_holding(name)["load_balancers"][name])


@app.put("/loadBalancers/{name}", status_code=200)
def put_lb(name: LbName, lb: LoadBalancer):
    created = {}

    def edit(held):
        created["new"] = name not in held
        return {name: lb}
    cfg, stored = store().change(edit)
    return JSONResponse(status_code=201 if created["new"] else 200, content=resource(name, stored[name]),
                        headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.delete("/loadBalancers/{name}")
def delete_lb(name: Annotated[str, Path(description="the load balancer's name (Azure resource name; "
                                                     "any name of an invalid stored row)")]):
    snap = store().snapshot()
    invalid = {i["name"] for i in snap["invalid"]}
    if name not in invalid:   # an invalid row may have any name: it can always be deleted
        if not is_azure_name(name):
            return bad_url_name([("path.name", name, NAME_RULE)])
        if name not in snap["load_balancers"]:
            return not_found("load balancer", name, snap["load_balancers"])
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
        return lb_missing(name, missing["lb"])
    if "child" in missing:
        return not_found(kind[:-1], child_name, missing["child"])
    if body is None:
        return JSONResponse({"deleted": f"{name}/{kind}/{child_name}"}, headers={"X-Muxlab-Nb-Cfg": str(cfg)})
    out = next(c for c in getattr(stored[name].properties, kind) if c.name == child_name)
    content = json.loads(out.model_dump_json(exclude_none=True))
    content["id"] = f"/loadBalancers/{name}/{kind}/{child_name}"
    return JSONResponse(content, headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.put("/loadBalancers/{name}/backendAddressPools/{pool}")
def put_pool(name: LbName, pool: ChildName, body: PoolBody):
    return _child(name, "backendAddressPools", pool, body)


@app.delete("/loadBalancers/{name}/backendAddressPools/{pool}")
def delete_pool(name: LbName, pool: ChildName):
    return _child(name, "backendAddressPools", pool, None)


@app.put("/loadBalancers/{name}/inboundNatRules/{rule}")
def put_nat_rule(name: LbName, rule: ChildName, body: NatRuleBody):
    return _child(name, "inboundNatRules", rule, body)


@app.delete("/loadBalancers/{name}/inboundNatRules/{rule}")
def delete_nat_rule(name: LbName, rule: ChildName):
    return _child(name, "inboundNatRules", rule, None)


class ApplyRequest(BaseModel):
    loadBalancers: dict[Name, LoadBalancer]
    prune: bool = Field(False, description="also delete the load balancers not named here")


@app.post("/applyLoadBalancers")
def apply_lbs(req: ApplyRequest):
    """Create or replace every load balancer given (and with prune, delete the others), all
    in one transaction: `muxlab apply FILE`."""
    def edit(held):
        out: dict = dict(req.loadBalancers)
        if req.prune:   # invalid rows too: prune leaves exactly what is named here
            out.update({n: None for n in [*held, *(i["name"] for i in store().invalid())] if n not in req.loadBalancers})
        return out
    cfg, stored = store().change(edit)
    return JSONResponse({"applied": sorted(stored), "nb_cfg": cfg}, headers={"X-Muxlab-Nb-Cfg": str(cfg)})


class CloudServiceRequest(BaseModel):
    serviceDefinition: str = Field(description="the ServiceDefinition (.csdef) XML, as written")
    vip: str = Field(description="the service's public VIP")
    roles: dict[str, list[str]] = Field(description="each role's instances: VM names, instance 0, 1, ... in order")


@app.put("/cloudServices/{name}", status_code=200)
def put_cloud_service(name: LbName, req: CloudServiceRequest):
    """A classic cloud service (seed 003): its ServiceDefinition becomes the load balancer
    `name` (muxlab.lb.csdef), with the classic probes, the guest agent probe and internal
    endpoints; any problem is answered 400, naming the element, the attribute and the value."""
    service, lb = parse_csdef(req.serviceDefinition, {"vip": req.vip, "roles": req.roles}, store().fabric)
    if service != name:
        raise ModelError([("serviceDefinition.ServiceDefinition/@name", service,
                           f"must be the URL's name {name!r}: the service is the load balancer")])
    return put_lb(name, lb)


# ---------------------------------------------------------------- health, swap, drain


@app.post("/loadBalancers/{name}/loadBalancingRules/{rule}/health")
def rule_health(name: LbName, rule: ChildName):
    snap = snapshot_holding(name)
    held = snap["load_balancers"]
    fabric = store().fabric
    # the southbound rows, as the agents read them: what the data path does, not a recompile
    rules = [r for r in snap["facts"].rules if r.lb == name and r.name in (rule, f"{rule}-tcp", f"{rule}-udp")]
    if not rules:
        return not_found("load-balancing rule", rule, [r.name for r in held[name].properties.loadBalancingRules])
    # a host reports on its own VMs only: a row naming another host is ignored (as the MUXes do)
    probes = {(h["vm"], h["probe"]): h for h in snap["health"] if fabric.runs(h["host"], h["vm"])}
    alive = {h["name"] for h in snap["hosts"] if h["alive"]}
    out, probed_down = [], []   # probed_down: the backends only their probe keeps out
    r = rules[0]
    timeout = "Down_Probe_HttpNoResponse" if r.probe and r.probe.protocol == "http" else "Down_Probe_TcpProbeTimeout"
    for b in r.backends:
        host = fabric.vm(b.vm).host
        probe = probes.get((b.vm, r.probe.key)) if r.probe else None
        since = None   # when the probe's verdict last changed, by the host's clock (when a probe decided)
        # (state, Azure's reason code, the lab's words)
        if b.admin == "Down":
            state, code, why = "Down", "Down_Admin", "adminState is Down"
        elif host not in alive:   # its probes stopped with its host: to Azure, a probe with no answer
            state, code, why = "Down", timeout, f"host {host} is dead: a MUX stopped hearing its liveness beacons"
        elif b.admin == "Up":
            state, code, why = "Up", "Up_Admin", "adminState is Up (probes ignored)"
        elif r.probe is None:
            state, code, why = "Up", "Up_Probe_Success", "no probe on this rule"
        elif probe is None:
            state, code, why = "Up", "Up_Probe_Success", f"probe {r.probe.key} not reported yet"
        elif probe["up"]:
            state, code, why, since = "Up", probe["code"] or "Up_Probe_Success", f"probe {r.probe.key} succeeds", probe["since"]
        else:
            state, code, why, since = ("Down", probe["code"] or timeout, f"probe {r.probe.key} fails: {probe['reason']}",
                                       probe["since"])
        out.append({"name": b.vm, "ipAddress": b.ip, "host": host, "state": state, "reason": code, "detail": why,
                    "since": since})
        if probe and not probe["up"] and b.admin == "None" and host in alive:
            probed_down.append(out[-1])
    if probed_down and not any(o["state"] == "Up" for o in out):
        for o in probed_down:
            if r.probe.all_down_is_up:   # noHealthyBackendsBehavior AllProbedUp: the MUXes give them all new flows
                o["state"], o["reason"] = "Up", "Up_Probe_AllDownIsUp"
                o["detail"] = f"every backend is probed down and {r.probe.key} is AllProbedUp: all up"
            else:
                o["reason"] = "Down_Probe_NoHealthyBackend"
                o["detail"] += " (and so is every other backend: no new flows)"
    return {"loadBalancingRule": rule, "up": sum(o["state"] == "Up" for o in out),
            "down": sum(o["state"] == "Down" for o in out), "loadBalancerBackendAddresses": out}


class SwapRequest(BaseModel):
    loadBalancers: list[Name] = Field(min_length=2, max_length=2, description="the two load balancers whose frontends swap")


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
        return lb_missing(*missing["lb"])
    return JSONResponse({n: [str(fe.address) for fe in stored[n].properties.frontendIPConfigurations] for n in (a, b)},
                        headers={"X-Muxlab-Nb-Cfg": str(cfg)})


@app.get("/loadBalancers/{name}/inboundNatRules/{rule}/portMappings")
def port_mappings(name: LbName, rule: ChildName):
    """Azure's inbound NAT rule port mappings: which backend has which frontend port."""
    snap = snapshot_holding(name)
    held = snap["load_balancers"]
    rules = {n.name: n.properties for n in held[name].properties.inboundNatRules}
    if rule not in rules:
        return not_found("inbound NAT rule", rule, sorted(rules))
    n = rules[rule]
    # the southbound Nat_Port rows (one per protocol): the ports the data path serves
    ports = {(x.vm, x.ip, x.port, x.backend_port) for x in snap["facts"].nat_ports if x.lb == name and x.rule == rule}
    return {"value": [{"inboundNatRuleName": rule, "protocol": n.protocol, "frontendPort": port, "backendPort": bport,
                       "backendAddress": {"name": vm, "ipAddress": ip}}
                      for vm, ip, port, bport in sorted(ports, key=lambda p: p[2])]}


@app.get("/loadBalancers/{name}/outboundSnat")
def outbound_snat(name: LbName):
    """Outbound SNAT of a load balancer's backends (a muxlab view; Azure shows it as metrics):
    each backend's frontend address and port range, the ports its connections hold and the
    connections refused because the range was full."""
    snap = snapshot_holding(name)
    fabric = store().fabric
    facts = snap["facts"]
    usage = {vm: u for h in snap["hosts"] for vm, u in h["snat_usage"].items()}
    out = []
    for x in sorted((x for x in facts.snat if x.lb == name), key=lambda x: (str(x.vip), x.lo)):
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
def put_mux(mux: Annotated[str, Path(pattern=AZURE_NAME, description="the MUX's name")], body: MuxState):
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
    snap.pop("facts")
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
            lbs = load_document(SEED_PATH)
            if store().seed(lbs):
                print(f"[manager] stored the initial load balancers from {SEED_PATH}: {', '.join(sorted(lbs))}", flush=True)
        except Exception as exc:  # the API still serves; `muxlab apply` can store them
            print(f"[manager] could not store the initial load balancers: {exc}", flush=True)
    threading.Thread(target=run, daemon=True).start()


def main() -> None:
    import uvicorn
    fabric = load_lab(FABRIC_PATH)
    me = socket.gethostname()
    addr = manager_addresses(len(fabric.managers))[fabric.managers.index(me)]
    global _token
    _token = load_token()
    if _token is None:
        raise SystemExit(f"[manager] no API token at {TOKEN_FILE}: the lab's PKI is missing (muxlab up creates it)")
    store()
    from . import rbac   # the agents' Connection row, RBAC role, and their Chassis/Mux rows (agents may not insert them)
    rbac.ensure_in_background(lambda fn: store().call(fn), fabric, create_global=me == fabric.managers[0])
    if me == fabric.managers[0] and os.path.exists(SEED_PATH):
        seed_in_background()
    # HTTPS with the manager's own certificate (CN and SAN DNS: its name, signed by the lab's CA)
    uvicorn.run(app, host=addr, port=API_PORT, log_level="warning",
                ssl_certfile=os.path.join(PKI, NODE_CERT), ssl_keyfile=os.path.join(PKI, NODE_KEY))


if __name__ == "__main__":
    main()
