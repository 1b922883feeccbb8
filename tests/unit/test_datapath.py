"""MUX and host-agent kernel state computed from the fabric, the load balancers and health
(pure), and checked by nft."""
import re
import shutil
import subprocess

import pytest

from hostagent import datapath as host_dp
from mux import datapath as mux_dp
from tests.unit.conftest import default_facts, default_lbs, fabric

HEALTHY = mux_dp.Health()


def tables(health=HEALTHY, lbs=None):
    return {s.rule.key: s for s in mux_dp.rule_tables(fabric(), default_facts(lbs), health)}


def ruleset(health=HEALTHY, lbs=None):
    facts = default_facts(lbs)
    return mux_dp.ruleset(fabric(), facts, mux_dp.rule_tables(fabric(), facts, health)).render()


def sick(*vms, probe="web/http-health"):
    return mux_dp.Health(probes={(vm, probe): False for vm in vms})


def test_every_mux_computes_the_same_tables():
    assert [s.table for s in tables().values()] == [s.table for s in tables().values()]
    assert ruleset() == ruleset()


def test_table_size_is_prime_and_fixed_by_pool_not_health():
    s = tables()["web/http"]
    assert s.size == 601 and None not in s.table and s.chain == f"pick_default_{s.table_name[7:]}"
    sick_ = tables(sick("vm3"))["web/http"]
    assert sick_.size == 601 and "vm3" not in sick_.table
    # only vm3's buckets (and Maglev's small slack) moved
    changed = sum(1 for x, y in zip(s.table, sick_.table) if x != y)
    assert changed < s.table.count("vm3") * 1.2


def test_unhealthy_probe_only_affects_rules_using_it():
    s = tables(sick("vm3"))
    assert "vm3" not in s["web/http"].table and "vm3" in s["web/dns"].table


def test_announce_follows_health_and_drain():
    def announce(health):
        return mux_dp.announceable_vips(mux_dp.rule_tables(fabric(), default_facts(), health), health)
    assert announce(HEALTHY) == ["203.0.113.10/32", "203.0.113.20/32", "203.0.113.30/32"]
    assert announce(mux_dp.Health(drained=True)) == []
    down = mux_dp.Health(probes={(vm, p): False for vm in ("vm1", "vm2", "vm3", "vm4", "vm5", "vm6")
                                 for p in ("web/http-health", "web/tcp-dns")})
    assert "203.0.113.10/32" not in announce(down)


def with_backend(state, vm="vm3"):
    lbs = default_lbs()
    web = lbs["web"].model_copy(deep=True)
    for b in web.properties.backendAddressPools[0].properties.loadBalancerBackendAddresses:
        if b.name == vm:
            b.properties.adminState = state
    return {**lbs, "web": web}


def test_admin_state_down_leaves_the_table_up_overrides_the_probe():
    assert "vm3" not in tables(lbs=with_backend("Down"))["web/http"].table
    assert "vm3" in tables(sick("vm3"), lbs=with_backend("Up"))["web/http"].table
    assert "vm3" not in tables(sick("vm3"), lbs=with_backend("None"))["web/http"].table
    # a dead host wins over adminState Up: nobody is there to answer
    dead = mux_dp.Health(dead_hosts=frozenset({"host2"}))
    assert "vm3" not in tables(dead, lbs=with_backend("Up"))["web/http"].table


@pytest.mark.parametrize("mode,fields", [("Default", "ip saddr . th sport . ip daddr . th dport"),
                                         ("SourceIP", "ip saddr . ip daddr"),
                                         ("SourceIPProtocol", "ip saddr . ip daddr . meta l4proto")])
def test_load_distribution_picks_the_hashed_fields(mode, fields):
    lbs = default_lbs()
    web = lbs["web"].model_copy(deep=True)
    web.properties.loadBalancingRules[0].properties.loadDistribution = mode
    text = ruleset(lbs={**lbs, "web": web})
    table = tables(lbs={**lbs, "web": web})["web/http"].table_name
    assert f"meta mark set jhash {fields} mod 601 seed 0x4d55584c map @{table}" in text


def test_mux_ruleset_shape():
    text = ruleset()
    http = tables()["web/http"]
    assert f"203.0.113.10 . tcp . 80 : goto {http.chain}" in text
    assert f"jhash ip saddr . th sport . ip daddr . th dport mod 601 seed 0x4d55584c map @{http.table_name}" in text
    assert "tcp flags & (syn | ack) == syn notrack" in text
    assert "ct mark != 0 meta mark set ct mark accept" in text
    assert text.count(": 0x0a01010b") > 50  # vm1's buckets


def test_dip_routes_carry_overlay_mac_and_host():
    r = {x.dip: x for x in mux_dp.dip_routes(fabric())}
    assert r["10.1.2.14"].mac == "02:00:0a:01:02:0e" and r["10.1.2.14"].host_vtep == "10.0.2.3"
    assert r["10.1.2.14"].mark == 0x0A01020E


def test_host_ruleset_only_local_rules():
    text = host_dp.render_nft(fabric(), default_facts(), "host1")
    assert "0x0a01010b . 203.0.113.10 . tcp . 80 : 10.1.1.11 . 8080" in text
    assert "10.1.2.13" not in text
    assert "0x0a01010c . 203.0.113.20 . tcp . 7000" in text  # vm2 floating IP
    assert "udp dport 4789 ip saddr != @muxes ip saddr != @peer_hosts counter name spoofed_vxlan drop" in text
    assert "elements = { 10.0.1.1, 10.0.1.3, 10.0.1.5 }" in text


needs_nft = pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare") or subprocess.run(
    ["unshare", "--net", "true"], capture_output=True).returncode != 0, reason="needs nft and root for a private netns")


@needs_nft
@pytest.mark.parametrize("mode", ["SourceIP", "SourceIPProtocol"])
def test_distribution_rulesets_load_in_the_kernel(mode):
    lbs = default_lbs()
    web = lbs["web"].model_copy(deep=True)
    web.properties.loadBalancingRules[0].properties.loadDistribution = mode
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && nft -f /dev/stdin"],
                          input=ruleset(lbs={**lbs, "web": web}), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


@needs_nft
@pytest.mark.parametrize("which", ["mux", "host", "edge"])
def test_rulesets_load_in_the_kernel(which):
    """nft parses and the kernel accepts the rendered rulesets (in a throwaway network namespace)."""
    from muxlab.fabric.render import render_edge_nft
    text = {"mux": lambda: ruleset(), "host": lambda: host_dp.render_nft(fabric(), default_facts(), "host1"),
            "edge": lambda: render_edge_nft(fabric())}[which]()
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && nft -f /dev/stdin"],
                          input=text + text, text=True, capture_output=True)  # applied twice: idempotent replace
    assert proc.returncode == 0, proc.stderr


def chains_setting_timeouts(text: str) -> set[str]:
    """The priority of every base chain holding a `ct timeout set` rule, or reaching one by a
    jump or goto (in a rule, or in a verdict map a rule looks up)."""
    priority: dict[str, str] = {}          # base chain -> its priority
    reaches: dict[str, set[str]] = {}      # chain or verdict map -> the chains and maps it leads to
    setting, chain = set(), None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["chain"]:
            chain = words[1]
        elif words[:1] == ["map"]:
            reaches.setdefault(words[1], set()).update(re.findall(r"(?:jump|goto) (\w+)", line))
        elif chain and "hook" in words:
            priority[chain] = line.split("priority")[1].split(";")[0].strip()
        elif chain:
            reaches.setdefault(chain, set()).update(
                n for pair in re.findall(r"(?:jump|goto) (\w+)|vmap @(\w+)", line) for n in pair if n)
            if "ct timeout set" in line:
                setting.add(chain)

    def leads_to_setting(name: str, seen: frozenset = frozenset()) -> bool:
        return name in setting or any(leads_to_setting(n, seen | {name}) for n in reaches.get(name, ()) if n not in seen)

    return {p for base, p in priority.items() if leads_to_setting(base)}


def test_idle_timeouts_attach_after_conntrack_made_the_entry():
    """A timeout policy set before conntrack (the raw chain, -300) finds no entry to attach to
    and silently does nothing: the idle timeout would never expire a flow."""
    for text in (ruleset(), host_dp.render_nft(fabric(), default_facts(), "host1")):
        assert chains_setting_timeouts(text) == {"mangle"}


def test_snat_holders_are_the_reply_destinations():
    from hostagent.usage import snat_holders
    listing = ("tcp      6 9 CLOSE src=10.1.2.13 dst=192.0.2.10 sport=45165 dport=9000 src=192.0.2.10 dst=203.0.113.11 "
               "sport=9000 dport=3800 [ASSURED] mark=0 use=1\n"
               "udp      17 29 src=10.1.2.14 dst=192.0.2.10 sport=5353 dport=53 [UNREPLIED] src=192.0.2.10 dst=203.0.113.11 "
               "sport=53 dport=4100 mark=0 use=1\n")
    assert snat_holders(listing) == {("203.0.113.11", 3800), ("203.0.113.11", 4100)}


def test_bgp_helper_batches_prefixes_into_few_commands():
    from mux.bgp_helper import BATCH, commands
    prefixes = [f"10.1.{i // 250}.{i % 250}/32" for i in range(2 * BATCH + 1)]
    lines = commands("announce", prefixes)
    assert len(lines) == 3 and all(line.startswith("announce attributes next-hop self nlri ") for line in lines)
    assert sum(len(line.split("nlri ")[1].split()) for line in lines) == len(prefixes)
    assert commands("withdraw", []) == []


def test_rules_with_the_same_pool_and_probe_share_one_map_and_chain():
    """One Maglev map and one picking chain serve every rule with the same pool members and
    probe (here: bench's TCP and UDP halves of protocol All); a probe failing changes that
    map's contents, never its name, so the services map need not be touched."""
    healthy, split = tables(), tables(sick("vm3"))
    assert healthy["web/http"].table_name != healthy["web/dns"].table_name   # different probes
    assert split["web/http"].table_name == healthy["web/http"].table_name
    shared = [s for k, s in healthy.items() if k.startswith("bench/")]
    assert len(shared) == 2 and len({(s.table_name, s.chain) for s in shared}) == 1
    assert ruleset().count(f"map {shared[0].table_name} ") == 1


def test_internal_frontends_refuse_sources_outside_the_vnet_before_any_lookup():
    text = ruleset()
    pre = text.split("chain prerouting {")[1].split("}")[0]
    rule = "ip daddr 10.1.0.0/16 ip saddr != 10.1.0.0/16 counter name ilb_not_vnet drop"
    assert rule in pre and "counter ilb_not_vnet {}" in text
    assert pre.index(rule) < pre.index("ct mark != 0") < pre.index("vmap @services")


def test_host_keeps_vms_off_the_management_interface():
    text = host_dp.render_nft(fabric(), default_facts(), "host1", management=("172.30.1.7/24", "172.30.1.7"))
    assert "set management { type ipv4_addr; flags interval; elements = { 172.30.1.0/24 }; }" in text
    fwd = text.split("chain forward {")[1].split("}")[0].splitlines()
    assert fwd[2].strip() == 'iifname "br0" oifname "eth0" counter name to_management drop'
    assert 'iifname "br0" ip daddr @management counter name to_management drop' in text.split("chain input {")[1]


@pytest.mark.parametrize("behaviour,want", [("AllProbedDown", set()), ("AllProbedUp", {"vm1", "vm2", "vm3", "vm4", "vm5", "vm6"})])
def test_no_healthy_backends_behaviour(behaviour, want):
    """Azure's noHealthyBackendsBehavior: every backend probed down gives no new flows, or all
    of them (AllProbedUp); an adminState Down backend stays out either way."""
    lbs = default_lbs()
    web = lbs["web"].model_copy(deep=True)
    web.properties.probes[0].properties.noHealthyBackendsBehavior = behaviour
    every = ("vm1", "vm2", "vm3", "vm4", "vm5", "vm6")
    assert set(tables(sick(*every), {**lbs, "web": web})["web/http"].table) - {None} == want
    assert set(tables(sick("vm1"), {**lbs, "web": web})["web/http"].table) == set(every) - {"vm1"}   # some up: as ever
    web.properties.backendAddressPools[0].properties.loadBalancerBackendAddresses[1].properties.adminState = "Down"
    assert "vm2" not in set(tables(sick(*every), {**lbs, "web": web})["web/http"].table)
