"""Fabric validation: good input parses; every bad input names its field and value."""
import pytest

from muxlab.datapath.conventions import dip_mac
from muxlab.datapath.maglev import smallest_prime_at_least
from muxlab.fabric.lab import ModelError, load_lab, parse_lab, peer_of
from tests.unit.conftest import DEFAULT_MODEL


def test_default_model_parses():
    lab = load_lab(DEFAULT_MODEL)
    assert [m.name for m in lab.muxes] == ["mux1", "mux2", "mux3"]
    assert [h.name for h in lab.hosts] == ["host1", "host2", "host3"]
    assert all(len(lab.vms_on(h.name)) == 2 for h in lab.hosts)
    assert lab.managers == ("manager1", "manager2", "manager3") and lab.role_of("manager2") == "manager"
    assert str(lab.public_vips) == "203.0.113.0/24" and str(lab.vnet) == "10.1.0.0/16"
    assert str(lab.muxes[0].edge_address) == "10.0.1.0"
    assert str(lab.hosts[0].vm_gateway) == "10.1.1.1/24"
    assert lab.vm("vm1").mac == "02:00:0a:01:01:0b"


def errors_of(raw):
    with pytest.raises(ModelError) as exc:
        parse_lab(raw)
    return exc.value.problems


def only_error(raw):
    problems = errors_of(raw)
    assert len(problems) == 1, problems
    return problems[0]









def test_vm_ip_outside_its_host_subnet(raw_model):
    raw_model["vms"]["vm1"]["ip"] = "10.1.2.99"
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("vms.vm1.ip", "10.1.2.99") and "host1" in msg


def test_vm_on_unknown_host_reported_once(raw_model):
    raw_model["vms"]["vm1"]["host"] = "host9"
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("vms.vm1.host", "host9") and "host1" in msg



def test_overlapping_underlay_links(raw_model):
    raw_model["muxes"]["mux2"]["underlay"] = "10.0.1.0/31"
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("muxes.mux2.underlay", "10.0.1.0/31") and "overlaps" in msg


def test_not_point_to_point(raw_model):
    raw_model["muxes"]["mux1"]["underlay"] = "10.0.1.1/24"
    path, value, _ = only_error(raw_model)
    assert (path, value) == ("muxes.mux1.underlay", "10.0.1.1/24")


def test_unknown_field_named(raw_model):
    raw_model["muxes"]["mux1"]["undrelay"] = "10.0.1.1/31"
    path, value, msg = only_error(raw_model)
    assert path == "muxes.mux1.undrelay" and "unknown field" in msg



def test_hold_time_below_exabgp_minimum(raw_model):
    raw_model["bgp"]["hold_time"] = 2
    paths = [p for p, _, _ in errors_of(raw_model)]
    assert "bgp.hold_time" in paths


def test_table_size_must_be_prime(raw_model):
    raw_model["hashing"] = {"table_size": 1000}
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("hashing.table_size", 1000) and "prime" in msg


def test_duplicate_node_names(raw_model):
    raw_model["clients"]["mux1"] = {"address": "192.0.2.20/24"}
    paths = [p for p, _, _ in errors_of(raw_model)]
    assert "clients.mux1" in paths


def test_client_must_use_documentation_range(raw_model):
    raw_model["clients"]["client1"]["address"] = "10.9.9.9/24"
    path, value, _ = only_error(raw_model)
    assert (path, value) == ("clients.client1.address", "10.9.9.9/24")


def test_not_a_mapping():
    path, value, _ = only_error(["a", "list"])
    assert path == "" and value == ["a", "list"]


def test_missing_required_sections():
    paths = {p for p, _, _ in errors_of({"name": "x"})}
    assert {"muxes", "hosts", "vms", "clients"} <= paths


def test_error_message_names_field_and_value(raw_model):
    raw_model["bgp"]["keepalive"] = "eighty"
    with pytest.raises(ModelError) as exc:
        parse_lab(raw_model)
    assert "bgp.keepalive: 'eighty'" in str(exc.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ModelError, match="cannot be read"):
        load_lab(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ModelError, match="not valid YAML"):
        load_lab(bad)


def test_manager_count_and_vm_subnet_inside_vnet(raw_model):
    raw_model["managers"] = 0
    raw_model["hosts"]["host1"]["vm_subnet"] = "10.9.1.0/24"
    problems = {p: v for p, v, _ in errors_of(raw_model)}
    assert problems["managers"] == 0 and problems["hosts.host1.vm_subnet"] == "10.9.1.0/24"


def test_public_range_must_be_documentation_space(raw_model):
    raw_model["addressing"]["public_vips"] = "8.8.8.0/24"
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("addressing.public_vips", "8.8.8.0/24") and "RFC 5737" in msg


def test_helpers():
    import ipaddress
    assert str(peer_of(ipaddress.IPv4Interface("10.0.1.1/31"))) == "10.0.1.0"
    assert str(peer_of(ipaddress.IPv4Interface("10.0.1.2/30"))) == "10.0.1.1"
    assert dip_mac(ipaddress.IPv4Address("10.1.3.16")) == "02:00:0a:01:03:10"
    assert smallest_prime_at_least(600) == 601


def test_a_fabric_with_a_key_twice_is_refused_naming_key_and_lines(tmp_path):
    """YAML keeps the last of two values silently; the fabric file refuses it instead."""
    text = DEFAULT_MODEL.read_text()
    twice = tmp_path / "lab.yml"
    twice.write_text(text.replace("\nmuxes:", "\nname: other\nmuxes:", 1) if "\nname:" in text else "name: a\nname: b\n")
    with pytest.raises(ModelError, match=r"duplicate key 'name' \(line \d+; first at line \d+\)"):
        load_lab(twice)


# ---------------------------------------------------------------- seed 000: a host's secondary subnet

@pytest.mark.parametrize("host,value,field,says", [
    ("host1", "10.1.1.128/25", "hosts.host1.secondary_subnet", "overlaps 10.1.1.0/24"),
    ("host1", "10.9.0.0/24", None, None),   # outside the VNet: see below
    ("host1", "10.1.103.0/30", "hosts.host1.secondary_subnet", "/29 or larger"),
])
def test_a_bad_secondary_subnet_is_named(raw_model, host, value, field, says):
    raw_model["hosts"][host]["secondary_subnet"] = value
    path, got, msg = only_error(raw_model)
    assert got == value and path == f"hosts.{host}.secondary_subnet"
    assert (says or "inside addressing.vnet") in msg


def test_a_second_nic_sits_on_one_of_its_host_s_subnets(raw_model):
    raw_model["vms"]["vm4"]["nic2"] = "10.1.103.24"
    path, value, msg = only_error(raw_model)
    assert (path, value) == ("vms.vm4.nic2", "10.1.103.24") and "10.1.102.0/24" in msg
    raw_model["vms"]["vm4"]["nic2"] = "10.1.102.1"   # the secondary gateway
    assert only_error(raw_model)[:2] == ("vms.vm4.nic2", "10.1.102.1")
