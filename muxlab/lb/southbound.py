"""The southbound contract: the compiled facts (muxlab.lb.facts) as rows of the
managers' OVSDB, and back. Pure, and free of the Azure model: the managers write these rows
in the same transaction as the load balancers they come from; agents read only these.

Every table here is in muxlab/muxlab.ovsschema and described column by column in
docs/southbound.md (a unit test keeps the three in step). Addresses are text, IPv4 or IPv6
(`ipaddress.ip_address`): nothing in the contract assumes a 32-bit address or a packet mark;
how a DIP travels in a node's kernel is the agents' business (muxlab.datapath.conventions).
Pools and probes are referred to by name ("LB/pool", "LB/probe"), not by row uuid, so a host
can monitor its own Backend rows (`host == me`) without the rows they point at.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .facts import Backend, Facts, InternalEndpoint, NatPort, Probe, Rule, Snat

# table -> (its key columns, every column); the key is the table's index in the schema
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Frontend": (("address",), ("address", "hairpin_snat")),
    "Probe": (("name",), ("name", "protocol", "port", "path", "interval", "timeout", "unhealthy_threshold",
                          "healthy_threshold", "semantics", "down_after",
                          "all_down_is_up")),
    "Rule": (("lb", "name"), ("lb", "name", "vip", "protocol", "port", "backend_port", "pool", "floating_ip", "probe",
                              "distribution", "idle_s", "tcp_reset", "source_nat",
                              "proxy_protocol")),
    "Backend": (("pool", "position"), ("pool", "position", "vm", "ip", "host", "admin")),
    "Nat_Port": (("vip", "protocol", "port"), ("lb", "rule", "vip", "protocol", "port", "vm", "ip", "host",
                                              "backend_port", "floating_ip", "idle_s", "tcp_reset")),
    "Snat_Range": (("vm",), ("lb", "rule", "vip", "protocols", "vm", "ip", "host", "lo", "hi", "idle_s", "tcp_reset")),
    "Internal_Endpoint": (("ip", "protocol", "port"), ("service", "role", "name", "vm", "ip", "host", "protocol", "port",
                                                       "peers")),
}
# rows that belong to one VM: a host agent monitors only those whose host is itself
PER_HOST = ("Backend", "Nat_Port", "Snat_Range", "Internal_Endpoint")

Rows = dict[str, dict[tuple, dict[str, Any]]]   # table -> key -> column -> value


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def rows_of(facts: Facts, host_of: Callable[[str], str]) -> Rows:
    """The southbound rows of `facts`; `host_of(vm)` names the host a VM runs on."""
    out: Rows = {t: {} for t in TABLES}

    def put(table: str, **cols) -> None:
        keys, columns = TABLES[table]
        assert set(cols) == set(columns), (table, sorted(cols))
        out[table][tuple(cols[k] for k in keys)] = cols

    hairpin = set(facts.hairpin_snat_vips)
    for v in facts.vips:
        put("Frontend", address=str(v), hairpin_snat=v in hairpin)
    pools: dict[str, tuple[Backend, ...]] = {}
    for r in facts.rules:
        pools[r.pool] = r.backends
        if r.probe:
            p = r.probe
            put("Probe", name=p.key, protocol=p.protocol, port=p.port, path=p.path, interval=float(p.interval),
                timeout=float(p.timeout), unhealthy_threshold=p.unhealthy_threshold, healthy_threshold=p.healthy_threshold,
                semantics=p.semantics, down_after=float(p.down_after), all_down_is_up=p.all_down_is_up)
        put("Rule", lb=r.lb, name=r.name, vip=str(r.vip), protocol=r.protocol, port=r.port, backend_port=r.backend_port,
            pool=r.pool, floating_ip=r.floating_ip, probe=r.probe.key if r.probe else "", distribution=r.distribution,
            idle_s=r.idle_s, tcp_reset=r.tcp_reset, source_nat=r.source_nat,
            proxy_protocol=r.proxy_protocol)
    for pool, backends in pools.items():
        for i, b in enumerate(backends):
            put("Backend", pool=pool, position=i, vm=b.vm, ip=b.ip, host=host_of(b.vm), admin=b.admin)
    for n in facts.nat_ports:
        put("Nat_Port", lb=n.lb, rule=n.rule, vip=str(n.vip), protocol=n.protocol, port=n.port, vm=n.vm, ip=n.ip,
            host=host_of(n.vm), backend_port=n.backend_port, floating_ip=n.floating_ip, idle_s=n.idle_s,
            tcp_reset=n.tcp_reset)
    for s in facts.snat:
        put("Snat_Range", lb=s.lb, rule=s.rule, vip=str(s.vip), protocols=sorted(s.protocols), vm=s.vm, ip=s.ip,
            host=host_of(s.vm), lo=s.lo, hi=s.hi, idle_s=s.idle_s, tcp_reset=s.tcp_reset)
    for e in facts.internal:
        put("Internal_Endpoint", service=e.service, role=e.role, name=e.name, vm=e.vm, ip=e.ip, host=host_of(e.vm),
            protocol=e.protocol, port=e.port, peers=sorted(e.peers))
    return out


@dataclass
class Diff:
    """What turns the rows a database holds into the desired ones."""
    insert: list[tuple[str, dict]] = field(default_factory=list)             # (table, columns)
    update: list[tuple[str, tuple, dict]] = field(default_factory=list)      # (table, key, changed columns)
    delete: list[tuple[str, tuple]] = field(default_factory=list)            # (table, key)

    def __bool__(self) -> bool:
        return bool(self.insert or self.update or self.delete)


def diff(held: Rows, want: Rows) -> Diff:
    d = Diff()
    for table in TABLES:
        have, new = held.get(table, {}), want.get(table, {})
        d.delete += [(table, k) for k in have if k not in new]
        for k, cols in new.items():
            if k not in have:
                d.insert.append((table, cols))
            else:
                changed = {c: v for c, v in cols.items() if normal(have[k].get(c)) != normal(v)}
                if changed:
                    d.update.append((table, k, changed))
    return d


def normal(v: Any) -> Any:
    """A value as both sides compare it: the IDL gives a set column as a list."""
    return sorted(v) if isinstance(v, (list, tuple, set, frozenset)) else v


def read(rows: Callable[[str], Iterable[Any]]) -> Rows:
    """The southbound rows as an agent's replica holds them (`rows(table)`: IDL rows, or
    anything with the columns as attributes)."""
    out: Rows = {}
    for table, (keys, columns) in TABLES.items():
        out[table] = {}
        for r in rows(table):
            cols = {c: getattr(r, c) for c in columns}
            out[table][tuple(cols[k] for k in keys)] = cols
    return out


def facts_of(rows: Rows) -> tuple[Facts, list[str]]:
    """The facts back from southbound rows, in a canonical order (every MUX reads the same
    rows, so every MUX builds the same tables). A row that does not convert, or a rule whose
    probe is missing, is skipped and named in the second result: one bad row never stops
    the others."""
    problems: list[str] = []

    def converted(table: str, build: Callable[[dict], Any]) -> list:
        """build(columns) of each row of `table`, in key order; a row it raises on is named."""
        out = []
        for key, c in sorted(rows.get(table, {}).items(), key=lambda kv: tuple(map(str, kv[0]))):
            try:
                out.append(build(c))
            except Exception as exc:
                problems.append(f"{table} {'/'.join(map(str, key))}: {type(exc).__name__}: {exc}")
        return out

    probes = {p.key: p for p in converted("Probe", lambda c: Probe(
        c["name"], c["protocol"], int(c["port"]), c["path"], float(c["interval"]), float(c["timeout"]),
        int(c["unhealthy_threshold"]), int(c["healthy_threshold"]), c["semantics"], float(c["down_after"]),
        bool(c["all_down_is_up"])))}
    pools: dict[str, list[tuple[int, Backend]]] = {}
    for pool, position, b in converted("Backend", lambda c: (c["pool"], int(c["position"]),
                                                             Backend(c["vm"], str(address(c["ip"])), c["admin"]))):
        pools.setdefault(pool, []).append((position, b))

    def rule(c: dict) -> Rule:
        if c["probe"] and c["probe"] not in probes:
            raise LookupError(f"probe {c['probe']!r} has no Probe row")
        backends = tuple(b for _, b in sorted(pools.get(c["pool"], ()), key=lambda pb: pb[0]))
        return Rule(c["lb"], c["name"], address(c["vip"]), c["protocol"], int(c["port"]), int(c["backend_port"]),
                    c["pool"], backends, bool(c["floating_ip"]), probes.get(c["probe"]) if c["probe"] else None,
                    c["distribution"], int(c["idle_s"]), bool(c["tcp_reset"]), bool(c["source_nat"]),
                    bool(c["proxy_protocol"]))
    rules = converted("Rule", rule)
    nat = converted("Nat_Port", lambda c: NatPort(
        c["lb"], c["rule"], address(c["vip"]), c["protocol"], int(c["port"]), c["vm"], str(address(c["ip"])),
        int(c["backend_port"]), bool(c["floating_ip"]), int(c["idle_s"]), bool(c["tcp_reset"])))
    snat = converted("Snat_Range", lambda c: Snat(
        c["lb"], c["rule"], address(c["vip"]), tuple(sorted(c["protocols"])), c["vm"], str(address(c["ip"])),
        int(c["lo"]), int(c["hi"]), int(c["idle_s"]), bool(c["tcp_reset"])))
    internal = converted("Internal_Endpoint", lambda c: InternalEndpoint(
        c["service"], c["role"], c["name"], c["vm"], str(address(c["ip"])), c["protocol"], int(c["port"]),
        tuple(sorted(str(address(p)) for p in c["peers"]))))
    frontends = converted("Frontend", lambda c: (address(c["address"]), bool(c["hairpin_snat"])))
    vips = [a for a, _ in frontends]
    hairpin = [a for a, h in frontends if h]
    order = lambda a: (a.version, a)   # noqa: E731 - IPv4 before IPv6, each by value
    rules.sort(key=lambda r: (r.lb, r.name))
    nat.sort(key=lambda n: (n.lb, n.rule, n.vm, n.protocol, n.port))
    snat.sort(key=lambda s: (s.lb, s.vm))
    internal.sort(key=lambda e: (e.ip, e.protocol, e.port))
    return (Facts(tuple(rules), tuple(sorted(vips, key=order)), tuple(nat), tuple(snat),
                  tuple(sorted(hairpin, key=order)), tuple(internal)), problems)

