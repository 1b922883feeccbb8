"""Config rendering from the model: FRR, ExaBGP, containerlab topology, node plans."""
import yaml

from muxlab.cli.lab import render_folder
from muxlab.fabric.lab import load_lab
from muxlab.fabric.render import links, node_plan, render_edge_nft, render_exabgp, render_frr, render_lab_files, render_topology
from tests.unit.conftest import DEFAULT_MODEL, REPO


def lab():
    return load_lab(DEFAULT_MODEL)


def test_committed_lab_folder_is_up_to_date():
    # containerlab/ is what `containerlab deploy` reads directly: it must match lab.yml
    folder = REPO / "containerlab"
    files = render_lab_files(lab(), DEFAULT_MODEL.read_text())
    stale = [rel for rel, text in files.items() if (folder / rel).read_text() != text]
    assert not stale, f"run `muxlab render`: stale {stale}"


def test_render_folder_writes_only_changes(tmp_path):
    (tmp_path / "lab.yml").write_text(DEFAULT_MODEL.read_text())
    first = render_folder(tmp_path)
    assert {p.name for p in first} == {"muxlab.clab.yml", "frr.conf", "exabgp.conf", "edge.nft"}
    assert render_folder(tmp_path) == []


def test_frr_peers_every_mux_with_ecmp_and_blackhole():
    conf = render_frr(lab())
    for addr in ("10.0.1.1", "10.0.1.3", "10.0.1.5"):
        assert f" neighbor {addr} peer-group MUXES" in conf
    assert " neighbor MUXES remote-as 65100" in conf and "router bgp 65000" in conf
    assert "  maximum-paths 64" in conf and " bgp bestpath as-path multipath-relax" in conf
    assert " no bgp ebgp-requires-policy" in conf and " timers bgp 1 3" in conf
    assert "ip route 0.0.0.0/0 blackhole" in conf
    assert "ip route 10.1.2.0/24 10.0.2.3" in conf
    assert "interface eth1\n description mux1\n ip address 10.0.1.0/31" in conf
    assert "interface eth7\n description client1\n ip address 192.0.2.1/24" in conf
    assert "no zebra nexthop kernel enable" in conf


def test_exabgp_next_hop_self_speaker_per_mux():
    conf = render_exabgp(lab(), "mux2")
    assert "neighbor 10.0.1.2 {" in conf and "local-address 10.0.1.3;" in conf
    assert "local-as 65100;" in conf and "peer-as 65000;" in conf and "hold-time 3;" in conf
    assert "run /opt/muxlab/bin/python -m mux.bgp_helper;" in conf


def test_topology_is_unprivileged_and_complete():
    topo = yaml.safe_load(render_topology(lab()))
    d = topo["topology"]["defaults"]
    assert d["privileged"] is False and "cap-add" not in d
    groups = topo["topology"]["groups"]
    # least privilege: tenants and the internet have no SYS_ADMIN and no management interface
    for role in ("vm", "client"):
        assert set(groups[role]["cap-add"]) == {"NET_ADMIN", "NET_RAW"} and groups[role]["network-mode"] == "none"
    assert groups["edge"]["network-mode"] == "none" and "cap-add" not in groups["manager"]
    assert "network-mode" not in groups["host"] and "SYS_ADMIN" in groups["host"]["cap-add"]
    # infrastructure binds its own certificate, tenants none
    binds = {n: v.get("binds", []) for n, v in topo["topology"]["nodes"].items()}
    assert "pki/host1:/etc/muxlab/pki:ro" in binds["host1"] and not any("pki" in b for b in binds["vm1"])
    assert set(topo["topology"]["nodes"]) == set(lab().node_names())
    assert topo["topology"]["groups"]["edge"]["sysctls"]["net.ipv4.fib_multipath_hash_policy"] == 1
    eps = [tuple(l["endpoints"]) for l in topo["topology"]["links"]]
    assert ("edge:eth1", "mux1:eth1") in eps and ("host3:eth3", "vm6:eth1") in eps
    assert len(eps) == 3 + 3 + 2 + 6 + 2  # + vm1's and vm4's second NICs
    # every interface appears once per node
    seen = [e for pair in eps for e in pair]
    assert len(seen) == len(set(seen))


def test_underlay_is_jumbo_and_access_links_are_1500():
    by_node = {(l.a, l.b): l.mtu for l in links(lab())}
    assert by_node[("edge", "mux1")] >= 1550 and by_node[("edge", "host1")] >= 1550
    assert by_node[("edge", "client1")] == 1500 and by_node[("host1", "vm1")] == 1500


def test_node_plans():
    l = lab()
    mux = node_plan(l, "mux3")
    assert mux.addresses == [("eth1", "10.0.1.5/31")] and mux.default_via == "10.0.1.4"
    host = node_plan(l, "host2")
    assert host.bridge == ("br0", ["eth2", "eth3", "eth4"], "10.1.2.1/24") and host.default_via == "10.0.2.2"
    # seed 000's secondary subnet: its gateway on the bridge, vm4's second NIC routed there
    assert host.secondary == ("10.1.102.1/32", ["10.1.102.24"])
    assert node_plan(l, "host1").secondary is None
    vm = node_plan(l, "vm4")
    assert vm.addresses == [("eth1", "10.1.2.14/32")] and vm.default_via == "10.1.2.1" and vm.default_onlink
    # its second NIC has the subnet's prefix (on-link: the seed's trick); vm1's, on its VM subnet, a /32
    assert vm.second_nic == ("eth2", "10.1.102.24/24", "10.1.2.1", "10.1.2.14")
    assert node_plan(l, "vm1").second_nic == ("eth2", "10.1.1.21/32", "10.1.1.1", "10.1.1.11")
    mgr = node_plan(l, "manager2")
    assert mgr.role == "manager" and mgr.interfaces == [] and mgr.default_via is None
    client = node_plan(l, "client2")
    assert client.default_via == "198.51.100.1" and client.interfaces == ["eth1"]


def test_edge_filters_internal_and_vip_sources_from_the_internet():
    text = render_edge_nft(lab())
    assert 'elements = { "eth7", "eth8" }' in text
    assert "10.1.2.0/23" in text and "10.0.1.0/30" in text  # collapsed lab-internal space
    assert "iifname @internet_ports ip saddr @vips counter name spoofed_from_internet drop" in text


def test_topology_has_managers_on_a_pinned_management_network():
    text = render_topology(lab())
    assert "mgmt-ipv4: ${MUXLAB_MGMT_PREFIX:=172.30.1}.201" in text and "manager3:" in text
    assert "ipv4-subnet: ${MUXLAB_MGMT_SUBNET:=172.30.1.0/24}" in text
    assert "loadbalancers.yml:/etc/muxlab/loadbalancers.yml:ro" in text
    assert "/var/lib/muxlab" not in text  # no directory shared between nodes any more


def test_bridge_gateway_mac_is_fixed_and_local():
    from muxlab.node.supervisor import gateway_mac
    assert gateway_mac("10.1.2.1/24") == "02:01:0a:01:02:01"
    assert int(gateway_mac("10.1.3.1/24").split(":")[0], 16) & 0x02  # locally administered
