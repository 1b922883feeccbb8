"""Seed 003's ServiceDefinition as one load balancer: the shipped ProbeTenant maps endpoint for
endpoint, and each bad input is refused naming the element, the attribute and the value."""
import copy

import pytest
import yaml

from muxlab.fabric.lab import ModelError
from muxlab.lb.allocation import allocate
from muxlab.lb.azure import canonical
from muxlab.lb.check import check
from muxlab.lb.csdef import MAX_INPUT_ENDPOINTS, MAX_INTERNAL_ENDPOINTS, load_csdef, parse_csdef
from tests.unit.conftest import REPO, default_lbs, fabric

SERVICE = REPO / "examples" / "cloudservice"
CSDEF, ROLES_FILE = SERVICE / "ProbeTenant.csdef", SERVICE / "ProbeTenant.roles.yml"
XML = CSDEF.read_text()
ROLES = yaml.safe_load(ROLES_FILE.read_text())
NS = ' xmlns="http://schemas.microsoft.com/ServiceHosting/2008/10/ServiceDefinition"'

SD = "ServiceDefinition"
FE = f"{SD}/WorkerRole[@name='FERole']"
BE = f"{SD}/WorkerRole[@name='BERole']"
FE_EP, BE_EP = f"{FE}/Endpoints", f"{BE}/Endpoints"
PROBE = f"{SD}/LoadBalancerProbes/LoadBalancerProbe[@name='MyProbe']"


def parse(xml=XML, roles=None):
    return parse_csdef(xml, copy.deepcopy(ROLES) if roles is None else roles, fabric())


def sub(old, new, text=XML):
    assert old in text, old
    return text.replace(old, new, 1)


def small(fe="", be="", probes=""):
    """A service of two roles (the roles file's) with the given endpoints."""
    return (f'<ServiceDefinition name="ProbeTenant"><LoadBalancerProbes>{probes}</LoadBalancerProbes>'
            f'<WorkerRole name="FERole"><Endpoints>{fe}</Endpoints></WorkerRole>'
            f'<WorkerRole name="BERole"><Endpoints>{be}</Endpoints></WorkerRole></ServiceDefinition>')


def props(lb, kind):
    return {c.name: c.properties for c in getattr(lb.properties, kind)}


# ---------------------------------------------------------------- the seed's service


def test_probetenant_is_one_load_balancer_named_after_the_service():
    name, lb = load_csdef(CSDEF, ROLES_FILE, fabric())
    assert name == "ProbeTenant" and lb.properties.cloudService.name == "ProbeTenant"
    (fe,) = lb.properties.frontendIPConfigurations
    assert fe.name == "vip" and str(fe.address) == "203.0.113.40"
    assert fe.properties.publicIPAddress.id == "/publicIPAddresses/ProbeTenant-vip"
    pools = {p.name: [(b.name, str(b.properties.ipAddress)) for b in p.properties.loadBalancerBackendAddresses]
             for p in lb.properties.backendAddressPools}
    assert pools == {"FERole": [("vm1", "10.1.1.11"), ("vm3", "10.1.2.13"), ("vm5", "10.1.3.15")],
                     "BERole": [("vm2", "10.1.1.12"), ("vm4", "10.1.2.14")]}


def test_input_endpoints_are_load_balancing_rules_to_their_role():
    _, lb = parse()
    rules = props(lb, "loadBalancingRules")
    assert {n: (r.protocol, r.frontendPort, r.backendPort, r.pool.name, r.probe and r.probe.name)
            for n, r in rules.items()} == {
        "FE_External_Http": ("Tcp", 10000, 10000, "FERole", None),
        "FE_External_Tcp": ("Tcp", 10001, 10001, "FERole", None),
        "FE_External_Udp": ("Udp", 10002, 10002, "FERole", None),
        "HTTP_Probe": ("Tcp", 80, 80, "FERole", "MyProbe"),
    }
    assert all(r.idleTimeoutInMinutes == 4 and r.frontendIPConfiguration.name == "vip" for r in rules.values())


def test_the_probe_keeps_the_seed_s_interval_and_timeout_and_gets_a_leading_slash():
    _, lb = parse()
    p = props(lb, "probes")["MyProbe"]
    assert (p.protocol, p.port, p.requestPath, p.intervalInSeconds, p.timeoutInSeconds) == ("Http", 80, "/Probe.aspx", 5, 100)


def test_instance_input_endpoints_are_pool_nat_rules_one_port_per_instance_in_order():
    name, lb = parse()
    nats = props(lb, "inboundNatRules")
    assert {n: (r.protocol, r.frontendPortRangeStart, r.frontendPortRangeEnd, r.backendPort, r.backendAddressPool.name)
            for n, r in nats.items()} == {"InstanceEP": ("Tcp", 10110, 10120, 80, "FERole"),
                                          "InstanceEP_BE": ("Tcp", 10210, 10220, 80, "BERole")}
    allocations, problems = allocate({name: lb}, fabric())
    assert problems == []
    assert allocations[name]["nat"] == {"InstanceEP": {"vm1": 10110, "vm3": 10111, "vm5": 10112},
                                        "InstanceEP_BE": {"vm2": 10210, "vm4": 10211}}


def test_internal_endpoints_go_to_the_cloud_service_extension():
    _, lb = parse()
    assert [(e.name, e.role, e.protocol, e.port) for e in lb.properties.cloudService.internalEndpoints] == [
        ("BE_InternalEP_Tcp", "BERole", "Tcp", None), ("BE_InternalEP_Udp", "BERole", "Udp", None),
        ("BE_InternalEP_Http", "BERole", "Tcp", 80), ("FE_InternalEP_Tcp", "FERole", "Tcp", None)]


def test_probetenant_passes_the_checks_next_to_the_lab_s_own_load_balancers():
    name, lb = parse()
    lbs = {**default_lbs(), name: lb}
    assert check(lbs, fabric()) == [] and allocate(lbs, fabric())[1] == []


def test_the_namespace_is_optional_and_a_roles_mapping_is_as_good_as_the_file():
    with_ns = canonical(load_csdef(CSDEF, ROLES_FILE, fabric())[1])
    assert canonical(parse(sub(NS, ""))[1]) == with_ns
    assert canonical(load_csdef(CSDEF, copy.deepcopy(ROLES), fabric())[1]) == with_ns


def test_what_the_lab_does_not_model_is_ignored():
    xml = sub('<WorkerRole name="FERole" vmsize="Small">',
              '<WorkerRole name="FERole" vmsize="Small" enableNativeCodeExecution="true"><Runtime/><Startup>'
              '<Task commandLine="x.cmd"/></Startup><Imports><Import moduleName="Diagnostics"/></Imports>'
              '<ConfigurationSettings><Setting name="A"/></ConfigurationSettings><LocalResources/><Certificates/>'
              '<Sites><Site name="Web"/></Sites>')
    xml = sub(f'name="ProbeTenant"{NS}', f'name="ProbeTenant"{NS} schemaVersion="2015-04.2.6" upgradeDomainCount="5" '
                                        'topologyChangeDiscovery="Blast"', xml)
    assert canonical(parse(xml)[1]) == canonical(parse()[1])


def test_defaults_a_probe_without_port_takes_its_endpoint_s_local_port():
    xml = small(fe='<InputEndpoint name="web" protocol="http" port="80" localPort="8080" loadBalancerProbe="p" />',
                probes='<LoadBalancerProbe name="p" protocol="http" path="/healthz?full=1" />')
    _, lb = parse(xml)
    p = props(lb, "probes")["p"]
    assert (p.port, p.requestPath, p.intervalInSeconds, p.timeoutInSeconds) == (8080, "/healthz?full=1", 15, 31)
    assert props(lb, "loadBalancingRules")["web"].backendPort == 8080


def test_an_unreferenced_probe_is_kept_with_a_port_and_dropped_without_one():
    xml = small(fe='<InputEndpoint name="web" protocol="tcp" port="80" />',
                probes='<LoadBalancerProbe name="kept" protocol="tcp" port="81" />'
                       '<LoadBalancerProbe name="dropped" protocol="tcp" />')
    _, lb = parse(xml)
    assert list(props(lb, "probes")) == ["kept"]


def test_idle_timeout_and_distribution_of_an_input_endpoint():
    xml = small(fe='<InputEndpoint name="web" protocol="tcp" port="80" idleTimeoutInMinutes="10" '
                   'loadBalancerDistribution="sourceIP" />')
    r = props(parse(xml)[1], "loadBalancingRules")["web"]
    assert (r.idleTimeoutInMinutes, r.loadDistribution) == (10, "SourceIP")


def test_every_problem_is_reported_at_once():
    xml = sub('port="10001"', 'port="0"', sub('protocol="udp" port="10002"', 'protocol="sctp" port="10002"'))
    with pytest.raises(ModelError) as exc:
        parse(xml, {**ROLES, "vip": "nope"})
    assert {p[0] for p in exc.value.problems} == {f"{FE_EP}/InputEndpoint[@name='FE_External_Tcp']/@port",
                                                  f"{FE_EP}/InputEndpoint[@name='FE_External_Udp']/@protocol", "vip"}


# ---------------------------------------------------------------- bad inputs

BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                  '<ServiceDefinition name="&lol2;"/>')
EXTERNAL = '<?xml version="1.0"?><!DOCTYPE sd [<!ENTITY x SYSTEM "file:///etc/passwd">]><ServiceDefinition name="&x;"/>'
MANY_INPUTS = "".join(f'<InputEndpoint name="E{i}" protocol="tcp" port="{20000 + i}" />'
                      for i in range(MAX_INPUT_ENDPOINTS + 1))
MANY_INTERNAL = "".join(f'<InternalEndpoint name="I{i}" protocol="tcp" />' for i in range(MAX_INTERNAL_ENDPOINTS + 1))


def roles_with(**changes):
    r = copy.deepcopy(ROLES)
    for k, v in changes.items():
        if k == "vip":
            r["vip"] = v
        elif v is None:
            del r["roles"][k]
        else:
            r["roles"][k] = v
    return r


I = f"{FE_EP}/InputEndpoint"
BAD = [
    # (id, xml, roles, path, value, message fragment)
    ("service name missing", sub('<ServiceDefinition name="ProbeTenant"', "<ServiceDefinition"), None,
     f"{SD}/@name", None, "required attribute"),
    ("service name hostile", sub('name="ProbeTenant"', 'name="../../etc/x"'), None,
     f"{SD}/@name", "../../etc/x", "Azure resource name"),
    ("endpoint name missing", sub('name="FE_External_Tcp" ', ""), None, f"{I}[2]/@name", None, "required attribute"),
    ("endpoint name hostile", sub('name="FE_External_Tcp"', "name=\"x'] | //*[1\""), None,
     f"{I}[2]/@name", "x'] | //*[1", "Azure resource name"),
    ("role name hostile", sub('name="BERole"', 'name="BE&#10;Role"'), None, f"{SD}/WorkerRole[1]/@name", "BE\nRole",
     "Azure resource name"),
    ("unknown protocol", sub('protocol="tcp" port="10001"', 'protocol="sctp" port="10001"'), None,
     f"{I}[@name='FE_External_Tcp']/@protocol", "sctp", "one of: http, https, tcp, udp"),
    ("protocol is case-sensitive", sub('protocol="udp" port="10002"', 'protocol="UDP" port="10002"'), None,
     f"{I}[@name='FE_External_Udp']/@protocol", "UDP", "one of"),
    ("port 0", sub('port="10001"', 'port="0"'), None, f"{I}[@name='FE_External_Tcp']/@port", "0", "from 1 to 65534"),
    ("port 70000", sub('port="10001"', 'port="70000"'), None, f"{I}[@name='FE_External_Tcp']/@port", "70000",
     "from 1 to 65534"),
    ("port abc", sub('port="10001"', 'port="abc"'), None, f"{I}[@name='FE_External_Tcp']/@port", "abc", "integer"),
    ("port with a sign", sub('port="10001"', 'port="+10001"'), None, f"{I}[@name='FE_External_Tcp']/@port", "+10001",
     "integer"),
    ("localPort *", sub('port="10001"', 'port="10001" localPort="*"'), None,
     f"{I}[@name='FE_External_Tcp']/@localPort", "*", "from 1 to 65535"),
    ("unknown probe", sub('loadBalancerProbe="MyProbe"', 'loadBalancerProbe="NoProbe"'), None,
     f"{I}[@name='HTTP_Probe']/@loadBalancerProbe", "NoProbe", "declared: MyProbe"),
    ("http probe without path", sub(' path="Probe.aspx"', ""), None, f"{PROBE}/@path", None, "needs a path"),
    ("tcp probe with a path", sub('protocol="http" path="Probe.aspx"', 'protocol="tcp" path="Probe.aspx"'), None,
     f"{PROBE}/@path", "Probe.aspx", "only http probes"),
    ("probe path with CR LF", sub('path="Probe.aspx"', 'path="Probe.aspx&#13;&#10;Host: evil"'), None,
     f"{PROBE}/@path", "Probe.aspx\r\nHost: evil", "no spaces or control characters"),
    ("probe interval 0", sub('intervalInSeconds="5"', 'intervalInSeconds="0"'), None,
     f"{PROBE}/@intervalInSeconds", "0", "from 1 to"),
    ("unknown probe attribute", sub('timeoutInSeconds="100"', 'timeoutInSeconds="100" retries="3"'), None,
     f"{PROBE}/@retries", "3", "unknown attribute"),
    ("element inside a probe", sub('timeoutInSeconds="100" />', 'timeoutInSeconds="100"><Extra/></LoadBalancerProbe>'),
     None, f"{PROBE}/Extra", "Extra",
     "unknown element"),
    ("probe port ambiguous", small(fe='<InputEndpoint name="a" protocol="tcp" port="80" loadBalancerProbe="p" />'
                                      '<InputEndpoint name="b" protocol="tcp" port="81" loadBalancerProbe="p" />',
                                   probes='<LoadBalancerProbe name="p" protocol="tcp" />'), None,
     f"{SD}/LoadBalancerProbes/LoadBalancerProbe[@name='p']/@port", None, "localPorts differ ([80, 81])"),
    ("same port and protocol", sub('port="10001"', 'port="10000"'), None, f"{I}[@name='FE_External_Tcp']/@port", 10000,
     "same port and protocol"),
    ("same port and protocol in two roles", small(fe='<InputEndpoint name="a" protocol="udp" port="53" />',
                                                  be='<InputEndpoint name="b" protocol="udp" port="53" />'), None,
     f"{BE_EP}/InputEndpoint[@name='b']/@port", 53, "same port and protocol"),
    ("same rule name in two roles", small(fe='<InputEndpoint name="a" protocol="tcp" port="80" />',
                                          be='<InputEndpoint name="a" protocol="tcp" port="81" />'), None,
     f"{BE_EP}/InputEndpoint[@name='a']/@name", "a", "already the name of"),
    ("instance range too small", sub('min="10110" max="10120"', 'min="10110" max="10111"'), None,
     f"{FE_EP}/InstanceInputEndpoint[@name='InstanceEP']/AllocatePublicPortFrom/FixedPortRange/@max", 10111,
     "has 2 ports but role FERole has 3 instances"),
    ("range min above max", sub('min="10210"', 'min="10230"'), None,
     f"{BE_EP}/InstanceInputEndpoint[@name='InstanceEP_BE']/AllocatePublicPortFrom/FixedPortRange/@min", "10230",
     "above max (10220)"),
    ("instance range over an input endpoint", sub('min="10210" max="10220"', 'min="9990" max="10005"'), None,
     f"{BE_EP}/InstanceInputEndpoint[@name='InstanceEP_BE']/AllocatePublicPortFrom/FixedPortRange/@min", "9990-10005",
     "overlaps tcp/10000"),
    ("instance ranges overlapping", sub('min="10110" max="10120"', 'min="10215" max="10230"'), None,
     f"{FE_EP}/InstanceInputEndpoint[@name='InstanceEP']/AllocatePublicPortFrom/FixedPortRange/@min", "10215-10230",
     "overlaps tcp/10215 of " + BE_EP),
    ("instance endpoint without range", sub('<FixedPortRange min="10110" max="10120" />', ""), None,
     f"{FE_EP}/InstanceInputEndpoint[@name='InstanceEP']/AllocatePublicPortFrom/FixedPortRange", 0, "exactly one"),
    ("151 input endpoints", small(fe=MANY_INPUTS), None, SD, 151, "at most 150"),
    ("26 internal endpoints in a role", small(be=MANY_INTERNAL), None, BE_EP, 26, "at most 25"),
    ("internal protocol any", sub('name="FE_InternalEP_Tcp" protocol="tcp"', 'name="FE_InternalEP_Tcp" protocol="any"'),
     None, f"{FE_EP}/InternalEndpoint[@name='FE_InternalEP_Tcp']/@protocol", "any", "not supported"),
    ("internal fixed port range", sub('<InternalEndpoint name="FE_InternalEP_Tcp" protocol="tcp" />',
                                      '<InternalEndpoint name="FE_InternalEP_Tcp" protocol="tcp"><FixedPortRange min="1" '
                                      'max="2"/></InternalEndpoint>'), None,
     f"{FE_EP}/InternalEndpoint[@name='FE_InternalEP_Tcp']/FixedPortRange",
     "FixedPortRange", "not supported"),
    ("internal port twice in a role (the cross-checks)", sub('name="BE_InternalEP_Tcp" protocol="tcp"',
                                                            'name="BE_InternalEP_Tcp" protocol="tcp" port="80"'), None,
     f"{BE_EP}/InternalEndpoint[@name='BE_InternalEP_Http']/@port", 80, "tcp/80 already"),
    ("unknown element in Endpoints", sub("<Endpoints>", "<Endpoints><OutputEndpoint name='x'/>"), None,
     f"{BE_EP}/OutputEndpoint[@name='x']",
     "OutputEndpoint", "unknown element"),
    ("unknown endpoint attribute", sub('port="10001"', 'port="10001" portt="1"'), None,
     f"{I}[@name='FE_External_Tcp']/@portt", "1", "unknown attribute"),
    ("internal load balancer", sub('port="10001"', 'port="10001" loadBalancer="ilb"'), None,
     f"{I}[@name='FE_External_Tcp']/@loadBalancer", "ilb", "not supported"),
    ("network traffic rules", sub("</ServiceDefinition>", "<NetworkTrafficRules/></ServiceDefinition>"), None,
     f"{SD}/NetworkTrafficRules",
     "NetworkTrafficRules", "not supported"),
    ("role twice", sub('<WorkerRole name="FERole"', '<WebRole name="BERole"/><WorkerRole name="FERole"'), None,
     f"{SD}/WebRole[@name='BERole']/@name", "BERole", "already the name of"),
    ("billion laughs", BILLION_LAUGHS, None, "(document)", "lolz", "no DTD, entities"),
    ("external entity", EXTERNAL, None, "(document)", "sd", "no DTD, entities"),
    ("malformed XML", sub('port="10001" />', 'port="10001" / >'), None, "(document) line 27, column 74",
     'ernal_Tcp" protocol="tcp" port="10001" / >', "is not well-formed XML: not well-formed (invalid token)"),
    ("wrong root element", '<ServiceConfiguration serviceName="ProbeTenant"/>', None, "(document)",
     "ServiceConfiguration", "root element must be ServiceDefinition"),
    ("root in another namespace", '<ServiceDefinition xmlns="urn:x" name="ProbeTenant"/>', None, "(document)",
     "{urn:x}ServiceDefinition", "root element"),
    # the roles file
    ("role without instances", XML, roles_with(BERole=None), f"{BE}/@name", "BERole", "lists no instances"),
    ("role with an empty list", XML, roles_with(BERole=[]), "roles.BERole", [], "at least one VM"),
    ("VM unknown to the fabric", XML, roles_with(FERole=["vm1", "vm3", "vm9"]), "roles.FERole[2]", "vm9",
     "is no VM of the lab"),
    ("VM in two roles", XML, roles_with(BERole=["vm2", "vm3"]), "roles.BERole[1]", "vm3", "already an instance of roles.FERole"),
    ("role the csdef does not have", XML, roles_with(MidRole=["vm6"]), "roles.MidRole", "MidRole",
     "no WebRole or WorkerRole of this name"),
    ("vip not an address", XML, roles_with(vip="203.0.113"), "vip", "203.0.113", "IPv4 address"),
    ("vip as an integer", XML, roles_with(vip=3405803816), "vip", 3405803816, "IPv4 address"),
    ("vip outside public_vips (the cross-checks)", XML, roles_with(vip="198.51.100.40"), "vip", "198.51.100.40",
     "public range 203.0.113.0/24"),
    ("unknown roles field", XML, {**ROLES, "instances": 3}, "instances", 3, "unknown field"),
]


@pytest.mark.parametrize("xml,roles,path,value,fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_element_attribute_and_value(xml, roles, path, value, fragment):
    with pytest.raises(ModelError) as exc:
        parse(xml, roles)
    hits = [p for p in exc.value.problems if fragment in p[2] and (path is None or p[0] == path)]
    assert hits, exc.value.problems
    if path is not None:
        assert hits[0][1] == value, hits
        assert f"{path}: {value!r}: " in str(exc.value)


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(ModelError, match="cannot be read"):
        load_csdef(tmp_path / "missing.csdef", ROLES_FILE, fabric())
    dup = tmp_path / "roles.yml"
    dup.write_text("vip: 203.0.113.40\nvip: 203.0.113.41\nroles: {FERole: [vm1]}\n")
    with pytest.raises(ModelError, match="duplicate key 'vip'"):
        load_csdef(CSDEF, dup, fabric())


def test_an_element_of_another_namespace_inside_endpoints_is_unknown():
    xml = sub("<Endpoints>", '<Endpoints><x:InputEndpoint xmlns:x="urn:x" name="a" protocol="tcp" port="1"/>')
    with pytest.raises(ModelError) as exc:
        parse(xml)
    assert exc.value.problems == [(f"{BE_EP}/{{urn:x}}InputEndpoint[@name='a']", "{urn:x}InputEndpoint",
                                   "unknown element (allowed: InputEndpoint, InstanceInputEndpoint, InternalEndpoint)")]


def test_a_refused_role_name_is_one_problem_not_two():
    with pytest.raises(ModelError) as exc:
        parse(sub('name="BERole"', 'name="-BERole"'))
    assert [p[0] for p in exc.value.problems] == [f"{SD}/WorkerRole[1]/@name"]


def test_rules_without_a_probe_follow_the_guest_agent_once_compiled():
    from muxlab.lb.compiler import compile_facts
    from muxlab.lb.facts import GUEST_PROBE
    name, lb = parse()
    probes = {r.name: r.probe.key for r in compile_facts({name: lb}, fabric()).rules if r.lb == name}
    assert probes == {"FE_External_Http": f"{name}/{GUEST_PROBE}", "FE_External_Tcp": f"{name}/{GUEST_PROBE}",
                      "FE_External_Udp": f"{name}/{GUEST_PROBE}", "HTTP_Probe": f"{name}/MyProbe"}
