"""A classic cloud service (seed 003) as the managers compile it and the hosts act on it:
the classic probe state machine, the guest agent's health reports, internal endpoints."""
import dataclasses
import subprocess
import time

import pytest

from hostagent import datapath as host_dp
from hostagent.probes import FLAP_HEALTHY_PROBES, FLAP_OUTAGES, ClassicState, new_state, ProbeState
from hostagent.wireserver import Reports, parse_health
from muxlab.lb.azure import parse_lb
from muxlab.lb.check import check
from muxlab.lb.compiler import compile_facts
from muxlab.lb.facts import GUEST_PROBE, GUEST_PROTOCOL, Probe, guest_config
from muxlab.lb.metadata import guest_config as guest_config_of_document, loadbalancer_document
from muxlab.node.vmservice import health_report
from tests.unit.conftest import fabric
from tests.unit.test_datapath import needs_nft

CLASSIC = Probe("svc/MyProbe", "http", 80, "/Probe.aspx", 1.0, 0.5, 1, 1, "classic", 3.0)


def run(history, probe=CLASSIC, start=0.0):
    """Feed (time, answer) pairs; answer: "ok", "no" (a definite refusal) or "-" (silence).
    Returns the rotation after each answer."""
    st = ClassicState(since=start, last_ok=start)
    out = []
    for t, a in history:
        st.step(a == "ok", probe, t, "" if a == "ok" else "x", definite=a == "no")
        out.append(st.up)
    return out, st


# ---------------------------------------------------------------- classic probe semantics

def test_a_definite_refusal_takes_the_instance_out_at_once():
    assert run([(1, "ok"), (2, "no")])[0] == [True, False]


def test_silence_takes_it_out_only_after_the_timeout():
    # down_after 3 s: silent at 2, 3 (2 s since the last positive answer), out at 4 (3 s)
    assert run([(1, "ok"), (2, "-"), (3, "-"), (4, "-")])[0] == [True, True, True, False]


def test_silence_from_the_start_counts_from_when_probing_began():
    assert run([(1, "-"), (2, "-"), (3, "-")], start=0.0)[0] == [True, True, False]


def test_the_first_positive_answer_puts_it_back_right_away():
    ups, st = run([(1, "no"), (2, "ok")])
    assert ups == [False, True] and st.since == 2


def test_an_instance_that_flaps_is_held_out_until_it_has_been_healthy_for_a_number_of_probes():
    history, t = [], 0
    for _ in range(FLAP_OUTAGES - 1):   # out and back, twice: still brought back at once
        history += [(t + 1, "no"), (t + 2, "ok")]
        t += 2
    ups, _ = run(history)
    assert ups == [False, True] * (FLAP_OUTAGES - 1)
    # the third outage within the window: now it needs FLAP_HEALTHY_PROBES positive answers in a row
    history += [(t + 1, "no")] + [(t + 2 + i, "ok") for i in range(FLAP_HEALTHY_PROBES)]
    ups, st = run(history)
    tail = ups[-FLAP_HEALTHY_PROBES:]
    assert tail == [False] * (FLAP_HEALTHY_PROBES - 1) + [True]
    assert st.up and st.last_error == ""


def test_a_refusal_while_held_out_starts_the_count_again():
    history, t = [], 0
    for _ in range(FLAP_OUTAGES):
        history += [(t + 1, "no"), (t + 2, "ok")]
        t += 2
    history += [(t + 1, "ok"), (t + 2, "-"), (t + 3, "ok")]   # silence while out: the streak restarts
    ups, st = run(history)
    assert not st.up and st.ok_streak == 1 and "held out" in st.last_error


def test_outages_older_than_the_window_do_not_make_it_flap():
    history = [(1, "no"), (2, "ok"), (3, "no"), (4, "ok"), (100, "no"), (101, "ok")]
    assert run(history)[0][-1] is True   # 30 probe intervals = 30 s: the first two have aged out


def test_the_semantics_pick_the_state_machine():
    assert isinstance(new_state(CLASSIC, 0), ClassicState)
    assert isinstance(new_state(dataclasses.replace(CLASSIC, semantics="threshold"), 0), ProbeState)


# ---------------------------------------------------------------- the guest agent's health reports

GUEST = Probe(f"svc/{GUEST_PROBE}", GUEST_PROTOCOL, 0, "", 0.5, 1.5, 1, 1, "classic", 3.0)
HEADERS = {"x-ms-version": "2012-11-30"}


def test_the_vm_s_report_is_azure_s_health_document():
    assert parse_health(health_report("vm1", busy=False)) == ("vm1", "Ready", "")
    assert parse_health(health_report("vm1", busy=True)) == ("vm1", "NotReady", "Busy")


@pytest.mark.parametrize("body,headers,source,status,says", [
    (health_report("vm1", False), {}, "10.1.1.11", 400, "x-ms-version"),
    (health_report("vm1", False), HEADERS, "10.1.2.13", 403, "not a VM on host1"),
    (health_report("vm2", False), HEADERS, "10.1.1.11", 400, "InstanceId 'vm2'"),
    (b"<Health><Container/></Health>", HEADERS, "10.1.1.11", 400, "0 Role elements"),
    (health_report("vm1", False).replace(b"Ready", b"Sleepy"), HEADERS, "10.1.1.11", 400, "'Sleepy'"),
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><Health>&a;</Health>", HEADERS, "10.1.1.11", 400,
     "not a Health document"),
    (b"<Nope/>", HEADERS, "10.1.1.11", 400, "must be Health"),
])
def test_a_bad_report_is_refused_and_changes_nothing(body, headers, source, status, says):
    reports = Reports(fabric(), "host1")
    code, message = reports.receive(source, headers, body)
    assert code == status and says in message, message
    assert reports.latest == {}


def test_the_guest_probe_follows_the_last_report():
    reports = Reports(fabric(), "host1")
    assert reports.answer("vm1", GUEST) == (False, "no health report yet", False)
    assert reports.receive("10.1.1.11", HEADERS, health_report("vm1", False)) == (200, "")
    assert reports.answer("vm1", GUEST) == (True, "", False)
    reports.receive("10.1.1.11", HEADERS, health_report("vm1", True))
    ok, error, definite = reports.answer("vm1", GUEST)
    assert not ok and definite and "NotReady (Busy)" in error
    reports.receive("10.1.1.11", HEADERS, health_report("vm1", False))
    time.sleep(0.3)
    ok, error, definite = reports.answer("vm1", dataclasses.replace(GUEST, timeout=0.2))
    assert not ok and not definite and "no health report for" in error   # stale: silence, not a refusal


# ---------------------------------------------------------------- the compiled service

def classic_lb(**cloud):
    return parse_lb({"properties": {
        "frontendIPConfigurations": [{"name": "vip", "properties": {"publicIPAddress": {
            "id": "/publicIPAddresses/svc-vip", "properties": {"ipAddress": "203.0.113.40"}}}}],
        "backendAddressPools": [
            {"name": "FERole", "properties": {"loadBalancerBackendAddresses": [
                {"name": "vm1", "properties": {"ipAddress": "10.1.1.11"}},
                {"name": "vm3", "properties": {"ipAddress": "10.1.2.13"}}]}},
            {"name": "BERole", "properties": {"loadBalancerBackendAddresses": [
                {"name": "vm2", "properties": {"ipAddress": "10.1.1.12"}}]}}],
        "probes": [{"name": "MyProbe", "properties": {"protocol": "Http", "port": 80, "requestPath": "/Probe.aspx",
                                                      "intervalInSeconds": 5, "timeoutInSeconds": 100}}],
        "loadBalancingRules": [
            {"name": "FE_External_Tcp", "properties": {
                "frontendIPConfiguration": {"id": "frontendIPConfigurations/vip"},
                "backendAddressPool": {"id": "backendAddressPools/FERole"},
                "protocol": "Tcp", "frontendPort": 10001, "backendPort": 10001}},
            {"name": "HTTP_Probe", "properties": {
                "frontendIPConfiguration": {"id": "frontendIPConfigurations/vip"},
                "backendAddressPool": {"id": "backendAddressPools/FERole"}, "probe": {"id": "probes/MyProbe"},
                "protocol": "Tcp", "frontendPort": 80, "backendPort": 80}}],
        "cloudService": {"name": "svc", **cloud}}})


INTERNAL = {"internalEndpoints": [{"name": "BE_Tcp", "role": "BERole", "protocol": "Tcp"},
                                  {"name": "BE_Udp", "role": "BERole", "protocol": "Udp"},
                                  {"name": "BE_Http", "role": "BERole", "protocol": "Tcp", "port": 80}]}


def test_a_classic_service_compiles_to_classic_probes_and_the_guest_agent_probe():
    facts = compile_facts({"svc": classic_lb()}, fabric())
    rules = {r.name: r for r in facts.rules}
    assert rules["HTTP_Probe"].probe.semantics == "classic" and rules["HTTP_Probe"].probe.down_after == 100
    guest = rules["FE_External_Tcp"].probe
    assert guest.protocol == GUEST_PROTOCOL and guest.key == f"svc/{GUEST_PROBE}" and guest.semantics == "classic"
    # the VM serves its rules' ports, not a "guest" port 0
    tcp, udp, _ = guest_config(facts, "vm1")
    assert tcp == {80, 10001} and not udp


def test_an_azure_load_balancer_keeps_probe_threshold_semantics():
    from tests.unit.conftest import default_facts
    assert {r.probe.semantics for r in default_facts().rules if r.probe} == {"threshold"}
    assert all(r.probe for r in default_facts().rules if r.lb == "web")   # no guest probe sneaks in


def test_internal_endpoints_get_ports_and_only_the_service_s_instances_as_peers():
    lb = classic_lb(**INTERNAL)
    assert check({"svc": lb}, fabric()) == []
    facts = compile_facts({"svc": lb}, fabric())
    eps = {(e.name, e.vm): e for e in facts.internal}
    assert set(eps) == {("BE_Tcp", "vm2"), ("BE_Udp", "vm2"), ("BE_Http", "vm2")}
    assert eps[("BE_Tcp", "vm2")].port == 20000 and eps[("BE_Udp", "vm2")].port == 20000   # per protocol
    assert eps[("BE_Http", "vm2")].port == 80
    assert eps[("BE_Tcp", "vm2")].peers == ("10.1.1.11", "10.1.1.12", "10.1.2.13")
    # the instance learns them from IMDS, and serves them
    doc = loadbalancer_document(fabric(), facts, "vm2")
    assert {(e["name"], e["port"]) for e in doc["loadbalancer"]["internalEndpoints"]} == {
        ("BE_Tcp", 20000), ("BE_Udp", 20000), ("BE_Http", 80)}
    assert guest_config_of_document(doc) == guest_config(facts, "vm2")


@pytest.mark.parametrize("endpoints,field,says", [
    ([{"name": "x", "role": "NoSuchRole", "protocol": "Tcp"}], "internalEndpoints[0].role", "backendAddressPool"),
    ([{"name": "x", "role": "BERole", "protocol": "Tcp"}, {"name": "x", "role": "BERole", "protocol": "Udp"}],
     "internalEndpoints[1].name", "already has an internal endpoint"),
    ([{"name": "x", "role": "BERole", "protocol": "Tcp", "port": 81},
      {"name": "y", "role": "BERole", "protocol": "Tcp", "port": 81}], "internalEndpoints[1].port", "tcp/81 already"),
])
def test_a_bad_internal_endpoint_names_its_field(endpoints, field, says):
    problems = check({"svc": classic_lb(internalEndpoints=endpoints)}, fabric())
    assert any(p[0].endswith(field) and says in p[2] for p in problems), problems


@needs_nft
def test_the_host_guards_internal_endpoints_in_the_kernel(tmp_path):
    facts = compile_facts({"svc": classic_lb(**INTERNAL)}, fabric())
    text = "".join(t.render() for t in host_dp.tables(fabric(), facts, "host1", None, ("172.30.1.7/24",)))
    (tmp_path / "whole").write_text(text)
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && "
                           "nft -f whole && nft list set ip muxlab_host internal_peers && "
                           "nft list chain ip muxlab_host forward"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "10.1.2.13 . 10.1.1.12 . tcp . 20000" in proc.stdout
    assert "10.1.3.15" not in proc.stdout.split("internal_peers")[1].split("}")[0]   # vm5 is no instance
    assert "internal_denied" in proc.stdout


@pytest.mark.parametrize("path", ["/x\r\nHost: evil", "/a b", "/\x00"])
def test_a_probe_path_that_would_break_its_request_line_is_refused(path):
    from muxlab.fabric.lab import ModelError
    lb = canonical_probe_lb(path)
    with pytest.raises(ModelError) as exc:
        parse_lb(lb)
    assert any("requestPath" in p[2] and "URI characters" in p[2] for p in exc.value.problems), exc.value.problems


def canonical_probe_lb(path):
    return {"properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {
            "id": "/publicIPAddresses/p", "properties": {"ipAddress": "203.0.113.40"}}}}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": path}}]}}
