"""A MUX's nft table as data, and the one-transaction difference between two of them: pure
checks of what the difference touches, then the kernel's own proof that loading the old table
and applying the difference leaves exactly what loading the new table whole would."""
import json
import subprocess

import pytest

from mux import datapath as mux_dp
from muxlab.datapath import nfttable
from tests.unit.conftest import default_facts, default_lbs, fabric
from tests.unit.test_datapath import needs_nft, sick

HEALTHY = mux_dp.Health()


def table(health=HEALTHY, lbs=None, remedies=None):
    facts = default_facts(lbs)
    return mux_dp.ruleset(fabric(), facts, mux_dp.rule_tables(fabric(), facts, health), remedies)


def changed_lbs(change):
    lbs = {n: lb.model_copy(deep=True) for n, lb in default_lbs().items()}
    change(lbs)
    return lbs


def idle_web(lbs):
    lbs["web"].properties.loadBalancingRules[0].properties.idleTimeoutInMinutes = 9


def drop_bench(lbs):
    del lbs["bench"]


def drop_vm6(lbs):
    pool = lbs["web"].properties.backendAddressPools[0].properties
    pool.loadBalancerBackendAddresses = [b for b in pool.loadBalancerBackendAddresses if b.name != "vm6"]


def no_outbound(lbs):
    lbs["web"].properties.outboundRules = []


def test_a_probe_flap_touches_only_the_moved_buckets():
    script = nfttable.update(table(), table(sick("vm3")))
    lines = script.splitlines()
    assert all(line.split()[0] in ("delete", "add") and " element " in line for line in lines), script
    moved = sum(1 for a, b in zip(mux_dp.rule_tables(fabric(), default_facts(), HEALTHY)[4].table,
                                  mux_dp.rule_tables(fabric(), default_facts(), sick("vm3"))[4].table) if a != b)
    assert script.count(" : 0x") == moved      # each moved bucket re-added once with its new DIP
    assert "services" not in script and "chain" not in script


def test_nothing_changed_is_an_empty_update():
    assert nfttable.update(table(), table()) == ""


def test_a_removed_load_balancer_loses_its_elements_chain_and_map():
    old, new = table(), table(lbs=changed_lbs(drop_bench))
    script = nfttable.update(old, new)
    gone = [n for n in old.sets if n not in new.sets]
    assert len(gone) == 1 and f"delete map ip muxlab_mux {gone[0]}" in script
    # the verdict map stops pointing at the chain before the chain goes
    assert script.index("delete element ip muxlab_mux services") < script.index("delete chain")


def test_a_changed_set_type_needs_the_whole_table():
    old = table()
    new = nfttable.Table(old.family, old.name, old.objects, {**old.sets, "vips": nfttable.Set("set", "type ipv4_addr; flags interval;")},
                         old.chains)
    assert nfttable.update(old, new) is None


@needs_nft
@pytest.mark.parametrize("change", ["flap", "host dead", "idle timeout", "load balancer removed", "backend removed",
                                    "outbound rule removed", "mtu remedies off", "everything back"])
def test_the_kernel_ends_where_a_whole_load_would(change, tmp_path):
    before, after = table(), {
        "flap": lambda: table(sick("vm3")),
        "host dead": lambda: table(mux_dp.Health(dead_hosts=frozenset({"host1", "host2"}))),
        "idle timeout": lambda: table(lbs=changed_lbs(idle_web)),
        "load balancer removed": lambda: table(lbs=changed_lbs(drop_bench)),
        "backend removed": lambda: table(lbs=changed_lbs(drop_vm6)),
        "outbound rule removed": lambda: table(lbs=changed_lbs(no_outbound)),
        "mtu remedies off": lambda: table(remedies=frozenset()),
        "everything back": lambda: table(),
    }[change]()
    if change == "everything back":
        before = table(sick("vm3", "vm4"), lbs=changed_lbs(drop_bench))
    script = nfttable.update(before, after)
    assert script, change
    for name, text in (("before", before.render()), ("update", script), ("after", after.render())):
        (tmp_path / name).write_text(text)
    listing = "nft -j list table ip muxlab_mux"
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && "
                           f"nft -f before && nft -f update && {listing} > updated && nft -f after && {listing} > whole"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert canonical(tmp_path / "updated") == canonical(tmp_path / "whole")


def canonical(listing) -> tuple:
    """A table's JSON listing without what depends on the order things were created in:
    handles, the order of declarations and of a set's elements (a chain's rules keep theirs)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "handle"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    items = [strip(i) for i in json.loads(listing.read_text())["nftables"] if "metainfo" not in i]
    for i in items:
        for kind in ("set", "map"):
            if kind in i and "elem" in i[kind]:
                i[kind]["elem"] = sorted(i[kind]["elem"], key=json.dumps)
    rules: dict[str, list] = {}
    for i in items:
        if "rule" in i:
            rules.setdefault(i["rule"]["chain"], []).append(json.dumps(i, sort_keys=True))
    return sorted(json.dumps(i, sort_keys=True) for i in items if "rule" not in i), sorted(rules.items())
