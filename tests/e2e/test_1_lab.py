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
    assert set(hops) == {str(v.address) for v in lab.lab.vips}
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
    table = cli("status", "--name", E2E_LAB).stdout
    assert "203.0.113.10     mux1, mux2, mux3" in table


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


def test_apply_refuses_a_port_clash_and_changes_nothing(lab, L, tmp_path):
    import yaml
    from tests.e2e.conftest import E2E_LAB, cli
    raw = yaml.safe_load((lab.folder / "lab.yml").read_text())
    raw["vips"]["web"]["rules"].append({"protocol": "tcp", "port": 80, "pool": "direct"})
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(raw))
    before = L.assert_mux_tables_identical()
    p = cli("apply", str(bad), "--name", E2E_LAB, check=False)
    assert p.returncode == 2 and "vips.web.rules[2].port: 80" in p.stderr
    assert not (lab.store / "lab.yml").exists()
    assert L.assert_mux_tables_identical() == before


def test_apply_changes_pools_live_and_pinned_flows_stay(lab, L, tmp_path):
    """A live pool change: new flows follow the new table at once; established flows keep
    their DIP through the MUX's conntrack mark even where their bucket moved."""
    import yaml
    from tests.e2e.conftest import E2E_LAB, cli
    hold = L.hold(conns=24, duration=6)
    raw = yaml.safe_load((lab.folder / "lab.yml").read_text())
    raw["pools"]["web"] = ["vm1", "vm2", "vm3", "vm4"]  # vm5 and vm6 leave the web pool (still alive)
    new = tmp_path / "new.yml"
    new.write_text(yaml.safe_dump(raw))
    try:
        cli("apply", str(new), "--name", E2E_LAB)
        L.wait_for("new tables on every MUX", lambda: "vm5" not in L.assert_mux_tables_identical()["svc_web_http"], timeout=10)
        res = L.flows("client2", "web", 80, 300)
        assert res["failures"] == 0 and set(res["by_dip"]) == {"vm1", "vm2", "vm3", "vm4"}
        run = hold.result()
        assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]  # including those on vm5, vm6
    finally:
        (lab.store / "lab.yml").unlink(missing_ok=True)
    L.wait_for("tables back", lambda: "vm5" in L.assert_mux_tables_identical()["svc_web_http"], timeout=10)
