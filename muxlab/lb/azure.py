"""The load balancer model: load balancers in Azure Load Balancer's own shape. Pure.

One pydantic definition validates YAML and JSON files, the API's request bodies, and exports
the JSON Schema in docs/ (editors use it for completion). An Azure REST request body or an
ARM template's `Microsoft.Network/loadBalancers` resource is accepted as it is: the envelope
(`id`, `type`, `location`, `sku`, `apiVersion`, ...) is allowed and ignored, and references
between children are `{"id": ".../KIND/NAME"}` where only the last two segments count (an ARM
`[resourceId('Microsoft.Network/loadBalancers/KIND', lb, 'NAME')]` expression works too).

Deliberate differences from Azure, for a lab (docs/manager.md):
- `intervalInSeconds` may be 1..4 (Azure: >= 5), so failover shows in seconds;
- a single-port inbound NAT rule names its backend with `backendIPAddress` (Azure ties it
  from the NIC's side, a resource this lab does not have);
- `hairpinSnat` (an extension) lets backends reach their own load balancer.
Cross-field rules (references, port clashes, the fabric's VMs) are in muxlab.lb.check.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..fabric import yamldoc
from ..fabric.lab import ModelError

# Azure resource names: 1-80 characters, letters, digits, '_', '.', '-'; start with a letter
# or digit, end with a letter, digit or '_'.
AZURE_NAME = r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?$"
NAME_RULE = ("must be an Azure resource name: 1-80 characters, letters, digits, '_', '.' and '-', "
             "starting with a letter or digit and ending with a letter, digit or '_'")
Name = Annotated[str, Field(pattern=AZURE_NAME, description="Azure resource name (1-80: letters, digits, _ . -)")]
# a name in a body that the URL or the file overrides: an Azure name, or an ARM expression ("[parameters('x')]")
ARM_OR_NAME = r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?|\[.*\])$"
NameOrArm = Annotated[str, Field(pattern=ARM_OR_NAME,
                                 description="Azure resource name (1-80: letters, digits, _ . -) or an ARM expression")]
NAME_PATTERNS = (AZURE_NAME, ARM_OR_NAME)


def is_azure_name(name: Any) -> bool:
    """Azure's rule for resource names (the whole string: no trailing newline slips through)."""
    return isinstance(name, str) and re.fullmatch(AZURE_NAME, name) is not None
Port = Annotated[int, Field(ge=1, le=65535)]
PROBE_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]{1,1024}")   # an HTTP probe's path: URI characters
IPv4 = ipaddress.IPv4Address

# Ranges as Azure documents them.
IDLE_TIMEOUT_MIN, IDLE_TIMEOUT_MAX = 4, 30
OUTBOUND_IDLE_MAX = 120
LAB_MIN_PROBE_INTERVAL = 1   # Azure: 5
MAX_OUTBOUND_PORTS = 64000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_RESOURCE_ID = re.compile(r"resourceId\(\s*'[^']*?/(?P<kind>[A-Za-z]+)'\s*,.*'(?P<name>[^']+)'\s*\)\s*\]?$")


def ref_parts(ref_id: str) -> tuple[str, str]:
    """(kind, name) of a reference: the last two segments of an Azure resource id."""
    m = _RESOURCE_ID.search(ref_id)
    if ref_id.startswith("[") and m:
        return m.group("kind"), m.group("name")
    parts = [p for p in ref_id.strip("[]'").split("/") if p]
    if len(parts) < 2:
        raise ValueError("must end in /KIND/NAME, like .../loadBalancers/lb/backendAddressPools/web")
    return parts[-2], parts[-1].strip("'")


class Ref(Strict):
    """A reference to a sibling: `{"id": ".../KIND/NAME"}`."""
    id: str

    @field_validator("id")
    @classmethod
    def _well_formed(cls, v: str) -> str:
        ref_parts(v)
        return v

    @property
    def kind(self) -> str:
        return ref_parts(self.id)[0]

    @property
    def name(self) -> str:
        return ref_parts(self.id)[1]


def child_ref(kind: str, name: str, lb: str = "{lb}") -> Ref:
    return Ref(id=f"/loadBalancers/{lb}/{kind}/{name}")


class Child(Strict):
    """Envelope every child resource of a load balancer has in Azure's JSON."""
    name: Name
    id: str | None = None
    etag: str | None = None
    type: str | None = None


class ReadOnly(Strict):
    """Properties Azure returns on GET (accepted so a GET body can be PUT back; ignored)."""
    provisioningState: str | None = None


# ------------------------------------------------------------------ frontends


class PublicIPAddressProperties(Strict):
    ipAddress: IPv4 | None = None
    publicIPAllocationMethod: Literal["Static", "Dynamic"] | None = None
    publicIPAddressVersion: Literal["IPv4"] | None = None
    provisioningState: str | None = None


class PublicIPAddress(Strict):
    """A public IP resource: given only by `id`, the manager allocates its address from the
    lab's public range (as Azure does) and keeps it."""
    id: str | None = None
    name: NameOrArm | None = None
    location: str | None = None
    sku: dict[str, Any] | None = None
    properties: PublicIPAddressProperties = PublicIPAddressProperties()

    @model_validator(mode="after")
    def _named(self):
        if not self.id and not self.name and self.properties.ipAddress is None:
            raise ValueError("give an id, a name or properties.ipAddress")
        return self


class FrontendIPConfigurationProperties(ReadOnly):
    privateIPAddress: IPv4 | None = None
    privateIPAllocationMethod: Literal["Static", "Dynamic"] | None = None
    privateIPAddressVersion: Literal["IPv4"] | None = None
    publicIPAddress: PublicIPAddress | None = None
    subnet: Ref | None = None
    loadBalancingRules: list[Ref] | None = None   # read-only back-references in GET bodies
    inboundNatRules: list[Ref] | None = None
    outboundRules: list[Ref] | None = None

    @model_validator(mode="after")
    def _one_address(self):
        # internal: privateIPAddress, or only a subnet (Dynamic: the manager allocates one from the VNet)
        internal = self.privateIPAddress is not None or (self.publicIPAddress is None and self.subnet is not None)
        if internal == (self.publicIPAddress is not None):
            raise ValueError("a frontend has either privateIPAddress or a subnet (internal) or publicIPAddress (public), "
                             "not both or neither")
        return self


class FrontendIPConfiguration(Child):
    properties: FrontendIPConfigurationProperties
    zones: list[str] | None = None

    @property
    def address(self) -> IPv4 | None:
        p = self.properties
        if p.publicIPAddress is None:
            return p.privateIPAddress   # None: an internal frontend given only a subnet, not yet allocated
        return p.publicIPAddress.properties.ipAddress

    @property
    def internal(self) -> bool:
        return self.properties.publicIPAddress is None


# ------------------------------------------------------------------ backends


class BackendAddressProperties(Strict):
    ipAddress: IPv4
    adminState: Literal["None", "Up", "Down"] = "None"
    virtualNetwork: Ref | None = None
    subnet: Ref | None = None


class BackendAddress(Strict):
    name: Name
    properties: BackendAddressProperties


class BackendAddressPoolProperties(ReadOnly):
    loadBalancerBackendAddresses: list[BackendAddress] = []
    loadBalancingRules: list[Ref] | None = None
    outboundRules: list[Ref] | None = None
    # Azure has an IP-based pool name its VNet, and may sync it; the lab has one VNet: accepted as written
    virtualNetwork: Ref | None = None
    syncMode: Literal["Automatic", "Manual"] | None = None


class BackendAddressPool(Child):
    properties: BackendAddressPoolProperties = BackendAddressPoolProperties()


# ------------------------------------------------------------------ probes


class ProbeProperties(ReadOnly):
    protocol: Literal["Tcp", "Http"]
    port: Port
    requestPath: str | None = None
    intervalInSeconds: int = Field(15, ge=LAB_MIN_PROBE_INTERVAL, le=2147483647)
    probeThreshold: int = Field(1, ge=1, le=100)
    numberOfProbes: int | None = Field(None, ge=1, le=100)   # Azure's older name: consecutive failures out
    noHealthyBackendsBehavior: Literal["AllProbedDown", "AllProbedUp"] = Field("AllProbedDown", description=(
        "Azure's: when every backend is probed down, AllProbedDown gives no new flows, AllProbedUp gives every "
        "backend new flows (as if all were up)"))
    timeoutInSeconds: int | None = Field(None, ge=1, le=2147483647, description=(
        "classic cloud services only (a load balancer with cloudService): no positive answer for this long takes "
        "the instance out (seed 003; docs/manager.md, classic probes)"))
    loadBalancingRules: list[Ref] | None = None

    @model_validator(mode="after")
    def _path(self):
        if self.protocol == "Http":
            if not self.requestPath:
                raise ValueError("an Http probe needs requestPath")
            if not PROBE_PATH.fullmatch(self.requestPath):
                # it goes into the probe's request line: no space, no CR/LF, nothing a URI does not have
                raise ValueError(f"requestPath {self.requestPath!r}: URI characters only, at most 1024")
        elif self.requestPath is not None:
            raise ValueError("only Http probes have a requestPath")
        return self


class Probe(Child):
    properties: ProbeProperties


# ------------------------------------------------------------------ rules


class LoadBalancingRuleProperties(ReadOnly):
    frontendIPConfiguration: Ref
    backendAddressPool: Ref | None = None
    backendAddressPools: list[Ref] | None = None
    probe: Ref | None = None
    protocol: Literal["Tcp", "Udp", "All"]
    frontendPort: int = Field(ge=0, le=65534)
    backendPort: int = Field(ge=0, le=65535)
    loadDistribution: Literal["Default", "SourceIP", "SourceIPProtocol"] = "Default"
    enableFloatingIP: bool = False
    idleTimeoutInMinutes: int = Field(IDLE_TIMEOUT_MIN, ge=IDLE_TIMEOUT_MIN, le=IDLE_TIMEOUT_MAX)
    enableTcpReset: bool = False
    disableOutboundSnat: bool = False
    sourceNat: bool = Field(False, description=(
        "muxlab extension (not in Azure; seed 004's second design): the MUX source-NATs the client to its own "
        "address, so replies return through that MUX, which holds the flow (no DSR: the backend sees the MUX, a "
        "MUX failure breaks its flows; docs/scenarios.md)"))
    proxyProtocol: Literal["None", "V2"] = Field("None", description=(
        "muxlab extension (not in Azure; seed 004's fix for a proxy hiding the client): V2, the MUX terminates "
        "the client's TCP connection (HAProxy) and opens its own to the backend, first sending a PROXY protocol v2 "
        "header with the client's address and port"))

    @model_validator(mode="after")
    def _shape(self):
        if self.frontendPort == 0 or self.backendPort == 0:
            raise ValueError("port 0 (HA ports) is not supported by this lab: give frontendPort and backendPort 1-65534")
        if self.backendAddressPool is None and not self.backendAddressPools:
            raise ValueError("a load-balancing rule needs backendAddressPool")
        if self.backendAddressPools and len(self.backendAddressPools) > 1:
            raise ValueError("one backend pool per rule in this lab (backendAddressPools has more than one)")
        if self.proxyProtocol != "None" and (self.protocol != "Tcp" or self.enableFloatingIP):
            raise ValueError(f"proxyProtocol {self.proxyProtocol} is a TCP stream's header: it needs protocol Tcp "
                             f"(not {self.protocol}) and no enableFloatingIP (the MUX opens the backend connection)")
        if self.enableFloatingIP and self.backendPort != self.frontendPort:
            raise ValueError(f"with enableFloatingIP the packet arrives untouched, so backendPort "
                             f"({self.backendPort}) must equal frontendPort ({self.frontendPort})")
        return self

    @property
    def pool(self) -> Ref:
        return self.backendAddressPool or self.backendAddressPools[0]


class LoadBalancingRule(Child):
    properties: LoadBalancingRuleProperties


class InboundNatRuleProperties(ReadOnly):
    frontendIPConfiguration: Ref
    protocol: Literal["Tcp", "Udp", "All"]
    frontendPort: Port | None = None
    backendPort: Port
    frontendPortRangeStart: Port | None = None
    frontendPortRangeEnd: Port | None = None
    backendAddressPool: Ref | None = None
    backendIPAddress: IPv4 | None = None    # lab: the single form's backend (Azure: set from the NIC)
    backendIPConfiguration: Ref | None = None
    enableFloatingIP: bool = False
    idleTimeoutInMinutes: int = Field(IDLE_TIMEOUT_MIN, ge=IDLE_TIMEOUT_MIN, le=IDLE_TIMEOUT_MAX)
    enableTcpReset: bool = False

    @model_validator(mode="after")
    def _form(self):
        single = self.frontendPort is not None
        ranged = self.frontendPortRangeStart is not None or self.frontendPortRangeEnd is not None
        if single == ranged:
            raise ValueError("give either frontendPort (one backend) or frontendPortRangeStart/End with "
                             "backendAddressPool (one port per backend), not both or neither")
        if ranged:
            if self.frontendPortRangeStart is None or self.frontendPortRangeEnd is None:
                raise ValueError("the pool form needs both frontendPortRangeStart and frontendPortRangeEnd")
            if self.frontendPortRangeEnd < self.frontendPortRangeStart:
                raise ValueError(f"frontendPortRangeEnd ({self.frontendPortRangeEnd}) is below "
                                 f"frontendPortRangeStart ({self.frontendPortRangeStart})")
            if self.backendAddressPool is None:
                raise ValueError("the pool form needs backendAddressPool")
        if single and self.backendIPAddress is None:
            raise ValueError("the single form needs backendIPAddress (the VM that gets this port)")
        return self

    @property
    def frontend_ports(self) -> range:
        if self.frontendPort is not None:
            return range(self.frontendPort, self.frontendPort + 1)
        return range(self.frontendPortRangeStart, self.frontendPortRangeEnd + 1)


class InboundNatRule(Child):
    properties: InboundNatRuleProperties


class OutboundRuleProperties(ReadOnly):
    frontendIPConfigurations: list[Ref] = Field(min_length=1)
    backendAddressPool: Ref
    protocol: Literal["Tcp", "Udp", "All"]
    allocatedOutboundPorts: int = Field(0, ge=0, le=MAX_OUTBOUND_PORTS)
    idleTimeoutInMinutes: int = Field(IDLE_TIMEOUT_MIN, ge=IDLE_TIMEOUT_MIN, le=OUTBOUND_IDLE_MAX)
    enableTcpReset: bool = False

    @field_validator("allocatedOutboundPorts")
    @classmethod
    def _blocks_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (ports are allocated in blocks of 8); {v} is not")
        return v


class OutboundRule(Child):
    properties: OutboundRuleProperties


# ------------------------------------------------------------------ the load balancer


# ------------------------------------------------------------------ classic cloud services (seed 003)


class InternalEndpoint(Strict):
    """A role's endpoint that is not load balanced: the role's instances serve it on their DIP,
    and only the cloud service's own instances may reach it."""
    name: Name
    role: Name                       # the backendAddressPool that holds the role's instances
    protocol: Literal["Tcp", "Udp"]
    port: Port | None = None         # None: the lab allocates one (muxlab.lb.allocation)


class CloudService(Strict):
    """muxlab extension: this load balancer is a classic cloud service's (a ServiceDefinition,
    `muxlab apply FILE.csdef`). Its probes follow the classic semantics (timeoutInSeconds; an
    HTTP answer other than 200 takes an instance out at once; the first positive answer puts it
    back unless it flaps), and a load-balancing rule with no probe follows the instance's own
    status, reported through its host's platform address (the guest agent probe)."""
    name: Name
    internalEndpoints: list[InternalEndpoint] = []


class LoadBalancerProperties(ReadOnly):
    frontendIPConfigurations: list[FrontendIPConfiguration] = Field(min_length=1)
    backendAddressPools: list[BackendAddressPool] = []
    loadBalancingRules: list[LoadBalancingRule] = []
    probes: list[Probe] = []
    inboundNatRules: list[InboundNatRule] = []
    inboundNatPools: list[dict[str, Any]] = Field([], max_length=0,
                                                  description="not supported: use inboundNatRules with a port range")
    outboundRules: list[OutboundRule] = []
    resourceGuid: str | None = None
    hairpinSnat: bool = Field(False, description=(
        "muxlab extension (not in Azure): the host source-NATs a flow that the load balancer maps back to the VM "
        "that sent it, so a backend can reach its own load balancer (hairpin fix 2, docs/scenarios.md)"))
    cloudService: CloudService | None = Field(None, description=(
        "muxlab extension (Azure's classic cloud services): probe semantics, guest agent probe and internal "
        "endpoints of a ServiceDefinition (seed 003)"))


class LoadBalancer(Strict):
    """A load balancer, as in Azure's REST API and ARM templates. Its name comes from the URL
    or the file; a `name` in the body (or an ARM expression there) is ignored."""
    model_config = ConfigDict(extra="forbid", title="LoadBalancer")
    name: NameOrArm | None = None
    id: str | None = None
    type: str | None = None
    apiVersion: str | None = None
    location: str | None = None
    sku: dict[str, Any] | None = None
    tags: dict[str, str] | None = None
    etag: str | None = None
    dependsOn: list[str] | None = None
    properties: LoadBalancerProperties


def canonical(lb: LoadBalancer) -> dict:
    """The stored form: only what was given, addresses as strings, stable key order."""
    return json.loads(lb.model_dump_json(exclude_none=True, exclude_defaults=False))


def json_schema() -> dict:
    schema = LoadBalancer.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = ("A muxlab load balancer in Azure Load Balancer's shape (muxlab/lb/azure.py). "
                             "A file may hold one load balancer, or a `loadBalancers` mapping of name to load balancer.")
    return schema


# ------------------------------------------------------------------ parsing with paths


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def errors_of(exc: ValidationError, prefix: str = "") -> list[tuple[str, Any, str]]:
    """pydantic's errors as (field path, value, message), the path from the document's root."""
    out = []
    for e in exc.errors(include_url=False):
        path = loc_path(e["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path and not path.startswith("[") else f"{prefix}{path}"
        out.append((path or prefix or "(document)", e.get("input"), error_message(e)))
    return out


def error_message(e: dict) -> str:
    """One pydantic error's message, as the API and the CLI say it."""
    if e["type"] == "extra_forbidden":
        return "unknown field"
    if e["type"] == "string_pattern_mismatch" and (e.get("ctx") or {}).get("pattern") in NAME_PATTERNS:
        return NAME_RULE
    return e["msg"].removeprefix("Value error, ")


def loc_path(loc: tuple) -> str:
    """A pydantic location as a field path: a.b[0].c (a dict key's own error sits at the key)."""
    return _path(tuple(p for p in loc if p not in ("function-after", "[key]")))


def parse_lb(raw: Any, where: str = "") -> LoadBalancer:
    """One load balancer from a mapping; ModelError naming every bad field and value."""
    try:
        return LoadBalancer.model_validate(raw)
    except ValidationError as exc:
        raise ModelError(errors_of(exc, where), "load balancer") from None


def parse_document(raw: Any) -> dict[str, LoadBalancer]:
    """A file's load balancers. Accepted shapes:
      {loadBalancers: {NAME: LB, ...}}              muxlab's own file
      {name: NAME, properties: ...}                 one LB (REST body with a name)
      {resources: [{type: Microsoft.Network/loadBalancers, name: ..., ...}]}   an ARM template
    """
    problems: list[tuple[str, Any, str]] = []
    out: dict[str, LoadBalancer] = {}
    if not isinstance(raw, dict):
        raise ModelError([("(document)", raw, "must be a mapping")], "load balancers")
    items: list[tuple[str, str, Any]] = []
    if "loadBalancers" in raw:
        extra = set(raw) - {"loadBalancers", "$schema"}
        for k in sorted(extra):
            problems.append((k, raw[k], "unknown field (allowed: loadBalancers)"))
        lbs = raw["loadBalancers"]
        if not isinstance(lbs, dict):
            raise ModelError([("loadBalancers", lbs, "must be a mapping of name to load balancer")], "load balancers")
        items = [(str(n), f"loadBalancers.{n}", body) for n, body in lbs.items()]
    elif "resources" in raw:
        for i, res in enumerate(raw["resources"] or []):
            if isinstance(res, dict) and res.get("type") == "Microsoft.Network/loadBalancers":
                body = {k: v for k, v in res.items() if k not in ("comments", "condition", "copy", "zones")}
                items.append((str(res.get("name")), f"resources[{i}]", body))
        if not items:
            problems.append(("resources", None, "holds no Microsoft.Network/loadBalancers resource"))
    elif "properties" in raw:
        items = [(str(raw.get("name")), "", raw)]
        if not raw.get("name"):
            problems.append(("name", None, "a single load balancer in a file needs a name"))
    else:
        problems.append(("(document)", sorted(raw), "expected loadBalancers, an ARM template's resources, "
                                                    "or one load balancer with name and properties"))
    for name, where, body in items:
        if not is_azure_name(name):
            problems.append((f"{where}.name" if where else "name", name, NAME_RULE))
            continue
        try:
            out[name] = LoadBalancer.model_validate(body)
        except ValidationError as exc:
            problems += errors_of(exc, where)
    if problems:
        raise ModelError(problems, "load balancers")
    return out


def load_document(path: str | Path) -> dict[str, LoadBalancer]:
    """Load balancers from a YAML or JSON file (JSON is YAML). A key given twice in one
    mapping is refused (YAML would silently keep the last), naming the key and its lines."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError([("file", str(path), f"cannot be read: {exc.strerror}")], "load balancers") from None
    try:
        raw = load_yaml_unique(text)
    except yaml.YAMLError as exc:
        raise ModelError([("file", str(path), f"is neither valid YAML nor JSON: {exc}")], "load balancers") from None
    return parse_document(raw)


# ------------------------------------------------------------------ duplicate keys


def load_yaml_unique(text: str) -> Any:
    """yaml.safe_load, refusing a key given twice in one mapping (ModelError: the mapping's
    path, the key, both lines; muxlab.fabric.yamldoc)."""
    doc, problems = yamldoc.load_unique(text)
    if problems:
        raise ModelError(problems, "load balancers")
    return doc


class _Pairs(dict):
    """A JSON object that had a key twice (json.loads keeps the last): which ones."""
    dups: list[str]


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Pairs(out)
    seen: set[str] = set()
    marked.dups = [k for k, _ in pairs if k in seen or seen.add(k)]
    return marked


def json_duplicates(raw: Any, path: str = "") -> list[tuple[str, Any, str]]:
    """(path of the object, key, message) for each key given twice, in a json_loads_pairs result."""
    out = []
    if isinstance(raw, _Pairs):
        out += [(path or "(body)", k, f"duplicate key {k!r}: a key may appear once in an object") for k in raw.dups]
    if isinstance(raw, dict):
        for k, v in raw.items():
            out += json_duplicates(v, f"{path}.{k}" if path else str(k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            out += json_duplicates(v, f"{path}[{i}]")
    return out


def json_loads_pairs(text: str | bytes) -> Any:
    """json.loads that marks the objects with a duplicate key (see json_duplicates)."""
    return json.loads(text, object_pairs_hook=_unique_pairs)


def loads_unique(text: str | bytes) -> Any:
    """json.loads refusing a key given twice in one object (ModelError naming path and key);
    ValueError as json.loads on text that is not JSON."""
    raw = json_loads_pairs(text)
    problems = json_duplicates(raw)
    if problems:
        raise ModelError(problems, "JSON document")
    return raw
