"""A classic cloud service's ServiceDefinition (.csdef) as one load balancer. Pure.

Seed 003's tenants are described by a ServiceDefinition, not by Azure Load Balancer
resources: the service is the load balancer (its VIP the one frontend), each role a backend
pool, an InputEndpoint a load-balancing rule, an InstanceInputEndpoint an inbound NAT rule in
the pool form (instance i gets port min+i), a LoadBalancerProbe a probe with the classic
semantics, an InternalEndpoint an entry of the `cloudService` extension (muxlab/lb/azure.py).
The lab has no .cscfg: a small roles file names the VIP and each role's instances, in order.

The XML is untrusted: defusedxml refuses DTDs and entities. Every problem names the element
(XPath-like), the attribute and the value; all of them are collected, then raised at once as
one ModelError. What comes out is validated by the model (parse_lb) and by the cross-checks
(muxlab.lb.check, muxlab.lb.allocation) against the fabric, their problems traced back to the
element they came from.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import yaml
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from ..fabric.lab import Lab, ModelError
from .allocation import allocate
from .azure import IDLE_TIMEOUT_MAX, IDLE_TIMEOUT_MIN, LAB_MIN_PROBE_INTERVAL, NAME_RULE, LoadBalancer, \
    PROBE_PATH, child_ref, is_azure_name, load_yaml_unique, parse_lb
from .check import check

Problem = tuple[str, Any, str]

SD_NS = "http://schemas.microsoft.com/ServiceHosting/2008/10/ServiceDefinition"
ROOT = "ServiceDefinition"
ROLE_TAGS = ("WebRole", "WorkerRole")
WHAT = "ServiceDefinition"

# Seed 003's limits, and a ServiceDefinition's probe defaults (Azure's csdef schema).
MAX_INPUT_ENDPOINTS = 150          # per service: InputEndpoint + InstanceInputEndpoint
MAX_INTERNAL_ENDPOINTS = 25        # per role
DEFAULT_INTERVAL, DEFAULT_TIMEOUT = 15, 31
MAX_PROBE_SECONDS = 2147483647
MAX_FRONTEND_PORT = 65534          # the model's load-balancing rules (muxlab/lb/azure.py)

# csdef protocol -> the load balancer's (http and https are TCP to an L4 load balancer)
TRANSPORT = {"http": "Tcp", "https": "Tcp", "tcp": "Tcp", "udp": "Udp"}
DISTRIBUTION = {"sourceIP": "SourceIP", "sourceIPProtocol": "SourceIPProtocol"}
DIGITS = re.compile(r"[0-9]{1,10}")   # int() would take " 80", "+80", "8_0" and other scripts' digits


@dataclass
class _Endpoint:
    kind: str                     # InputEndpoint | InstanceInputEndpoint | InternalEndpoint
    role: str
    name: str
    path: str                     # its XPath
    protocol: str | None          # as the csdef says it
    port: int | None = None       # InputEndpoint, InternalEndpoint
    local_port: int | None = None
    probe: str | None = None      # InputEndpoint: loadBalancerProbe
    idle: int | None = None
    distribution: str | None = None
    lo: int | None = None         # InstanceInputEndpoint: FixedPortRange
    hi: int | None = None
    range_path: str = ""


@dataclass
class _Probe:
    name: str
    path: str
    protocol: str | None
    port: int | None
    request_path: str | None
    interval: int | None
    timeout: int | None


class _Problems:
    """Collects (path, value, message) while reading, so one run reports everything."""

    def __init__(self) -> None:
        self.list: list[Problem] = []

    def bad(self, path: str, value: Any, msg: str) -> None:
        self.list.append((path, value, msg))

    def attrs(self, el: Element, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, str]:
        for k, v in el.attrib.items():
            if k not in allowed:
                self.bad(f"{path}/@{k}", v, f"unknown attribute (allowed: {', '.join(allowed)})")
        for k in required:
            if k not in el.attrib:
                self.bad(f"{path}/@{k}", None, "required attribute is missing")
        return {k: v for k, v in el.attrib.items() if k in allowed}

    def integer(self, a: dict, key: str, path: str, lo: int, hi: int, default: int | None = None) -> int | None:
        if key not in a:
            return default
        v = a[key]
        if not DIGITS.fullmatch(v) or not lo <= int(v) <= hi:
            self.bad(f"{path}/@{key}", v, f"must be an integer from {lo} to {hi}")
            return None
        return int(v)

    def choice(self, a: dict, key: str, path: str, options: tuple[str, ...]) -> str | None:
        v = a.get(key)
        if key in a and v not in options:
            self.bad(f"{path}/@{key}", v, f"must be one of: {', '.join(options)}")
            return None
        return v

    def name(self, a: dict, path: str) -> str | None:
        v = a.get("name")
        if "name" in a and not is_azure_name(v):
            self.bad(f"{path}/@name", v, NAME_RULE)
            return None
        return v

    def required_name(self, a: dict, path: str) -> str | None:
        """A name the element cannot go without (the service's, a role's)."""
        if "name" not in a:
            self.bad(f"{path}/@name", None, "required attribute is missing")
        return self.name(a, path)

    def no_children(self, el: Element, path: str) -> None:
        for tag, child, cpath in _children(el, path):
            self.bad(cpath, tag, "unknown element (this element has no children)")


def _local(tag: Any) -> str:
    """A tag without the ServiceDefinition namespace; another namespace stays (it matches nothing)."""
    if not isinstance(tag, str):   # a comment or processing instruction
        return ""
    return tag.removeprefix("{" + SD_NS + "}") if tag.startswith("{" + SD_NS + "}") else tag


def _step(el: Element, tag: str, position: int, alone: bool) -> str:
    """An XPath step for an element: by its name when it has a valid one (a hostile name never
    enters a path; the problem shows it as the value), else the bare tag when it is the only
    one of its kind there, else its position among them."""
    name = el.attrib.get("name")
    if is_azure_name(name):
        return f"{tag}[@name='{name}']"
    return tag if alone else f"{tag}[{position}]"


def _children(el: Element, path: str):
    """(local tag, element, its XPath) for each child element, positions counted per tag."""
    kids = [(_local(child.tag), child) for child in el]
    counts: dict[str, int] = {}
    for tag, _ in kids:
        counts[tag] = counts.get(tag, 0) + 1
    seen: dict[str, int] = {}
    for tag, child in kids:
        if not tag:
            continue
        seen[tag] = seen.get(tag, 0) + 1
        yield tag, child, f"{path}/{_step(child, tag, seen[tag], counts[tag] == 1)}"


# ------------------------------------------------------------------ reading the XML


def _xml_root(xml_text: str | bytes) -> Element:
    try:
        root = SafeET.fromstring(xml_text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        value = getattr(exc, "name", None) or getattr(exc, "sysid", None) or str(exc)
        raise ModelError([("(document)", value, f"refused: a ServiceDefinition has no DTD, entities or external "
                                                f"references ({type(exc).__name__})")], WHAT) from None
    except ParseError as exc:
        line, col = exc.position
        lines = (xml_text.decode("utf-8", "replace") if isinstance(xml_text, bytes) else xml_text).splitlines()
        near = lines[line - 1][max(0, col - 40):col + 40] if 0 < line <= len(lines) else ""
        raise ModelError([(f"(document) line {line}, column {col + 1}", near,
                           "is not well-formed XML: " + str(exc).split(":")[0])], WHAT) from None
    if root.tag not in (ROOT, "{" + SD_NS + "}" + ROOT):
        raise ModelError([("(document)", root.tag, f"the root element must be {ROOT} (in no namespace or in {SD_NS})")],
                         WHAT)
    return root


def _read_probe(el: Element, path: str, P: _Problems) -> _Probe:
    a = P.attrs(el, path, ("name", "protocol", "path", "port", "intervalInSeconds", "timeoutInSeconds"),
                ("name", "protocol"))
    P.no_children(el, path)
    protocol = P.choice(a, "protocol", path, ("http", "tcp"))
    request_path = a.get("path")
    if protocol == "http" and request_path is None:
        P.bad(f"{path}/@path", None, "an http probe needs a path (the URL it fetches, like Probe.aspx)")
    elif protocol == "tcp" and request_path is not None:
        P.bad(f"{path}/@path", request_path, "only http probes have a path")
        request_path = None
    elif request_path is not None:
        if not PROBE_PATH.fullmatch(request_path.removeprefix("/")):
            P.bad(f"{path}/@path", request_path, "must be a URL path: letters, digits and - . _ ~ ! $ & ' ( ) * + , ; "
                                                 "= : @ / % ? (1-1024; no spaces or control characters)")
            request_path = None
        else:
            request_path = "/" + request_path.removeprefix("/")   # the seed writes "Probe.aspx"
    return _Probe(P.name(a, path), path, protocol, P.integer(a, "port", path, 1, 65535), request_path,
                  P.integer(a, "intervalInSeconds", path, LAB_MIN_PROBE_INTERVAL, MAX_PROBE_SECONDS, DEFAULT_INTERVAL),
                  P.integer(a, "timeoutInSeconds", path, 1, MAX_PROBE_SECONDS, DEFAULT_TIMEOUT))


def _read_input(el: Element, role: str, path: str, P: _Problems) -> _Endpoint:
    a = P.attrs(el, path, ("name", "protocol", "port", "localPort", "loadBalancerProbe", "idleTimeoutInMinutes",
                           "loadBalancerDistribution", "certificate", "ignoreRoleInstanceStatus", "loadBalancer"),
                ("name", "protocol", "port"))
    P.no_children(el, path)
    port = P.integer(a, "port", path, 1, MAX_FRONTEND_PORT)
    probe = a.get("loadBalancerProbe")
    if "loadBalancer" in a:
        P.bad(f"{path}/@loadBalancer", a["loadBalancer"], "internal load balancers of a cloud service are not "
                                                          "supported by this lab: remove loadBalancer (the VIP serves it)")
    # without a probe the guest agent's report decides; "ignore it" would need a rule with no health at all
    ignore = P.choice(a, "ignoreRoleInstanceStatus", path, ("true", "false"))
    if ignore == "true" and probe is None:
        P.bad(f"{path}/@ignoreRoleInstanceStatus", ignore,
              "not supported by this lab without a loadBalancerProbe: the guest agent's status decides")
    dist = P.choice(a, "loadBalancerDistribution", path, tuple(DISTRIBUTION))
    return _Endpoint("InputEndpoint", role, P.name(a, path), path, P.choice(a, "protocol", path, tuple(TRANSPORT)),
                     port, P.integer(a, "localPort", path, 1, 65535, port), probe,
                     P.integer(a, "idleTimeoutInMinutes", path, IDLE_TIMEOUT_MIN, IDLE_TIMEOUT_MAX),
                     DISTRIBUTION.get(dist))


def _read_instance_input(el: Element, role: str, path: str, P: _Problems) -> _Endpoint:
    a = P.attrs(el, path, ("name", "protocol", "localPort"), ("name", "protocol", "localPort"))
    ep = _Endpoint("InstanceInputEndpoint", role, P.name(a, path), path, P.choice(a, "protocol", path, ("tcp", "udp")),
                   local_port=P.integer(a, "localPort", path, 1, 65535))
    ranges = []
    for tag, child, cpath in _children(el, path):
        if tag != "AllocatePublicPortFrom":
            P.bad(cpath, tag, "unknown element (allowed: AllocatePublicPortFrom)")
            continue
        P.attrs(child, cpath, ())
        for gtag, grand, gpath in _children(child, cpath):
            if gtag != "FixedPortRange":
                P.bad(gpath, gtag, "unknown element (allowed: FixedPortRange)")
                continue
            ranges.append((grand, gpath))
    if len(ranges) != 1:
        P.bad(f"{path}/AllocatePublicPortFrom/FixedPortRange", len(ranges),
              "an InstanceInputEndpoint needs exactly one AllocatePublicPortFrom/FixedPortRange min max")
        return ep
    grand, gpath = ranges[0]
    g = P.attrs(grand, gpath, ("min", "max"), ("min", "max"))
    P.no_children(grand, gpath)
    ep.lo, ep.hi, ep.range_path = P.integer(g, "min", gpath, 1, 65535), P.integer(g, "max", gpath, 1, 65535), gpath
    if ep.lo is not None and ep.hi is not None and ep.lo > ep.hi:
        P.bad(f"{gpath}/@min", g["min"], f"is above max ({ep.hi})")
        ep.lo = ep.hi = None
    return ep


def _read_internal(el: Element, role: str, path: str, P: _Problems) -> _Endpoint:
    a = P.attrs(el, path, ("name", "protocol", "port"), ("name", "protocol"))
    for tag, child, cpath in _children(el, path):
        if tag in ("FixedPort", "FixedPortRange"):
            P.bad(cpath, tag, "not supported by this lab: give the internal endpoint a port attribute, or none "
                                    "(the lab allocates one)")
        else:
            P.bad(cpath, tag, "unknown element (allowed: none)")
    protocol = a.get("protocol")
    if protocol == "any":
        P.bad(f"{path}/@protocol", protocol, "'any' (every port and protocol) is not supported by this lab: declare "
                                             "tcp, udp or http internal endpoints")
        protocol = None
    else:
        protocol = P.choice(a, "protocol", path, ("http", "tcp", "udp"))
    return _Endpoint("InternalEndpoint", role, P.name(a, path), path, protocol, P.integer(a, "port", path, 1, 65535))


READERS = {"InputEndpoint": _read_input, "InstanceInputEndpoint": _read_instance_input, "InternalEndpoint": _read_internal}


def _read_role(el: Element, path: str, P: _Problems) -> tuple[str | None, list[_Endpoint]]:
    name = P.required_name(el.attrib, path)
    endpoints: list[_Endpoint] = []
    where = f"{path}/Endpoints"
    for tag, child, cpath in _children(el, path):
        if tag != "Endpoints":   # Imports, ConfigurationSettings, LocalResources, Sites, Startup, ...: not the lab's
            continue
        for etag, ep_el, epath in _children(child, cpath):
            if etag not in READERS:
                P.bad(epath, etag, f"unknown element (allowed: {', '.join(READERS)})")
                continue
            endpoints.append(READERS[etag](ep_el, name or "", epath, P))
    internal = sum(e.kind == "InternalEndpoint" for e in endpoints)
    if internal > MAX_INTERNAL_ENDPOINTS:
        P.bad(where, internal, f"{internal} internal endpoints: a role may have at most {MAX_INTERNAL_ENDPOINTS}")
    return name, endpoints


# ------------------------------------------------------------------ the roles file


def _read_roles(raw: Any, fabric: Lab, P: _Problems) -> tuple[str | None, dict[str, list]]:
    """(vip, role -> its VMs in instance order) from the roles mapping."""
    if not isinstance(raw, dict):
        P.bad("(roles file)", raw, "must be a mapping with vip and roles")
        return None, {}
    for k in raw:
        if k not in ("vip", "roles"):
            P.bad(str(k), raw[k], "unknown field (allowed: roles, vip)")
    vip = None
    if "vip" not in raw:
        P.bad("vip", None, "required field is missing (the cloud service's public VIP)")
    else:
        try:
            vip = str(ipaddress.IPv4Address(raw["vip"] if isinstance(raw["vip"], str) else None))
        except (ValueError, TypeError, ipaddress.AddressValueError):
            P.bad("vip", raw["vip"], "must be an IPv4 address like 203.0.113.40")
    roles = raw.get("roles")
    if not isinstance(roles, dict) or not roles:
        P.bad("roles", roles, "must be a mapping of role name to its instances (VM names, in instance order)")
        return vip, {}
    vms = {v.name: v for v in fabric.vms}
    owner: dict[str, str] = {}
    out: dict[str, list] = {}
    for role, names in roles.items():
        path = f"roles.{role}"
        if not is_azure_name(role):
            P.bad(path, role, NAME_RULE)
            continue
        if not isinstance(names, list) or not names:
            P.bad(path, names, "must be a list of at least one VM (instance 0, 1, ...)")
            continue
        members = []
        for i, vm in enumerate(names):
            where = f"{path}[{i}]"
            if not isinstance(vm, str) or vm not in vms:
                P.bad(where, vm, f"is no VM of the lab (VMs: {', '.join(vms)})")
            elif vm in owner:
                P.bad(where, vm, f"is already an instance of {owner[vm]}: a VM is an instance of one role")
            else:
                owner[vm] = path
                members.append(vms[vm])
        out[role] = members
    return vip, out


# ------------------------------------------------------------------ the service's rules


def _check_service(endpoints: list[_Endpoint], probes: list[_Probe], instances: dict[str, list], P: _Problems) -> None:
    inputs = [e for e in endpoints if e.kind in ("InputEndpoint", "InstanceInputEndpoint")]
    if len(inputs) > MAX_INPUT_ENDPOINTS:
        P.bad(ROOT, len(inputs), f"{len(inputs)} input endpoints (InputEndpoint and InstanceInputEndpoint, all roles): "
                                 f"a cloud service may have at most {MAX_INPUT_ENDPOINTS}")
    # names: unique in a role; rules and NAT rules are the load balancer's, so unique in the service
    seen: dict[tuple, str] = {}
    for e in endpoints:
        if not e.name:
            continue
        for key in ((e.role, e.name), (e.kind, e.name)) if e.kind != "InternalEndpoint" else ((e.role, e.name),):
            if key in seen:
                P.bad(f"{e.path}/@name", e.name, f"already the name of {seen[key]}")
                break
            seen[key] = e.path
    # frontend ports: InputEndpoints, then the instance ranges, per transport protocol
    taken: dict[tuple[str, int], str] = {}
    for e in endpoints:
        if e.kind == "InputEndpoint" and e.protocol and e.port is not None:
            key = (TRANSPORT[e.protocol], e.port)
            if key in taken:
                P.bad(f"{e.path}/@port", e.port, f"{key[0].lower()}/{e.port} is already {taken[key]}'s: multiple "
                                                 "endpoints with the same port and protocol are not supported")
            else:
                taken[key] = e.path
    for e in endpoints:
        if e.kind == "InstanceInputEndpoint" and e.protocol and e.lo is not None and e.hi is not None:
            proto = TRANSPORT[e.protocol]
            clash = next((p for p in range(e.lo, e.hi + 1) if (proto, p) in taken), None)
            if clash is not None:
                P.bad(f"{e.range_path}/@min", f"{e.lo}-{e.hi}", f"overlaps {proto.lower()}/{clash} of {taken[(proto, clash)]}")
            else:
                taken.update({(proto, p): e.path for p in range(e.lo, e.hi + 1)})
            n = len(instances.get(e.role, []))
            if n > e.hi - e.lo + 1:
                P.bad(f"{e.range_path}/@max", e.hi, f"the range {e.lo}-{e.hi} has {e.hi - e.lo + 1} ports but role "
                                                   f"{e.role} has {n} instances: one port per instance")
    # probes: declared once, referenced by name, a port (its own or its endpoint's)
    declared: dict[str, _Probe] = {}
    for p in probes:
        if p.name in declared:
            P.bad(f"{p.path}/@name", p.name, f"already the name of {declared[p.name].path}")
        elif p.name:
            declared[p.name] = p
    users: dict[str, list[_Endpoint]] = {}
    for e in endpoints:
        if e.probe is None:
            continue
        if e.probe not in declared:
            P.bad(f"{e.path}/@loadBalancerProbe", e.probe, f"no LoadBalancerProbe of this name (declared: "
                                                          f"{', '.join(declared) or 'none'})")
        else:
            users.setdefault(e.probe, []).append(e)
    for name, p in declared.items():
        local = {e.local_port for e in users.get(name, []) if e.local_port is not None}
        if p.port is None and len(local) > 1:
            P.bad(f"{p.path}/@port", None, f"has no port and its endpoints' localPorts differ ({sorted(local)}): "
                                           "give the probe a port")


def _probe_port(p: _Probe, endpoints: list[_Endpoint]) -> int | None:
    """A probe's port: its own, else the localPort of the first InputEndpoint that uses it;
    None for a port-less probe no endpoint uses (it probes nothing, in Azure as here)."""
    if p.port is not None:
        return p.port
    return next((e.local_port for e in endpoints if e.probe == p.name), None)


def _build(service: str, vip: str, roles: list[str], instances: dict[str, list], endpoints: list[_Endpoint],
           probes: list[_Probe]) -> tuple[dict, dict[str, str]]:
    """The load balancer as a mapping, and where each of its parts came from (model path -> XPath)."""
    origins: dict[str, str] = {"properties.frontendIPConfigurations[0]": "vip"}
    fe = {"id": child_ref("frontendIPConfigurations", "vip", service).id}

    def ref(kind: str, name: str) -> dict:
        return {"id": child_ref(kind, name, service).id}

    pools = []
    for i, role in enumerate(roles):
        members = instances[role]
        pools.append({"name": role, "properties": {"loadBalancerBackendAddresses": [
            {"name": vm.name, "properties": {"ipAddress": str(vm.ip)}} for vm in members]}})
        for j, vm in enumerate(members):
            origins[f"properties.backendAddressPools[{i}].properties.loadBalancerBackendAddresses[{j}]"] = f"roles.{role}[{j}]"
    out_probes = []
    for p in probes:
        port = _probe_port(p, endpoints)
        if port is None:
            continue
        props = {"protocol": p.protocol.capitalize(), "port": port, "intervalInSeconds": p.interval,
                 "timeoutInSeconds": p.timeout}
        if p.request_path:
            props["requestPath"] = p.request_path
        origins[f"properties.probes[{len(out_probes)}]"] = p.path
        out_probes.append({"name": p.name, "properties": props})
    kept = {p["name"] for p in out_probes}
    rules, nats, internal = [], [], []
    for e in endpoints:
        proto = TRANSPORT[e.protocol]
        if e.kind == "InputEndpoint":
            props = {"frontendIPConfiguration": fe, "backendAddressPool": ref("backendAddressPools", e.role),
                     "protocol": proto, "frontendPort": e.port, "backendPort": e.local_port}
            if e.probe in kept:
                props["probe"] = ref("probes", e.probe)
            if e.idle is not None:
                props["idleTimeoutInMinutes"] = e.idle
            if e.distribution:
                props["loadDistribution"] = e.distribution
            base = f"properties.loadBalancingRules[{len(rules)}]"
            origins.update({base: e.path, f"{base}.properties.frontendPort": f"{e.path}/@port",
                            f"{base}.properties.backendPort": f"{e.path}/@localPort",
                            f"{base}.properties.probe": f"{e.path}/@loadBalancerProbe"})
            rules.append({"name": e.name, "properties": props})
        elif e.kind == "InstanceInputEndpoint":
            base = f"properties.inboundNatRules[{len(nats)}]"
            origins.update({base: e.path, f"{base}.properties.frontendPortRangeStart": f"{e.range_path}/@min",
                            f"{base}.properties.frontendPortRangeEnd": f"{e.range_path}/@max",
                            f"{base}.properties.backendPort": f"{e.path}/@localPort"})
            nats.append({"name": e.name, "properties": {
                "frontendIPConfiguration": fe, "protocol": proto, "frontendPortRangeStart": e.lo,
                "frontendPortRangeEnd": e.hi, "backendPort": e.local_port,
                "backendAddressPool": ref("backendAddressPools", e.role)}})
        else:
            base = f"properties.cloudService.internalEndpoints[{len(internal)}]"
            origins.update({base: e.path, f"{base}.port": f"{e.path}/@port"})
            internal.append({"name": e.name, "role": e.role, "protocol": proto,
                             **({"port": e.port} if e.port is not None else {})})
    raw = {"name": service, "properties": {
        "frontendIPConfigurations": [{"name": "vip", "properties": {"publicIPAddress": {
            "id": f"/publicIPAddresses/{service}-vip", "properties": {"ipAddress": vip}}}}],
        "backendAddressPools": pools, "loadBalancingRules": rules, "probes": out_probes, "inboundNatRules": nats,
        "cloudService": {"name": service, "internalEndpoints": internal}}}
    return raw, origins


def _blame(problems: list[Problem], origins: dict[str, str], service: str) -> list[Problem]:
    """The model's and the cross-checks' problems at the element they came from (the model's
    own path kept in the message when it is more precise than the element)."""
    out = []
    for path, value, msg in problems:
        p = path.removeprefix(f"{service}.")
        key = max((k for k in origins if p == k or p.startswith((k + ".", k + "["))), key=len, default=None)
        if key is None:
            out.append((path, value, msg))
        else:
            out.append((origins[key], value, msg if p == key else f"{msg} ({p})"))
    return out


# ------------------------------------------------------------------ entry points


def parse_csdef(xml_text: str | bytes, roles: dict, fabric: Lab) -> tuple[str, LoadBalancer]:
    """(the service's name, its load balancer) from a ServiceDefinition and the roles mapping
    ({vip: ADDRESS, roles: {ROLE: [VM, ...]}}); ModelError naming every problem."""
    root = _xml_root(xml_text)
    P = _Problems()
    service = P.required_name(root.attrib, ROOT)
    probes: list[_Probe] = []
    role_paths: dict[str, str] = {}
    endpoints: list[_Endpoint] = []
    nameless = False
    for tag, el, path in _children(root, ROOT):
        if tag == "LoadBalancerProbes":
            for ptag, pel, ppath in _children(el, path):
                if ptag == "LoadBalancerProbe":
                    probes.append(_read_probe(pel, ppath, P))
                else:
                    P.bad(ppath, ptag, "unknown element (allowed: LoadBalancerProbe)")
        elif tag in ROLE_TAGS:
            name, eps = _read_role(el, path, P)
            nameless |= name is None
            if name in role_paths:
                P.bad(f"{path}/@name", name, f"already the name of {role_paths[name]}")
            elif name:
                role_paths[name] = path
                endpoints += eps
        elif tag == "NetworkTrafficRules":
            # ignoring it would open internal endpoints wider than the service asked
            P.bad(path, tag, "not supported by this lab (every instance of the service may open every internal "
                                "endpoint): remove it to accept that")
        # anything else (Imports at the top, schema attributes, ...) is not the load balancer's
    vip, instances = _read_roles(roles, fabric, P)
    if isinstance(roles, dict) and isinstance(roles.get("roles"), dict):
        for role, path in role_paths.items():
            if role not in roles["roles"]:
                P.bad(f"{path}/@name", role, f"the roles file lists no instances for this role (roles.{role}: [VM, ...])")
        for role in roles["roles"]:
            if role not in role_paths and is_azure_name(role) and not nameless:   # not: a role refused above
                P.bad(f"roles.{role}", role, f"no WebRole or WorkerRole of this name in the ServiceDefinition "
                                             f"(roles: {', '.join(role_paths) or 'none'})")
    _check_service(endpoints, probes, instances, P)
    if P.list:
        raise ModelError(P.list, WHAT)
    raw, origins = _build(service, vip, list(role_paths), instances, endpoints, probes)
    try:
        lb = parse_lb(raw)
    except ModelError as exc:
        raise ModelError(_blame(exc.problems, origins, service), WHAT) from None
    lbs = {service: lb}
    problems = check(lbs, fabric) or allocate(lbs, fabric)[1]
    if problems:
        raise ModelError(_blame(problems, origins, service), WHAT)
    return service, lb


def load_csdef(csdef_path: str | Path, roles_path_or_dict: str | Path | dict, fabric: Lab) -> tuple[str, LoadBalancer]:
    """parse_csdef on files: the .csdef (read as bytes: the XML declares its encoding) and the
    roles file (YAML, a key given twice refused) or an already loaded roles mapping."""
    try:
        xml = Path(csdef_path).read_bytes()
    except OSError as exc:
        raise ModelError([("file", str(csdef_path), f"cannot be read: {exc.strerror}")], WHAT) from None
    roles = roles_path_or_dict
    if not isinstance(roles, dict):
        try:
            roles = load_yaml_unique(Path(roles).read_text())
        except OSError as exc:
            raise ModelError([("file", str(roles_path_or_dict), f"cannot be read: {exc.strerror}")], WHAT) from None
        except yaml.YAMLError as exc:
            raise ModelError([("file", str(roles_path_or_dict), f"is not valid YAML: {exc}")], WHAT) from None
        except ModelError as exc:   # a key given twice
            raise ModelError([(f"{roles_path_or_dict}: {where}", key, msg) for where, key, msg in exc.problems],
                             WHAT) from None
    return parse_csdef(xml, roles, fabric)
