"""The Azure-shaped load balancer model: good input parses and compiles; each bad input is refused
with its field path and a message that says what is wrong (the manager applies nothing then)."""
import json

import pytest

from muxlab.fabric.lab import ModelError
from muxlab.lb.allocation import allocate
from muxlab.lb.azure import canonical, json_schema, load_document, parse_document, parse_lb, ref_parts
from muxlab.lb.check import allocate_public_ips, check, default_outbound_ports
from muxlab.lb.compiler import compile_facts
from muxlab.lb.diff import diff
from muxlab.lb.facts import guest_config
from tests.unit.conftest import REPO, default_lbs, fabric

W = "loadBalancers.web.properties"       # paths of the file's shape (pydantic)
C = "web.properties"                      # paths of the cross-checks (load balancer name first)


def rule(raw, i=0):
    return raw["web"]["properties"]["loadBalancingRules"][i]["properties"]


def web(raw):
    return raw["web"]["properties"]


def fe_ip(raw, lb="web"):
    return raw[lb]["properties"]["frontendIPConfigurations"][0]["properties"]["publicIPAddress"]["properties"]


def ref(kind, name):
    return {"id": f"/subscriptions/x/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/web/{kind}/{name}"}


def add_rule(raw, **props):
    base = {"frontendIPConfiguration": ref("frontendIPConfigurations", "web-fe"),
            "backendAddressPool": ref("backendAddressPools", "web"), "protocol": "Tcp", "frontendPort": 81, "backendPort": 81}
    web(raw)["loadBalancingRules"].append({"name": props.pop("name", "extra"), "properties": {**base, **props}})


def add_nat(raw, **props):
    base = {"frontendIPConfiguration": ref("frontendIPConfigurations", "web-fe"), "protocol": "Tcp", "backendPort": 22}
    web(raw).setdefault("inboundNatRules", []).append({"name": "ssh", "properties": {**base, **props}})


def add_outbound(raw, **props):
    base = {"frontendIPConfigurations": [ref("frontendIPConfigurations", "web-fe")],
            "backendAddressPool": ref("backendAddressPools", "web"), "protocol": "All"}
    web(raw)["outboundRules"] = [{"name": "out", "properties": {**base, **props}}]


def problems_of(raw, previous=None, changed=()):
    """What the manager would say: the file's shape first, then the cross-checks."""
    try:
        lbs = parse_document({"loadBalancers": raw})
    except ModelError as exc:
        return exc.problems
    return check(lbs, fabric(), previous, changed) or allocate(lbs, fabric())[1]


def members(raw, pool=0):
    return web(raw)["backendAddressPools"][pool]["properties"]["loadBalancerBackendAddresses"]


BAD = [
    # ---- shape (pydantic): unknown keys, types, ranges, per-object rules
    ("unknown top-level key", lambda r: r["web"].update(bogus=1), "loadBalancers.web.bogus", "unknown field"),
    ("unknown rule key", lambda r: rule(r).update(prot="Tcp"), f"{W}.loadBalancingRules[0].properties.prot", "unknown field"),
    ("rule protocol", lambda r: rule(r).update(protocol="Sctp"), f"{W}.loadBalancingRules[0].properties.protocol", "'Tcp', 'Udp' or 'All'"),
    ("frontend port too high", lambda r: rule(r).update(frontendPort=70000), f"{W}.loadBalancingRules[0].properties.frontendPort", "less than or equal to 65534"),
    ("backend port negative", lambda r: rule(r).update(backendPort=-1), f"{W}.loadBalancingRules[0].properties.backendPort", "greater than or equal to 0"),
    ("HA ports", lambda r: rule(r).update(frontendPort=0, protocol="All"), f"{W}.loadBalancingRules[0].properties", "HA ports"),
    ("port not a number", lambda r: rule(r).update(frontendPort="eighty"), f"{W}.loadBalancingRules[0].properties.frontendPort", "valid integer"),
    ("floating IP with other ports", lambda r: r["direct"]["properties"]["loadBalancingRules"][0]["properties"].update(backendPort=7001),
     "loadBalancers.direct.properties.loadBalancingRules[0].properties", "must equal frontendPort"),
    ("load distribution", lambda r: rule(r).update(loadDistribution="RoundRobin"), f"{W}.loadBalancingRules[0].properties.loadDistribution", "'Default', 'SourceIP' or 'SourceIPProtocol'"),
    ("idle timeout below 4", lambda r: rule(r).update(idleTimeoutInMinutes=3), f"{W}.loadBalancingRules[0].properties.idleTimeoutInMinutes", "greater than or equal to 4"),
    ("idle timeout above 30", lambda r: rule(r).update(idleTimeoutInMinutes=31), f"{W}.loadBalancingRules[0].properties.idleTimeoutInMinutes", "less than or equal to 30"),
    ("floating IP not a boolean", lambda r: rule(r).update(enableFloatingIP="maybe"), f"{W}.loadBalancingRules[0].properties.enableFloatingIP", "valid boolean"),
    ("rule without pool", lambda r: rule(r).pop("backendAddressPool"), f"{W}.loadBalancingRules[0].properties", "needs backendAddressPool"),
    ("malformed reference", lambda r: rule(r).update(probe={"id": "http-health"}), f"{W}.loadBalancingRules[0].properties.probe.id", "must end in /KIND/NAME"),
    ("bad frontend address", lambda r: fe_ip(r).update(ipAddress="203.0.113.300"),
     f"{W}.frontendIPConfigurations[0].properties.publicIPAddress.properties.ipAddress", "valid IPv4 address"),
    ("frontend both private and public", lambda r: web(r)["frontendIPConfigurations"][0]["properties"].update(privateIPAddress="10.1.100.5"),
     f"{W}.frontendIPConfigurations[0].properties", "not both or neither"),
    ("frontend without address", lambda r: web(r)["frontendIPConfigurations"][0].update(properties={}),
     f"{W}.frontendIPConfigurations[0].properties", "not both or neither"),
    ("no frontends", lambda r: web(r).update(frontendIPConfigurations=[]), f"{W}.frontendIPConfigurations", "at least 1 item"),
    ("child name", lambda r: web(r)["backendAddressPools"][0].update(name="-web"), f"{W}.backendAddressPools[0].name", "must be an Azure resource name"),
    ("backend address", lambda r: members(r)[0]["properties"].update(ipAddress="vm1"),
     f"{W}.backendAddressPools[0].properties.loadBalancerBackendAddresses[0].properties.ipAddress", "valid IPv4 address"),
    ("admin state", lambda r: members(r)[0]["properties"].update(adminState="Drained"),
     f"{W}.backendAddressPools[0].properties.loadBalancerBackendAddresses[0].properties.adminState", "'None', 'Up' or 'Down'"),
    ("probe protocol", lambda r: web(r)["probes"][0]["properties"].update(protocol="Https"), f"{W}.probes[0].properties.protocol", "'Tcp' or 'Http'"),
    ("http probe without path", lambda r: web(r)["probes"][0]["properties"].pop("requestPath"), f"{W}.probes[0].properties", "needs requestPath"),
    ("tcp probe with path", lambda r: web(r)["probes"][1]["properties"].update(requestPath="/x"), f"{W}.probes[1].properties", "only Http probes"),
    ("probe path with a space", lambda r: web(r)["probes"][0]["properties"].update(requestPath="/he alth"), f"{W}.probes[0].properties", "URI characters"),
    ("probe interval 0", lambda r: web(r)["probes"][0]["properties"].update(intervalInSeconds=0), f"{W}.probes[0].properties.intervalInSeconds", "greater than or equal to 1"),
    ("probe threshold 0", lambda r: web(r)["probes"][0]["properties"].update(probeThreshold=0), f"{W}.probes[0].properties.probeThreshold", "greater than or equal to 1"),
    ("probe port 0", lambda r: web(r)["probes"][0]["properties"].update(port=0), f"{W}.probes[0].properties.port", "greater than or equal to 1"),
    ("outbound ports not a multiple of 8", lambda r: add_outbound(r, allocatedOutboundPorts=100),
     f"{W}.outboundRules[0].properties.allocatedOutboundPorts", "multiple of 8"),
    ("outbound ports above 64000", lambda r: add_outbound(r, allocatedOutboundPorts=64008),
     f"{W}.outboundRules[0].properties.allocatedOutboundPorts", "less than or equal to 64000"),
    ("outbound rule without frontends", lambda r: add_outbound(r, frontendIPConfigurations=[]),
     f"{W}.outboundRules[0].properties.frontendIPConfigurations", "at least 1 item"),
    ("NAT rule in both forms", lambda r: add_nat(r, frontendPort=2222, frontendPortRangeStart=50000, frontendPortRangeEnd=50010,
                                                backendAddressPool=ref("backendAddressPools", "web")),
     f"{W}.inboundNatRules[0].properties", "not both or neither"),
    ("NAT range reversed", lambda r: add_nat(r, frontendPortRangeStart=50010, frontendPortRangeEnd=50000,
                                            backendAddressPool=ref("backendAddressPools", "web")),
     f"{W}.inboundNatRules[0].properties", "is below frontendPortRangeStart"),
    ("NAT range without pool", lambda r: add_nat(r, frontendPortRangeStart=50000, frontendPortRangeEnd=50010),
     f"{W}.inboundNatRules[0].properties", "needs backendAddressPool"),
    ("NAT single port without backend", lambda r: add_nat(r, frontendPort=2222), f"{W}.inboundNatRules[0].properties", "needs backendIPAddress"),
    ("inbound NAT pools", lambda r: web(r).update(inboundNatPools=[{"name": "x"}]), f"{W}.inboundNatPools", "at most 0 items"),
    ("load balancer name", lambda r: r.update({"bad name!": r["bench"]}), "loadBalancers.bad name!.name", "Azure resource name"),
    # ---- cross-checks: references, clashes, the fabric, other load balancers, history
    ("missing pool", lambda r: rule(r).update(backendAddressPool=ref("backendAddressPools", "nosuch")),
     f"{C}.loadBalancingRules[0].properties.backendAddressPool.id", "no backend pool named 'nosuch'"),
    ("missing probe", lambda r: rule(r).update(probe=ref("probes", "nosuch")),
     f"{C}.loadBalancingRules[0].properties.probe.id", "no probe named 'nosuch'"),
    ("missing frontend", lambda r: rule(r).update(frontendIPConfiguration=ref("frontendIPConfigurations", "nosuch")),
     f"{C}.loadBalancingRules[0].properties.frontendIPConfiguration.id", "no frontend named 'nosuch'"),
    ("reference of the wrong kind", lambda r: rule(r).update(backendAddressPool=ref("probes", "http-health")),
     f"{C}.loadBalancingRules[0].properties.backendAddressPool.id", "must reference backendAddressPools/NAME"),
    ("two rules on one port", lambda r: add_rule(r, frontendPort=80),
     f"{C}.loadBalancingRules[2].properties.frontendPort", "tcp/80 on frontend web-fe is already taken by web.loadBalancingRules[0]"),
    ("All clashes with Udp", lambda r: add_rule(r, protocol="All", frontendPort=53, backendPort=53),
     f"{C}.loadBalancingRules[2].properties.frontendPort", "udp/53 on frontend web-fe is already taken by web.loadBalancingRules[1]"),
    ("NAT range over a rule port", lambda r: add_nat(r, frontendPortRangeStart=75, frontendPortRangeEnd=85,
                                                    backendAddressPool=ref("backendAddressPools", "web")),
     f"{C}.inboundNatRules[0].properties.frontendPortRangeStart", "tcp/80 on frontend web-fe is already taken by web.loadBalancingRules[0]"),
    ("NAT single port on a rule port", lambda r: add_nat(r, frontendPort=80, backendIPAddress="10.1.1.11"),
     f"{C}.inboundNatRules[0].properties.frontendPort", "already taken by web.loadBalancingRules[0]"),
    ("NAT range smaller than the pool", lambda r: add_nat(r, frontendPortRangeStart=50000, frontendPortRangeEnd=50002,
                                                         backendAddressPool=ref("backendAddressPools", "web")),
     f"{C}.inboundNatRules[0].properties.frontendPortRangeEnd", "the range has 3 ports but pool web has 6 backends"),
    ("NAT backend not a VM", lambda r: add_nat(r, frontendPort=2222, backendIPAddress="10.1.1.99"),
     f"{C}.inboundNatRules[0].properties.backendIPAddress", "is no VM of the lab"),
    ("public VIP outside the public range", lambda r: fe_ip(r).update(ipAddress="198.51.100.50"),
     f"{C}.frontendIPConfigurations[0].properties.publicIPAddress.properties.ipAddress", "public range 203.0.113.0/24"),
    ("internal VIP outside the VNet", lambda r: web(r)["frontendIPConfigurations"][0].update(properties={"privateIPAddress": "10.9.0.5"}),
     f"{C}.frontendIPConfigurations[0].properties.privateIPAddress", "from the VNet 10.1.0.0/16"),
    ("internal VIP inside a VM subnet", lambda r: web(r)["frontendIPConfigurations"][0].update(properties={"privateIPAddress": "10.1.1.200"}),
     f"{C}.frontendIPConfigurations[0].properties.privateIPAddress", "inside host1's VM subnet 10.1.1.0/24"),
    ("backend that is no VM", lambda r: members(r)[0]["properties"].update(ipAddress="10.1.1.99"),
     f"{C}.backendAddressPools[0].properties.loadBalancerBackendAddresses[0].properties.ipAddress", "is no VM of the lab"),
    ("backend twice in a pool", lambda r: members(r)[1]["properties"].update(ipAddress="10.1.1.11"),
     f"{C}.backendAddressPools[0].properties.loadBalancerBackendAddresses[1].properties.ipAddress", "vm1 is already in this pool"),
    ("two rules with one name", lambda r: add_rule(r, name="http"), f"{C}.loadBalancingRules[2].name", "another load-balancing rule"),
    ("NAT and floating IP on one DIP port", lambda r: r["direct"]["properties"]["backendAddressPools"][0]["properties"]
     ["loadBalancerBackendAddresses"].append({"name": "vm1", "properties": {"ipAddress": "10.1.1.11"}}) or
     r["direct"]["properties"]["loadBalancingRules"].append({"name": "alt", "properties": {
         "frontendIPConfiguration": {"id": "x/frontendIPConfigurations/direct-fe"}, "backendAddressPool": {"id": "x/backendAddressPools/direct"},
         "protocol": "Tcp", "frontendPort": 8080, "backendPort": 8080, "enableFloatingIP": True}}),
     f"{C}.loadBalancingRules[0].properties.enableFloatingIP", "could not tell the two apart"),
    ("outbound rule on an internal frontend", lambda r: web(r)["frontendIPConfigurations"].append(
        {"name": "inside", "properties": {"privateIPAddress": "10.1.0.50"}}) or add_outbound(
        r, frontendIPConfigurations=[ref("frontendIPConfigurations", "inside")]),
     f"{C}.outboundRules[0].properties.frontendIPConfigurations[0].id", "outbound rules need a public one"),
    ("outbound ports beyond the frontend", lambda r: add_outbound(r, allocatedOutboundPorts=16000),
     f"{C}.outboundRules[0].properties.allocatedOutboundPorts", "6 backends x 16000 ports = 96000 is more than the 64512 SNAT ports"),
]


@pytest.mark.parametrize("mutate,path,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_path_and_says_why(raw_lbs, mutate, path, message):
    mutate(raw_lbs)
    problems = problems_of(raw_lbs)
    assert problems, "accepted"
    found = [(p, m) for p, _, m in problems if p == path]
    assert found, f"no problem at {path}: {problems}"
    assert any(message in m for _, m in found), found


def test_at_least_forty_distinct_bad_inputs():
    assert len({b[0] for b in BAD}) == len(BAD) >= 40


def test_vip_used_by_two_load_balancers_is_reported_where_it_was_introduced(raw_lbs):
    fe_ip(raw_lbs, "direct").update(ipAddress="203.0.113.10")
    problems = problems_of(raw_lbs, changed={"direct"})
    assert [(p, v) for p, v, _ in problems] == [
        ("direct.properties.frontendIPConfigurations[0].properties.publicIPAddress.properties.ipAddress", "203.0.113.10")]
    assert "already used by web.frontendIPConfigurations[0]" in problems[0][2]


def test_changing_floating_ip_on_an_existing_rule_is_refused(raw_lbs):
    before = default_lbs()
    rule(raw_lbs).update(enableFloatingIP=True, backendPort=80)
    problems = problems_of(raw_lbs, previous=before)
    assert [(p, v) for p, v, _ in problems] == [(f"{C}.loadBalancingRules[0].properties.enableFloatingIP", True)]
    assert "cannot change on an existing rule" in problems[0][2]
    assert problems_of(raw_lbs) == []  # a new rule may be floating from the start


def test_default_load_balancers_are_valid_and_compile():
    lbs = default_lbs()
    assert check(lbs, fabric()) == []
    facts = compile_facts(lbs, fabric())
    assert [r.key for r in facts.rules] == ["bench/iperf", "bench/iperf-udp", "direct/app", "direct/app-udp", "web/http", "web/dns"]
    http = facts.rules[4]
    assert (str(http.vip), http.protocol, http.port, http.backend_port, http.probe.key) == ("203.0.113.10", "tcp", 80, 8080, "web/http-health")
    assert [b.vm for b in http.backends] == ["vm1", "vm2", "vm3", "vm4", "vm5", "vm6"]
    assert guest_config(facts, "vm2") == ({7000, 8080}, {7000, 5353}, ["203.0.113.20"])


def test_protocol_all_compiles_to_tcp_and_udp(raw_lbs):
    add_rule(raw_lbs, protocol="All", frontendPort=9000, backendPort=9000, name="both")
    facts = compile_facts(parse_document({"loadBalancers": raw_lbs}), fabric())
    assert {(r.name, r.protocol) for r in facts.rules if r.port == 9000} == {("both-tcp", "tcp"), ("both-udp", "udp")}


ARM = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {"lbName": {"type": "string", "defaultValue": "arm-lb"}},
    "resources": [
        {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": "2023-09-01", "name": "arm-pip", "location": "westeurope"},
        {"type": "Microsoft.Network/loadBalancers", "apiVersion": "2023-09-01", "name": "arm-lb", "location": "westeurope",
         "sku": {"name": "Standard"}, "dependsOn": ["[resourceId('Microsoft.Network/publicIPAddresses', 'arm-pip')]"],
         "properties": {
             "frontendIPConfigurations": [{"name": "LoadBalancerFrontEnd", "properties": {
                 "publicIPAddress": {"id": "[resourceId('Microsoft.Network/publicIPAddresses', 'arm-pip')]"}}}],
             "backendAddressPools": [{"name": "BackendPool", "properties": {"loadBalancerBackendAddresses": [
                 {"name": "a", "properties": {"ipAddress": "10.1.2.13"}}, {"name": "b", "properties": {"ipAddress": "10.1.3.15"}}]}}],
             "probes": [{"name": "tcpProbe", "properties": {"protocol": "Tcp", "port": 8080, "intervalInSeconds": 5, "numberOfProbes": 2}}],
             "loadBalancingRules": [{"name": "LBRule", "properties": {
                 "frontendIPConfiguration": {"id": "[resourceId('Microsoft.Network/loadBalancers/frontendIPConfigurations', parameters('lbName'), 'LoadBalancerFrontEnd')]"},
                 "backendAddressPool": {"id": "[resourceId('Microsoft.Network/loadBalancers/backendAddressPools', parameters('lbName'), 'BackendPool')]"},
                 "probe": {"id": "[resourceId('Microsoft.Network/loadBalancers/probes', parameters('lbName'), 'tcpProbe')]"},
                 "protocol": "Tcp", "frontendPort": 8081, "backendPort": 8080, "enableFloatingIP": False,
                 "idleTimeoutInMinutes": 15, "loadDistribution": "SourceIP"}}]}}]}


def test_arm_template_is_accepted_as_it_is_and_gets_an_address():
    lbs = parse_document(ARM)
    assert list(lbs) == ["arm-lb"]
    assert ref_parts(ARM["resources"][1]["properties"]["loadBalancingRules"][0]["properties"]["probe"]["id"]) == ("probes", "tcpProbe")
    held = default_lbs()
    new = allocate_public_ips(lbs, fabric(), held)
    addr = new["arm-lb"].properties.frontendIPConfigurations[0].address
    assert str(addr) == "203.0.113.100"  # the first free address of the allocation range
    assert check({**held, **new}, fabric(), held, changed={"arm-lb"}) == []
    (r,) = compile_facts(new, fabric()).rules
    assert (r.distribution, r.probe.unhealthy_threshold, [b.vm for b in r.backends]) == ("SourceIP", 2, ["vm3", "vm5"])
    # the same public IP resource keeps its address across a re-apply
    again = allocate_public_ips(lbs, fabric(), {**held, **new})
    assert again["arm-lb"].properties.frontendIPConfigurations[0].address == addr


def test_rest_body_with_azure_envelope_and_read_only_fields_round_trips():
    body = {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/x", "name": "x",
            "type": "Microsoft.Network/loadBalancers", "etag": 'W/"1"', "location": "eastus",
            "properties": {"provisioningState": "Succeeded", "resourceGuid": "g",
                           "frontendIPConfigurations": [{"name": "fe", "etag": 'W/"1"', "properties": {
                               "provisioningState": "Succeeded", "privateIPAddress": "10.1.100.10",
                               "privateIPAllocationMethod": "Static"}}]}}
    lbs = parse_document(body)
    assert str(lbs["x"].properties.frontendIPConfigurations[0].address) == "10.1.100.10"
    assert check(lbs, fabric()) == []


def test_default_outbound_ports_follow_azures_table():
    assert [default_outbound_ports(n) for n in (1, 50, 51, 100, 101, 200, 400, 800, 1000, 1001)] == \
        [1024, 1024, 512, 512, 256, 256, 128, 64, 32, 0]


def test_diff_names_what_changes(raw_lbs):
    old = default_lbs()
    rule(raw_lbs).update(frontendPort=8000)
    members(raw_lbs).pop()
    raw_lbs["new"] = raw_lbs.pop("bench")
    new = parse_document({"loadBalancers": raw_lbs})
    lines = diff(old, new, prune=True)
    assert "~ web.properties.loadBalancingRules[http].properties.frontendPort: 80 -> 8000" in lines
    assert "- web.properties.backendAddressPools[web].properties.loadBalancerBackendAddresses[vm6]" in lines
    assert "+ load balancer new" in lines and "- load balancer bench" in lines
    assert diff(old, old) == [] and "- load balancer bench" not in diff(old, new)


def test_file_errors(tmp_path):
    bad = tmp_path / "x.yml"
    bad.write_text("loadBalancers: [1, 2")
    with pytest.raises(ModelError, match="neither valid YAML nor JSON"):
        load_document(bad)
    with pytest.raises(ModelError, match="cannot be read"):
        load_document(tmp_path / "missing.yml")
    with pytest.raises(ModelError) as exc:
        parse_document({"whatever": 1})
    assert exc.value.problems[0][0] == "(document)"


def test_committed_json_schema_is_current():
    committed = json.loads((REPO / "docs" / "loadbalancer.schema.json").read_text())
    assert committed == json_schema(), "run `python -m muxlab.lb.schemas` to refresh docs/"


def test_committed_openapi_document_is_current():
    from manager.api import app
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(app.openapi())), "run `python -m muxlab.lb.schemas` to refresh docs/"
    paths = set(committed["paths"])
    assert {"/loadBalancers", "/loadBalancers/{name}", "/loadBalancers/{name}/backendAddressPools/{pool}",
            "/loadBalancers/{name}/inboundNatRules/{rule}", "/loadBalancers/{name}/loadBalancingRules/{rule}/health",
            "/swapFrontends"} <= paths


def test_an_internal_frontend_is_never_an_outbound_identity(raw_lbs):
    """An internal load balancer's rule without disableOutboundSnat gives its pool no SNAT
    (Azure's ILB does no outbound NAT): the VMs keep the identity their public one gives."""
    from muxlab.lb.allocation import outbound_claims
    raw_lbs["web"]["properties"].pop("outboundRules")
    web(raw_lbs)["frontendIPConfigurations"][0]["properties"] = {"privateIPAddress": "10.1.0.60"}
    for rule in raw_lbs["web"]["properties"]["loadBalancingRules"]:
        rule["properties"]["disableOutboundSnat"] = False
    claims, problems = outbound_claims(parse_document({"loadBalancers": raw_lbs}), fabric())
    assert not problems and not any(c.lb == "web" for c in claims.values()), claims


@pytest.mark.parametrize("address,says", [("10.1.102.24", "vm4's second NIC"), ("10.1.102.1", "secondary gateway"),
                                          ("10.1.102.255", "not a usable address")])
def test_an_internal_frontend_in_a_secondary_subnet_takes_a_free_address(address, says):
    """Seed 000's fix puts the frontend in a second NIC's subnet: allowed, on an address nobody holds."""
    from muxlab.lb.check import check
    from tests.unit.conftest import fabric
    lbs = load_document(REPO / "containerlab" / "examples" / "ilb-subnet.yml")
    assert check(lbs, fabric()) == []
    raw = canonical(lbs["ilb2"])
    raw["properties"]["frontendIPConfigurations"][0]["properties"]["privateIPAddress"] = address
    problems = check({"ilb2": parse_lb(raw)}, fabric())
    assert len(problems) == 1 and problems[0][1] == address and says in problems[0][2], problems


def test_what_azure_s_own_examples_write_is_accepted():
    """Never stricter than Azure: a probe path without its leading '/' (Azure's examples write
    "healthcheck.aspx"), an IP-based pool's virtualNetwork and syncMode."""
    from muxlab.lb.compiler import compile_facts
    from tests.unit.conftest import default_lbs, fabric
    raw = canonical(default_lbs()["web"])
    raw["properties"]["probes"][0]["properties"]["requestPath"] = "healthcheck.aspx"
    raw["properties"]["backendAddressPools"][0]["properties"].update(
        virtualNetwork={"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet"},
        syncMode="Manual")
    facts = compile_facts({"web": parse_lb(raw)}, fabric())
    assert {r.probe.path for r in facts.rules if r.name == "http"} == {"/healthcheck.aspx"}


def test_an_internal_frontend_given_only_a_subnet_gets_a_vnet_address_and_keeps_it():
    """Most of Azure's examples write an internal frontend as a subnet and Dynamic allocation."""
    from tests.unit.conftest import fabric
    raw = canonical(load_document(REPO / "containerlab" / "examples" / "ilb-hairpin.yml")["ilb"])
    fe = raw["properties"]["frontendIPConfigurations"][0]["properties"]
    del fe["privateIPAddress"]
    fe.update(privateIPAllocationMethod="Dynamic", subnet={"id": "/subscriptions/s/resourceGroups/rg/providers/"
                                                                "Microsoft.Network/virtualNetworks/vnet/subnets/default"})
    lbs = {"ilb": parse_lb(raw)}
    assert [p[2] for p in check(lbs, fabric())] == ["no address: the manager allocates one for a frontend given only a subnet"]
    got = allocate_public_ips(lbs, fabric(), {})
    addr = got["ilb"].properties.frontendIPConfigurations[0].address
    assert addr in fabric().vnet and not any(addr in n for h in fabric().hosts for n in h.subnets)
    assert check(got, fabric()) == []
    assert allocate_public_ips(lbs, fabric(), got)["ilb"].properties.frontendIPConfigurations[0].address == addr   # kept
    other = allocate_public_ips({"ilb2": lbs["ilb"]}, fabric(), got)["ilb2"].properties.frontendIPConfigurations[0].address
    assert other != addr   # another load balancer gets another
