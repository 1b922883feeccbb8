"""The lab stands up: nodes, BGP sessions, one ECMP next hop per MUX for every VIP."""
from muxlab.cli import lab as labmod


def test_every_node_running(lab):
    st = labmod.status(lab)
    assert sorted(n["node"] for n in st["nodes"]) == sorted(lab.lab.node_names())
    assert all(n["state"] == "running" for n in st["nodes"]), st["nodes"]


def test_every_mux_session_established(lab):
    assert labmod.bgp_sessions(lab) == {m.name: "Established" for m in lab.lab.muxes}


def test_every_vip_has_one_next_hop_per_mux(lab):
    hops = labmod.vip_nexthops(lab)
    assert set(hops) == {"203.0.113.10", "203.0.113.11", "203.0.113.20", "203.0.113.30"}
    for vip, muxes in hops.items():
        assert muxes == ["mux1", "mux2", "mux3"], (vip, muxes)


def test_edge_hashes_ecmp_on_l4(L):
    out = L.sh("edge", "sysctl -n net.ipv4.fib_multipath_hash_policy").stdout.strip()
    assert out == "1"
    # different source ports of one client land on different MUXes
    seen = set()
    for sport in range(40000, 40040):
        r = L.sh("edge", f"ip route get 203.0.113.10 from 192.0.2.10 iif eth7 ipproto 6 sport {sport} dport 80").stdout
        seen.add(r.split(" via ")[1].split()[0])
    assert len(seen) == 3, seen


def test_status_json_and_table(lab):
    from tests.e2e.conftest import E2E_LAB, cli
    import json
    st = json.loads(cli("status", "--name", E2E_LAB, "--json").stdout)
    assert st["bgp"] == {"mux1": "Established", "mux2": "Established", "mux3": "Established"}
    assert st["manager_url"].startswith("https://172.30.") and st["manager_url"].endswith(":8080")
    assert st["token"] and st["ca_file"].endswith("pki/ca.crt")
    assert sorted(m["role"] for m in st["managers"].values()) == ["follower", "follower", "leader"]
    assert st["load_balancers"] == ["bench", "direct", "web"]
    assert all(a["nb_cfg"] == st["nb_cfg"] for a in st["agents"].values()) and len(st["agents"]) == 6
    table = cli("status", "--name", E2E_LAB).stdout
    assert "203.0.113.10     mux1, mux2, mux3" in table and "leader" in table


def test_no_lab_packet_leaves_by_management(L):
    # clients and VMs route into the lab; the edge blackholes non-lab space
    assert "via 192.0.2.1 dev eth1" in L.sh("client1", "ip route show default").stdout
    assert "via 10.1.1.1 dev eth1" in L.sh("vm1", "ip route show default").stdout
    assert "blackhole" in L.sh("edge", "ip route show default").stdout
    assert "eth0" not in L.sh("edge", "ip route get 8.8.8.8 2>&1 || true").stdout
    r = L.sh("client1", "ping -c1 -W1 198.18.0.1 >/dev/null 2>&1; echo $?").stdout.strip()
    assert r != "0"


def test_second_up_of_a_running_lab_is_refused(lab):
    from tests.e2e.conftest import E2E_LAB, cli
    p = cli("up", "--name", E2E_LAB, check=False, timeout=120)
    assert p.returncode == 1 and "already running" in p.stderr


def test_traffic_to_an_unknown_vip_is_named(lab):
    from tests.e2e.conftest import E2E_LAB, cli
    p = cli("traffic", "--name", E2E_LAB, "--vip", "203.0.113.99", "--port", "80", check=False)
    assert p.returncode == 1 and "unknown VIP '203.0.113.99'" in p.stderr and "web (203.0.113.10, 203.0.113.11)" in p.stderr
