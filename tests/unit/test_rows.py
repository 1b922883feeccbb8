"""No poison row: a Load_Balancer row the API would refuse, written around it, is skipped and
reported by the row rule (muxlab.lb.rows) the managers' store applies, and left out of the
southbound facts agents read; the other rows are served as usual."""
import json
from types import SimpleNamespace

import pytest

from muxlab.lb import southbound
from muxlab.lb.azure import NAME_RULE, canonical
from muxlab.lb.rows import RowReader, parse_row, read_rows
from muxlab.node.desired import FactsReader
from tests.unit.conftest import default_lbs, fabric


def spec(name="web", **change):
    body = canonical(default_lbs()[name])
    body.update(change)
    return json.dumps(body, sort_keys=True)


def good_rows():
    return [(n, spec(n), "{}") for n in sorted(default_lbs())]


def row(name, spec_text, alloc="{}"):
    return SimpleNamespace(name=name, spec=spec_text, allocations=alloc)


# a row of each kind the API would refuse: (name, spec, allocations, what its reason says)
web_with_stranger = json.loads(spec("web"))
web_with_stranger["properties"]["backendAddressPools"][0]["properties"]["loadBalancerBackendAddresses"][0][
    "properties"]["ipAddress"] = "10.1.1.99"
POISON = [
    ("not JSON", "bad", "{not json", "{}", "spec is not JSON"),
    ("not a load balancer", "bad", json.dumps({"properties": {}}), "{}",
     "spec is not a valid load balancer: properties.frontendIPConfigurations"),
    ("duplicate key", "bad", '{"properties": {}, "properties": {}}', "{}", "duplicate key 'properties'"),
    ("bad name", "a b", spec("bench"), "{}", NAME_RULE),
    ("allocations not JSON", "bad", spec("bench"), "[[", "allocations are not JSON"),
    ("allocations not an object", "bad", spec("bench"), "[1]", "allocations are not a JSON object"),
    ("spec is null", "bad", None, "{}", "spec is not JSON"),
    ("refused by check", "web", json.dumps(web_with_stranger), "{}",
     "refused by the checks against the fabric: web.properties.backendAddressPools[0]"),
]


@pytest.mark.parametrize("name,spec_text,alloc,reason", [p[1:] for p in POISON], ids=[p[0] for p in POISON])
def test_poison_row_is_skipped_with_its_reason_and_the_rest_is_read(name, spec_text, alloc, reason):
    rows = [r for r in good_rows() if r[0] != name] + [(name, spec_text, alloc)]
    out = read_rows(rows, fabric())
    assert [i["name"] for i in out.invalid] == [name]
    assert reason in out.invalid[0]["reason"]
    assert set(out.lbs) == set(default_lbs()) - {name}
    assert set(out.allocations) == set(out.lbs)


def test_good_rows_are_all_valid():
    out = read_rows(good_rows(), fabric())
    assert out.invalid == [] and set(out.lbs) == set(default_lbs())


def test_a_clash_between_two_rows_is_blamed_on_the_later_one():
    clash = json.loads(spec("bench"))
    clash["properties"]["frontendIPConfigurations"][0]["properties"]["publicIPAddress"]["properties"]["ipAddress"] = \
        "203.0.113.10"   # web's VIP
    out = read_rows(good_rows() + [("zz", json.dumps(clash), "{}")], fabric())
    assert [i["name"] for i in out.invalid] == ["zz"]
    assert "already used by web" in out.invalid[0]["reason"]
    assert set(out.lbs) == set(default_lbs())


def test_without_a_fabric_only_the_row_itself_is_judged():
    out = read_rows([("web", json.dumps(web_with_stranger), "{}"), ("x", "nope", "{}")])
    assert set(out.lbs) == {"web"} and [i["name"] for i in out.invalid] == ["x"]


def test_parse_row_says_why():
    with pytest.raises(ValueError, match="spec is not JSON"):
        parse_row("x", "", "{}")
    lb, alloc = parse_row("web", spec("web"), None)
    assert alloc == {} and lb.properties.frontendIPConfigurations[0].name == "web-fe"


def test_reader_reads_again_only_when_a_row_changed():
    reader = RowReader(fabric())
    rows = [row(*r) for r in good_rows()]
    first = reader.read(rows)
    assert reader.read(list(reversed(rows))) is first
    rows.append(row("bad", "{"))
    second = reader.read(rows)
    assert second is not first and [i["name"] for i in second.invalid] == ["bad"]


# ---------------------------------------------------------------- compiling what is valid


class FakeDb:
    def __init__(self, rows):
        self.tables = {"Load_Balancer": rows}

    def rows(self, table):
        return list(self.tables.get(table, []))


def test_a_load_balancer_that_does_not_compile_is_left_out_and_named(monkeypatch):
    from muxlab.lb import compiler
    real = compiler.compile_facts

    def fragile(lbs, fabric, allocations=None):
        if "direct" in lbs:
            raise KeyError("vm9")
        return real(lbs, fabric, allocations)
    monkeypatch.setattr(compiler, "compile_facts", fragile)
    facts, skipped = compiler.compile_each(default_lbs(), fabric(), {})
    assert {r.lb for r in facts.rules} == {"web", "bench"}
    assert skipped == {"direct": "does not compile: KeyError: 'vm9'"}


def test_the_store_compiles_the_valid_rows_into_the_southbound_and_reports_the_rest(poisoned_store):
    store, db = poisoned_store
    store.change(lambda held: {})   # any write compiles the whole set, the poison row left out
    facts = store.snapshot()["facts"]
    assert {r.lb for r in facts.rules} == {"web", "direct", "bench"}
    assert db.rows("Global")[0].southbound_digest
    assert [i["name"] for i in store.invalid()] == ["bad"]


# ---------------------------------------------------------------- the managers' store


class Txn:
    def __init__(self, db):
        self.db = db

    def insert(self, table):
        table = table.name
        r = StoreRow(self.db, table, **({"name": None, "spec": None, "allocations": None, "frontends": []}
                                        if table == "Load_Balancer" else {}))
        self.db.tables.setdefault(table, []).append(r)
        return r


class IdlTable:
    """What the store and the agents' reader use of an IDL table: its name, its rows."""

    def __init__(self, db, name):
        self.db, self.name = db, name

    @property
    def rows(self):
        return dict(enumerate(self.db.tables.get(self.name, [])))


class StoreRow(SimpleNamespace):
    def __init__(self, db, table, **kw):
        super().__init__(**kw)
        self._db, self._table = db, table

    def delete(self):
        self._db.tables[self._table].remove(self)

    def verify(self, column):
        pass


class StoreDb(FakeDb):
    synced = True

    def __init__(self, rows):
        super().__init__([StoreRow(self, "Load_Balancer", **vars(r)) for r in rows])
        self.tables["Global"] = [StoreRow(self, "Global", nb_cfg=4, seeded=True, mtu_remedies=[], southbound_digest="")]
        self.idl = SimpleNamespace(tables={t: IdlTable(self, t) for t in ("Load_Balancer", *southbound.TABLES)})

    def transact(self, build):
        return "success", build(Txn(self))


@pytest.fixture
def poisoned_store():
    from manager.store import Store
    store = Store.__new__(Store)   # no OVSDB: the DB thread's work runs inline on a fake IDL
    store.fabric = fabric()
    store.rows = RowReader(store.fabric)
    store.uncompiled, store.reader = {}, FactsReader(log=lambda line: None)
    db = StoreDb([row(*r) for r in good_rows()] + [row("bad", '{"properties": 1}', "not json")])
    store.call = lambda fn, timeout=15.0: fn(db)
    store.wait_synced = lambda timeout=10.0: None
    return store, db


def test_store_snapshot_skips_and_reports_the_invalid_row(poisoned_store):
    store, db = poisoned_store
    assert set(store.held(db)) == set(default_lbs())
    snap = store.snapshot()
    assert set(snap["load_balancers"]) == set(default_lbs()) == set(snap["allocations"])
    assert [i["name"] for i in snap["invalid"]] == ["bad"]
    assert "spec is not a valid load balancer: properties" in snap["invalid"][0]["reason"]
    assert store.invalid() == snap["invalid"]


def test_store_writes_the_rest_as_usual_and_deletes_the_invalid_row(poisoned_store):
    store, db = poisoned_store
    body = default_lbs()["bench"].model_copy(deep=True)
    body.properties.loadBalancingRules[0].properties.idleTimeoutInMinutes = 9
    cfg, stored = store.change(lambda held: {"bench": body})
    assert cfg == 5 and set(stored) == {"bench"}
    assert [r.name for r in db.rows("Load_Balancer")].count("bad") == 1   # left alone
    cfg, _ = store.change(lambda held: {"bad": None})
    assert cfg == 6 and "bad" not in [r.name for r in db.rows("Load_Balancer")]
    assert store.snapshot()["invalid"] == []


def test_format_status_prints_the_invalid_rows():
    from muxlab.cli.lab import format_status
    st = {"lab": "muxlab", "topology": "t.yml", "nodes": [], "bgp": {}, "vips": {}, "load_balancers": ["web"],
          "nb_cfg": 3, "managers": {"manager1": {"url": "https://172.30.1.201:8080", "role": "leader"}},
          "invalid": [{"name": "bad", "reason": "spec is not JSON: Expecting value"}]}
    text = format_status(st)
    assert "INVALID stored load balancer 'bad'" in text and "spec is not JSON: Expecting value" in text


def test_status_summarises_a_vms_probes_and_lists_them_on_request():
    from muxlab.cli.lab import format_status
    probes = {f"lb{i}/http": {"up": i != 7, "last_error": "connection refused" if i == 7 else ""} for i in range(40)}
    st = {"lab": "muxlab", "topology": "t.yml", "nodes": [], "bgp": {}, "vips": {}, "load_balancers": ["web"],
          "nb_cfg": 3, "managers": {}, "probes": {"vm1": {"host": "host1", "host_alive": True, "probes": probes}}}
    line = next(x for x in format_status(st).splitlines() if x.startswith("vm1"))
    assert "39 up, 1 DOWN: lb7/http (connection refused)" in line and "lb3/http" not in line
    full = next(x for x in format_status(st, all_probes=True).splitlines() if x.startswith("vm1"))
    assert full.count(": up") == 39 and "lb7/http: DOWN (connection refused)" in full
