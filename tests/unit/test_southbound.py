"""The southbound contract: what the managers' compiler writes (one test per feature), what
agents read back from those rows, and the schema file, the contract module and its manual
(docs/southbound.md) in step."""
import json
import re
from types import SimpleNamespace

from muxlab.lb import southbound
from muxlab.lb.azure import parse_document
from muxlab.lb.compiler import compile_facts
from tests.unit.conftest import REPO, default_facts, fabric
from tests.unit.test_azure import add_nat, add_outbound, members, rule

SCHEMA = json.loads((REPO / "muxlab" / "muxlab.ovsschema").read_text())
MANUAL = (REPO / "docs" / "southbound.md").read_text()


def rows(facts=None):
    f = fabric()
    return southbound.rows_of(facts or default_facts(), lambda vm: f.vm(vm).host)


def compiled(raw_lbs):
    return compile_facts(parse_document({"loadBalancers": raw_lbs}), fabric())


def idl(r: southbound.Rows, host=None):
    """The rows as an agent's replica holds them (a host: its own per-VM rows only)."""
    return southbound.read(lambda t: [SimpleNamespace(**c) for c in r[t].values()
                                      if host is None or t not in southbound.PER_HOST or c["host"] == host])


# ---------------------------------------------------------------- the contract files agree


def test_every_contract_table_is_in_the_schema_with_exactly_its_columns_and_key():
    for table, (keys, columns) in southbound.TABLES.items():
        t = SCHEMA["tables"][table]
        assert set(t["columns"]) == set(columns), table
        assert [list(keys)] == t["indexes"], table


def test_the_manual_describes_every_table_and_column_of_the_schema():
    documented = {}
    table = None
    for line in MANUAL.splitlines():
        if m := re.match(r"^## `(\w+)`", line):
            table = m.group(1)
            documented[table] = set()
        elif (m := re.match(r"^- `(\w+)`", line)) and table:
            documented[table].add(m.group(1))
    assert set(documented) == set(SCHEMA["tables"])
    for name, t in SCHEMA["tables"].items():
        assert documented[name] == set(t["columns"]), name


def imported(module: str, seen=None) -> set[str]:
    """Every module `module` imports, following the repository's own modules (read, not run:
    the agents' kernel libraries live only in the node image)."""
    import ast
    seen = set() if seen is None else seen
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    if module in seen or not path.exists():
        return seen
    seen.add(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            seen.add(n)
            if n.split(".")[0] in ("muxlab", "mux", "hostagent"):
                imported(n, seen)
    return seen


def test_agents_import_nothing_of_the_azure_model_or_pydantic():
    forbidden = ("pydantic", "muxlab.lb.azure", "muxlab.lb.compiler", "muxlab.lb.check",
                 "muxlab.lb.allocation", "muxlab.lb.rows")
    for agent in ("mux.agent", "hostagent.agent", "muxlab.node.vmservice"):
        bad = sorted(m for m in imported(agent) if m.startswith(forbidden))
        assert bad == [], (agent, bad)


def test_the_vm_service_has_no_way_to_the_database():
    """A VM learns what to serve from its host's IMDS; it holds no OVSDB client at all."""
    mods = imported("muxlab.node.vmservice")
    assert not [m for m in mods if m.startswith(("ovs", "muxlab.node.ovsdb", "muxlab.node.desired"))], sorted(mods)


# ---------------------------------------------------------------- what the compiler writes


def test_the_default_lbs_round_trip_through_the_rows():
    facts = default_facts()
    back, problems = southbound.facts_of(idl(rows(facts)))
    assert problems == []
    assert set(back.rules) == set(facts.rules) and set(back.nat_ports) == set(facts.nat_ports)
    assert set(back.snat) == set(facts.snat) and set(back.vips) == set(facts.vips)
    assert set(back.hairpin_snat_vips) == set(facts.hairpin_snat_vips)
    web = next(r for r in back.rules if r.key == "web/http")
    assert [b.vm for b in web.backends] == ["vm1", "vm2", "vm3", "vm4", "vm5", "vm6"]   # pool order kept


def test_backends_carry_their_host_and_pool_position():
    r = rows()["Backend"]
    assert r[("web/web", 2)] == {"pool": "web/web", "position": 2, "vm": "vm3", "ip": "10.1.2.13", "host": "host2",
                                 "admin": "None"}


def test_admin_state_is_a_backend_column(raw_lbs):
    members(raw_lbs)[1]["properties"]["adminState"] = "Down"
    r = rows(compiled(raw_lbs))["Backend"]
    assert r[("web/web", 1)]["admin"] == "Down" and r[("web/web", 0)]["admin"] == "None"


def test_distribution_mode_floating_ip_and_idle_timeout_are_rule_columns(raw_lbs):
    rule(raw_lbs).update(loadDistribution="SourceIPProtocol", enableFloatingIP=True, backendPort=80, idleTimeoutInMinutes=7,
                         enableTcpReset=True)
    spm = fabric().seconds_per_minute
    r = rows(compiled(raw_lbs))["Rule"][("web", "http")]
    assert (r["distribution"], r["floating_ip"], r["idle_s"], r["tcp_reset"]) == ("SourceIPProtocol", True, 7 * spm, True)
    assert r["probe"] == "web/http-health" and r["pool"] == "web/web" and r["vip"] == "203.0.113.10"


def test_a_protocol_all_rule_is_two_rows(raw_lbs):
    rule(raw_lbs).update(protocol="All")
    r = rows(compiled(raw_lbs))["Rule"]
    assert {("web", "http-tcp"), ("web", "http-udp")} <= set(r) and ("web", "http") not in r


def test_a_nat_rule_in_pool_form_is_a_port_per_backend(raw_lbs):
    add_nat(raw_lbs, backendAddressPool={"id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/"
                                               "loadBalancers/web/backendAddressPools/web"},
            frontendPortRangeStart=50000, frontendPortRangeEnd=50009)
    r = rows(compiled(raw_lbs))["Nat_Port"]
    ports = {c["vm"]: (c["port"], c["backend_port"], c["host"]) for c in r.values() if c["rule"] == "ssh"}
    assert len(ports) == 6 and all(50000 <= p <= 50009 and b == 22 for p, b, _ in ports.values())
    assert len({p for p, _, _ in ports.values()}) == 6 and ports["vm5"][2] == "host3"


def test_snat_ranges_are_per_vm_rows_that_do_not_overlap(raw_lbs):
    add_outbound(raw_lbs, allocatedOutboundPorts=1024)
    r = rows(compiled(raw_lbs))["Snat_Range"]
    web = sorted((c["lo"], c["hi"]) for c in r.values() if c["lb"] == "web")
    assert len(web) == 6 and all(hi - lo + 1 == 1024 for lo, hi in web)
    assert all(a[1] < b[0] for a, b in zip(web, web[1:]))
    assert r[("vm1",)]["protocols"] == ["tcp", "udp"] and r[("vm1",)]["host"] == "host1"


def test_frontends_say_which_do_hairpin_snat(raw_lbs):
    raw_lbs["web"]["properties"]["hairpinSnat"] = True
    r = rows(compiled(raw_lbs))["Frontend"]
    assert r[("203.0.113.10",)]["hairpin_snat"] and not r[("203.0.113.20",)]["hairpin_snat"]


# ---------------------------------------------------------------- what agents read


def test_a_host_reads_its_own_vms_rows_only():
    back, _ = southbound.facts_of(idl(rows(), host="host2"))
    web = next(r for r in back.rules if r.key == "web/http")
    assert {b.vm for b in web.backends} == {"vm3", "vm4"}
    assert {s.vm for s in back.snat} <= {"vm3", "vm4"} and {n.vm for n in back.nat_ports} <= {"vm3", "vm4"}


def test_the_mux_programs_the_same_tables_from_the_rows_as_from_the_compiler():
    from mux import datapath
    f, facts = fabric(), default_facts()
    back, _ = southbound.facts_of(idl(rows(facts)))
    health = datapath.Health()
    a, b = datapath.rule_tables(f, facts, health), datapath.rule_tables(f, back, health)
    assert sorted((s.rule.key, s.table) for s in a) == sorted((s.rule.key, s.table) for s in b)


def test_the_host_programs_the_same_data_path_from_its_rows_as_from_the_compiler():
    from hostagent import datapath
    f, facts = fabric(), default_facts()
    back, _ = southbound.facts_of(idl(rows(facts), host="host1"))
    assert datapath.render_nft(f, back, "host1") == datapath.render_nft(f, facts, "host1")


def test_a_bad_row_is_skipped_and_named_and_the_rest_served():
    r = rows()
    r["Backend"][("web/web", 0)] = {**r["Backend"][("web/web", 0)], "ip": "not-an-address"}
    r["Rule"][("web", "dns")] = {**r["Rule"][("web", "dns")], "probe": "web/missing"}
    back, problems = southbound.facts_of(idl(r))
    assert len(problems) == 2 and any("Backend web/web/0" in p for p in problems)
    assert any("Rule web/dns" in p and "web/missing" in p for p in problems)
    assert "web/dns" not in {x.key for x in back.rules}
    assert [b.vm for b in next(x for x in back.rules if x.key == "web/http").backends] == ["vm2", "vm3", "vm4", "vm5", "vm6"]


def test_the_diff_touches_only_what_changed(raw_lbs):
    before = rows()
    members(raw_lbs)[5]["properties"]["adminState"] = "Down"
    d = southbound.diff(before, rows(compiled(raw_lbs)))
    assert d.insert == [] and d.delete == [] and d.update == [("Backend", ("web/web", 5), {"admin": "Down"})]
    assert not southbound.diff(before, before)
