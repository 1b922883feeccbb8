"""The Instance Metadata Service's documents (pure) and its answers to requests."""
import json
import time

import pytest

from hostagent.imds import Metadata
from muxlab.lb import metadata
from muxlab.lb.azure import load_document
from muxlab.lb.compiler import compile_facts
from muxlab.lb.facts import Facts, guest_config
from tests.unit.conftest import REPO, default_facts, default_lbs, fabric


def with_ilb():
    return default_facts({**default_lbs(), **load_document(REPO / "containerlab" / "examples" / "ilb-hairpin.yml")})


@pytest.mark.parametrize("make_facts", [default_facts, with_ilb])
def test_a_guest_serves_from_imds_exactly_what_the_facts_give_it(make_facts):
    s = make_facts()
    for vm in fabric().vms:
        doc = metadata.loadbalancer_document(fabric(), s, vm.name)
        assert metadata.guest_config(doc) == guest_config(s, vm.name), vm.name
        assert metadata.guest_config(json.loads(json.dumps(doc))) == guest_config(s, vm.name)


def test_loadbalancer_document_has_azures_shape_and_muxlabs_extensions():
    doc = metadata.loadbalancer_document(fabric(), with_ilb(), "vm2")
    assert set(doc) == {"loadbalancer"} and set(doc["loadbalancer"]) == {"publicIpAddresses", "inboundRules", "outboundRules"}
    rules = doc["loadbalancer"]["inboundRules"]
    for r in rules:
        assert {"frontendIpAddress", "protocol", "frontendPort", "backendIpAddress", "backendPort", "privateIpAddress",
                "internal", "enableFloatingIP", "probe"} <= set(r)
        assert r["privateIpAddress"] == "10.1.1.12" and r["protocol"] in ("tcp", "udp")
    http = next(r for r in rules if r["frontendIpAddress"] == "203.0.113.10" and r["frontendPort"] == 80)
    assert (http["backendIpAddress"], http["backendPort"], http["internal"]) == ("10.1.1.12", 8080, False)
    assert http["probe"] == {"protocol": "http", "port": 8080, "requestPath": "/health"}
    # floating IP: the VM sees the frontend itself
    fip = [r for r in rules if r["enableFloatingIP"]]
    assert fip and all(r["backendIpAddress"] == r["frontendIpAddress"] == "203.0.113.20" for r in fip)
    # the internal frontend is listed, flagged, and is no public address
    ilb = [r for r in rules if r["frontendIpAddress"] == "10.1.0.100"]
    assert ilb and all(r["internal"] for r in ilb)
    public = {p["frontendIpAddress"] for p in doc["loadbalancer"]["publicIpAddresses"]}
    assert "10.1.0.100" not in public and "203.0.113.10" in public
    assert all(p["privateIpAddress"] == "10.1.1.12" for p in doc["loadbalancer"]["publicIpAddresses"])


def test_outbound_rules_name_the_vms_snat_frontend_and_ports():
    s = default_facts()
    out = metadata.loadbalancer_document(fabric(), s, "vm3")["loadbalancer"]["outboundRules"]
    snat = next(x for x in s.snat if x.vm == "vm3")
    assert out == [{"frontendIpAddress": str(snat.vip), "privateIpAddress": "10.1.2.13", "loadBalancer": snat.lb,
                    "name": snat.rule, "protocols": list(snat.protocols), "frontendPortRange": f"{snat.lo}-{snat.hi}"}]


def test_a_vm_outside_every_pool_gets_empty_lists():
    s = Facts()
    assert metadata.loadbalancer_document(fabric(), s, "vm6") == {
        "loadbalancer": {"publicIpAddresses": [], "inboundRules": [], "outboundRules": []}}


def test_instance_document_describes_each_nic():
    doc = metadata.instance_document(fabric(), default_facts(), "vm1")
    assert doc["compute"]["name"] == "vm1" and doc["compute"]["osType"] == "Linux"
    assert doc["compute"]["resourceId"].endswith("/providers/Microsoft.Compute/virtualMachines/vm1")
    assert doc["compute"]["vmId"] == metadata.instance_document(fabric(), default_facts(), "vm1")["compute"]["vmId"]
    assert doc["compute"]["vmId"] != metadata.instance_document(fabric(), default_facts(), "vm2")["compute"]["vmId"]
    nics = doc["network"]["interface"]
    assert [n["ipv4"]["ipAddress"][0]["privateIpAddress"] for n in nics] == ["10.1.1.11", "10.1.1.21"]
    assert nics[0]["ipv4"]["subnet"] == [{"address": "10.1.1.0", "prefix": "24"}]
    assert nics[0]["macAddress"] == "02000A01010B" and nics[0]["ipv4"]["ipAddress"][0]["publicIpAddress"] == ""
    assert len(metadata.instance_document(fabric(), default_facts(), "vm2")["network"]["interface"]) == 1


def test_the_caller_is_known_by_its_address_on_this_host_only():
    f = fabric()
    assert metadata.caller(f, "host1", "10.1.1.11").name == "vm1"
    assert metadata.caller(f, "host1", "10.1.1.21").name == "vm1"      # its second NIC
    assert metadata.caller(f, "host1", "10.1.2.13") is None             # vm3 lives on host2
    assert metadata.caller(f, "host1", "10.1.1.1") is None and metadata.caller(f, "host1", "nonsense") is None


OK = {"metadata": "true"}
LB = "/metadata/loadbalancer?api-version=2020-10-01"
INSTANCE = "/metadata/instance?api-version=2021-02-01"


def meta(facts=None):
    m = Metadata(fabric(), "host1")
    if facts is not None:
        m.update(facts)
    return m


def answer(m, target, headers=OK, source="10.1.1.11", method="GET"):
    status, ctype, body = m.answer(method, target, headers, source)
    return status, (json.loads(body) if ctype.startswith("application/json") else body)


def test_imds_refuses_requests_as_azure_does():
    m = meta(default_facts())
    assert answer(m, INSTANCE, headers={})[0] == 400
    assert answer(m, INSTANCE, headers={"metadata": "false"})[0] == 400
    assert answer(m, INSTANCE, headers={**OK, "x-forwarded-for": "192.0.2.10"})[0] == 400
    status, body = answer(m, "/metadata/instance")
    assert status == 400 and "api-version" in body["error"] and body["newest-versions"]
    assert answer(m, "/metadata/loadbalancer?api-version=2019-06-01")[0] == 400     # before the loadbalancer API
    assert answer(m, "/metadata/instance?api-version=1999-01-01")[0] == 400
    assert answer(m, INSTANCE, source="10.1.2.13")[0] == 403                          # not a VM on this host
    assert answer(m, "/metadata/nothing?api-version=2021-02-01")[0] == 404
    assert answer(m, INSTANCE, method="POST")[0] == 405
    assert answer(m, "/metadata/versions")[1]["apiVersions"][0] == "2017-03-01"


def test_imds_answers_documents_and_parts_of_them():
    s = default_facts()
    m = meta(s)
    assert answer(m, INSTANCE) == (200, metadata.instance_document(fabric(), s, "vm1"))
    assert answer(m, LB) == (200, metadata.loadbalancer_document(fabric(), s, "vm1"))
    assert answer(m, "/metadata/instance/compute/name?api-version=2021-02-01&format=text") == (200, "vm1")
    assert answer(m, "/metadata/instance/network/interface/1/ipv4/ipAddress/0/privateIpAddress"
                     "?api-version=2021-02-01&format=text", source="10.1.1.21") == (200, "10.1.1.21")
    assert answer(m, "/metadata/instance/compute?api-version=2021-02-01")[1]["name"] == "vm1"
    assert answer(m, "/metadata/instance/compute/nope?api-version=2021-02-01")[0] == 404
    assert answer(m, "/metadata/instance/compute?api-version=2021-02-01&format=text")[0] == 400


def test_imds_says_unavailable_until_the_agent_compiled_the_load_balancers():
    m = meta()
    assert answer(m, LB)[0] == 503
    assert answer(m, INSTANCE)[0] == 200     # what the fabric alone tells
    m.update(default_facts())
    assert answer(m, LB)[0] == 200


def test_a_request_that_asks_to_wait_is_held_until_the_document_changes():
    """muxlab's long poll: If-None-Match with the current ETag and `wait` holds the request
    until the host has a new document for the VM (then 200), or the wait is over (304)."""
    import threading
    s = default_facts()
    m = meta(s)
    status, _, body, extra = m.respond("GET", LB, OK, "10.1.1.11")
    tag = extra["ETag"]
    assert status == 200 and tag
    # unchanged: 304 once the wait is over, with the same tag
    assert m.respond("GET", LB + "&wait=0.2", {**OK, "if-none-match": tag}, "10.1.1.11")[::3] == (304, {"ETag": tag})
    # a stale tag: answered at once
    assert m.respond("GET", LB + "&wait=30", {**OK, "if-none-match": '"old"'}, "10.1.1.11")[0] == 200
    # a change for this VM wakes the held request; meanwhile the VM counts as asking
    held = {}
    t = threading.Thread(target=lambda: held.update(r=m.respond("GET", LB + "&wait=30", {**OK, "if-none-match": tag},
                                                                  "10.1.1.11")))
    t.start()
    deadline = time.monotonic() + 10
    while not m.waiting.get("vm1"):
        assert time.monotonic() < deadline, "the request was not held"
        time.sleep(0.01)
    web = default_lbs()
    web["web"].properties.loadBalancingRules[0].properties.backendPort = 8081
    m.update(compile_facts(web, fabric()))
    assert m.behind(time.monotonic() + 60) in ([], ["vm1"])   # waiting: still asking, whatever the clock
    t.join(10)
    status, _, body, extra = held["r"]
    assert status == 200 and extra["ETag"] != tag and "8081" in body
    assert m.behind(time.monotonic()) == []
