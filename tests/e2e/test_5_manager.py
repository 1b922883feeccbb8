"""The SLB manager, for real: live changes through the API reach every MUX and host and the
edge, established flows survive them, a VIP swap moves only new connections, a bad request
changes nothing, and the data path rides out one manager killed and every manager stopped."""
import copy
import json
import subprocess
import time
from pathlib import Path

import pytest

from muxlab.cli import faults
from muxlab.cli.api import ApiError
from muxlab.cli.lab import vip_nexthops
from tests.e2e.conftest import E2E_LAB, cli

MUXES = ["mux1", "mux2", "mux3"]


def new_lb(pool_ips, port=8081, probe=True):
    """A load balancer whose public IP is given only by id: the manager allocates it."""
    props = {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {"id": "/publicIPAddresses/extra-pip"}}}],
        "backendAddressPools": [{"name": "pool", "properties": {"loadBalancerBackendAddresses": [
            {"name": f"b{i}", "properties": {"ipAddress": ip}} for i, ip in enumerate(pool_ips)]}}],
        "loadBalancingRules": [{"name": "http", "properties": {
            "frontendIPConfiguration": {"id": "frontendIPConfigurations/fe"}, "backendAddressPool": {"id": "backendAddressPools/pool"},
            "protocol": "Tcp", "frontendPort": port, "backendPort": 8080,
            **({"probe": {"id": "probes/p"}} if probe else {})}}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 8080, "requestPath": "/health",
                                               "intervalInSeconds": 1, "probeThreshold": 2}}] if probe else [],
    }
    return {"properties": props}


def address_of(lb_body):
    return lb_body["properties"]["frontendIPConfigurations"][0]["properties"]["publicIPAddress"]["properties"]["ipAddress"]


def test_add_and_remove_a_load_balancer(L):
    api = L.api
    body = api.put("/loadBalancers/extra", new_lb(["10.1.3.15", "10.1.3.16"]))
    vip = address_of(body)
    assert vip.startswith("203.0.113.")
    L.synced(api)
    L.wait_for("the new VIP on the edge through every MUX", lambda: vip_nexthops(L.ref, [vip])[vip] == MUXES, timeout=15)
    res = L.flows("client1", vip, 8081, 200)
    assert res["failures"] == 0 and set(res["by_dip"]) == {"vm5", "vm6"}
    # a re-PUT of the same public IP resource keeps its address
    assert address_of(api.put("/loadBalancers/extra", new_lb(["10.1.3.15", "10.1.3.16"]))) == vip
    api.delete("/loadBalancers/extra")
    L.synced(api)
    L.wait_for("the VIP gone from the edge", lambda: vip_nexthops(L.ref, [vip])[vip] == [], timeout=15)
    assert L.flows("client1", "web", 80, 50)["failures"] == 0


def test_scale_in_and_out_established_flows_stay(L):
    hold = L.hold(conns=24, duration=6)
    try:
        cli("pool", "remove", "web", "web", "vm5", "vm6", "--name", E2E_LAB)
        L.synced()
        tables = L.assert_mux_tables_identical()
        assert {"vm5", "vm6"}.isdisjoint(tables["web/http"]) and set(tables["web/http"]) == {"vm1", "vm2", "vm3", "vm4"}
        res = L.flows("client2", "web", 80, 300)
        assert res["failures"] == 0 and set(res["by_dip"]) == {"vm1", "vm2", "vm3", "vm4"}
        run = hold.result()
        assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]  # those on vm5, vm6 too
    finally:
        cli("pool", "add", "web", "web", "vm5", "vm6", "--name", E2E_LAB)
    L.synced()
    assert len(L.flows("client2", "web", 80, 300)["by_dip"]) == 6


def test_admin_state_down_takes_no_new_flows_and_keeps_established_ones(L):
    hold = L.hold(conns=30, duration=6)
    try:
        cli("backend", "drain", "web", "vm2", "--name", E2E_LAB)
        L.synced()
        assert "vm2" not in L.assert_mux_tables_identical()["web/http"]
        h = json.loads(cli("health", "web", "http", "--json", "--name", E2E_LAB).stdout)
        vm2 = next(b for b in h["loadBalancerBackendAddresses"] if b["name"] == "vm2")
        assert (vm2["state"], vm2["reason"], vm2["detail"]) == ("Down", "Down_Admin", "adminState is Down")
        res = L.flows("client1", "web", 80, 300)
        assert res["failures"] == 0 and "vm2" not in res["by_dip"]
        run = hold.result()
        on_vm2 = [c for c in run["conns"] if c["dip"] == "vm2"]
        assert on_vm2 and all(c["broken_at"] is None for c in run["conns"]), run["conns"]
    finally:
        cli("backend", "undrain", "web", "vm2", "--name", E2E_LAB)
    L.synced()
    assert "vm2" in L.assert_mux_tables_identical()["web/http"]


def put_web(L, mutate):
    api = L.api
    body = api.get("/loadBalancers/web")
    mutate(body["properties"])
    api.put("/loadBalancers/web", body)
    L.synced(api)


def test_changing_a_probe_is_live(L):
    """vm3's /health says 503: the Http probe takes it out; changing that probe to Tcp (the
    port still opens) brings it back, with no redeploy."""
    def probe(kind):
        def mutate(p):
            p["probes"][0]["properties"] = ({"protocol": "Tcp", "port": 8080, "intervalInSeconds": 1, "probeThreshold": 2}
                                            if kind == "Tcp" else {"protocol": "Http", "port": 8080, "requestPath": "/health",
                                                                   "intervalInSeconds": 1, "probeThreshold": 2})
        return mutate
    L.sh("vm3", "touch /run/muxlab/unhealthy")
    try:
        L.wait_for("vm3 out on its failing Http probe", lambda: "vm3" not in L.assert_mux_tables_identical()["web/http"], timeout=10)
        put_web(L, probe("Tcp"))
        L.wait_for("vm3 back under a Tcp probe", lambda: "vm3" in L.assert_mux_tables_identical()["web/http"], timeout=10)
    finally:
        put_web(L, probe("Http"))
        L.sh("vm3", "rm -f /run/muxlab/unhealthy")
    L.wait_for("vm3 in under the Http probe again", lambda: "vm3" in L.assert_mux_tables_identical()["web/http"], timeout=10)


def test_changing_load_distribution_is_live(L):
    def mode(m):
        def mutate(p):
            p["loadBalancingRules"][0]["properties"]["loadDistribution"] = m
        return mutate
    put_web(L, mode("SourceIP"))
    try:
        res = L.flows("client1", "web", 80, 200)  # 200 source ports, one client
        assert res["failures"] == 0 and len(res["by_dip"]) == 1, res["by_dip"]  # session affinity on (client, VIP)
        other = L.flows("client2", "web", 80, 50)
        assert other["failures"] == 0 and len(other["by_dip"]) == 1
    finally:
        put_web(L, mode("Default"))
    assert len(L.flows("client1", "web", 80, 300)["by_dip"]) == 6


def test_vip_swap_moves_new_connections_only(L):
    api = L.api
    body = new_lb(["10.1.3.15", "10.1.3.16"], port=80, probe=False)
    # web has two frontends (inbound and outbound); a swap pairs them one to one
    body["properties"]["frontendIPConfigurations"].append(
        {"name": "staging-out", "properties": {"publicIPAddress": {"id": "/publicIPAddresses/staging-out"}}})
    staging = api.put("/loadBalancers/staging", body)
    staging_vip = address_of(staging)
    L.synced(api)
    hold = L.hold(vip="203.0.113.10", conns=24, duration=6)
    try:
        cli("swap", "web", "staging", "--name", E2E_LAB)
        L.synced()
        res = L.flows("client1", "203.0.113.10", 80, 300)  # production's VIP now reaches the new pool
        assert res["failures"] == 0 and set(res["by_dip"]) == {"vm5", "vm6"}
        res = L.flows("client2", staging_vip, 80, 300)     # and the old pool answers on the staging VIP
        assert res["failures"] == 0 and len(res["by_dip"]) == 6
        run = hold.result()
        assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]   # stayed on their old DIPs
        assert {c["dip"] for c in run["conns"]} - {"vm5", "vm6"}                 # including the old pool's
    finally:
        cli("swap", "web", "staging", "--name", E2E_LAB)
        api.delete("/loadBalancers/staging")
    L.synced(api)
    assert len(L.flows("client1", "web", 80, 300)["by_dip"]) == 6


def test_bad_request_changes_nothing(L):
    api = L.api
    before_lb = api.get("/loadBalancers/web")
    before_cfg = api.get("/sync")["nb_cfg"]
    before_tables = L.assert_mux_tables_identical()
    bad = copy.deepcopy(before_lb)
    bad["properties"]["loadBalancingRules"].append(copy.deepcopy(bad["properties"]["loadBalancingRules"][0]))
    bad["properties"]["loadBalancingRules"][-1]["name"] = "clash"
    bad["properties"]["backendAddressPools"][0]["properties"]["loadBalancerBackendAddresses"][0]["properties"]["ipAddress"] = "10.1.1.99"
    with pytest.raises(ApiError) as exc:
        api.put("/loadBalancers/web", bad)
    assert exc.value.status == 400
    targets = {d["target"]: d for d in exc.value.body["error"]["details"]}
    assert "tcp/80 on frontend web-fe is already taken" in targets["web.properties.loadBalancingRules[2].properties.frontendPort"]["message"]
    assert targets["web.properties.backendAddressPools[0].properties.loadBalancerBackendAddresses[0].properties.ipAddress"]["value"] == "10.1.1.99"
    with pytest.raises(ApiError) as exc:
        api.put("/loadBalancers/web", {"properties": {"frontendIPConfigurations": [{"name": "fe", "properties": {}}], "x": 1}})
    assert exc.value.status == 400 and {d["target"] for d in exc.value.body["error"]["details"]} >= {"properties.x"}
    with pytest.raises(ApiError) as exc:
        api.delete("/loadBalancers/nosuch")
    assert exc.value.status == 404 and "no load balancer named 'nosuch'" in exc.value.body["error"]["message"]
    assert api.get("/loadBalancers/web") == before_lb and api.get("/sync")["nb_cfg"] == before_cfg
    assert L.assert_mux_tables_identical() == before_tables


def leader(L):
    for m in L.ref.lab.managers:
        proc = subprocess.run(["docker", "exec", L.ref.container(m), "ovs-appctl", "-t", "/run/muxlab/ovsdb.ctl",
                               "cluster/status", "Muxlab"], capture_output=True, text=True, timeout=10)
        if "Role: leader" in proc.stdout:
            return m
    return None


def test_one_manager_killed_api_and_agents_go_on(L):
    victim = L.wait_for("a Raft leader", lambda: leader(L), timeout=20)
    hold = L.hold(conns=24, duration=12)
    faults.fail(L.ref, victim, "kill")
    try:
        api = L.ref.api(timeout=20)  # the CLI's client: tries each manager in turn
        api.put("/loadBalancers/extra", new_lb(["10.1.2.13"]))
        L.synced(api, timeout=45)
        vip = address_of(api.get("/loadBalancers/extra"))
        L.wait_for("the new VIP on the edge", lambda: vip_nexthops(L.ref, [vip])[vip] == MUXES, timeout=15)
        assert set(L.flows("client1", vip, 8081, 100)["by_dip"]) == {"vm3"}
        assert L.wait_for("a new leader", lambda: leader(L) not in (None, victim), timeout=20)
        run = hold.result()
        assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]
    finally:
        faults.heal(L.ref, victim)
    api = L.ref.api()
    api.delete("/loadBalancers/extra")
    L.synced(api, timeout=45)
    L.wait_for(f"{victim} back in the cluster", lambda: subprocess.run(
        ["docker", "exec", L.ref.container(victim), "ovs-appctl", "-t", "/run/muxlab/ovsdb.ctl", "cluster/status", "Muxlab"],
        capture_output=True, text=True).stdout.count("Role: ") == 1 and L.ref.api().get("/sync") is not None, timeout=30)


def test_every_manager_stopped_traffic_flows_then_converges(L):
    hold = L.hold(conns=24, duration=15)
    containers = [L.ref.container(m) for m in L.ref.lab.managers]
    subprocess.run(["docker", "stop", "-t", "2", *containers], check=True, capture_output=True, timeout=60)
    try:
        time.sleep(4)  # long enough for anything tied to the managers to expire: nothing may
        res = L.flows("client1", "203.0.113.10", 80, 300)
        assert res["failures"] == 0 and len(res["by_dip"]) == 6
        assert vip_nexthops(L.ref, ["203.0.113.10"])["203.0.113.10"] == MUXES
    finally:
        subprocess.run(["docker", "start", *containers], check=True, capture_output=True, timeout=60)
    run = hold.result()
    assert all(c["broken_at"] is None for c in run["conns"]), run["conns"]
    # the managers are back: a change made now reaches every agent
    L.wait_for("the API answering", lambda: _answers(L), timeout=60)
    cli("pool", "remove", "web", "web", "vm6", "--name", E2E_LAB)
    try:
        L.synced(timeout=60)
        assert "vm6" not in L.assert_mux_tables_identical()["web/http"]
    finally:
        cli("pool", "add", "web", "web", "vm6", "--name", E2E_LAB)
    L.synced(timeout=60)
    assert len(L.flows("client1", "web", 80, 300)["by_dip"]) == 6


def maglev_marks(L, mux) -> set[int]:
    """The DIP marks in a MUX's Maglev maps, as its kernel holds them."""
    from muxlab.datapath.conventions import MUX_TABLE
    doc = json.loads(L.sh(mux, f"nft -j list table ip {MUX_TABLE}").stdout)
    return {int(e[1], 0) if isinstance(e[1], str) else e[1]
            for item in doc["nftables"] if "map" in item and item["map"]["name"].startswith("maglev_")
            for e in item["map"].get("elem", [])}


def test_a_host_killed_while_every_manager_is_stopped_leaves_every_mux(L):
    """Liveness travels on the underlay (beacons), not through the managers: with all three
    stopped, host3 frozen still leaves every MUX's kernel tables, and comes back."""
    from muxlab.datapath.conventions import LIVENESS_DEAD_AFTER_S, dip_mark
    host3 = {dip_mark(vm.ip) for vm in L.ref.lab.vms_on("host3")}
    muxes = [m.name for m in L.ref.lab.muxes]
    assert all(host3 <= maglev_marks(L, m) for m in muxes)
    containers = [L.ref.container(m) for m in L.ref.lab.managers]
    subprocess.run(["docker", "stop", "-t", "2", *containers], check=True, capture_output=True, timeout=60)
    try:
        faults.fail(L.ref, "host3", "pause")
        try:
            L.wait_for("host3's DIPs out of every MUX's kernel", lambda: all(
                not host3 & maglev_marks(L, m) for m in muxes), timeout=LIVENESS_DEAD_AFTER_S + 10, interval=0.1)
            res = L.flows("client1", "203.0.113.10", 80, 100)
            assert res["failures"] == 0 and set(res["by_dip"]) == {"vm1", "vm2", "vm3", "vm4"}
        finally:
            faults.heal(L.ref, "host3")
        L.wait_for("host3's DIPs back in every MUX", lambda: all(host3 <= maglev_marks(L, m) for m in muxes),
                   timeout=LIVENESS_DEAD_AFTER_S + 10, interval=0.1)
    finally:
        subprocess.run(["docker", "start", *containers], check=True, capture_output=True, timeout=60)
    L.wait_for("the API answering", lambda: _answers(L), timeout=60)
    L.synced(timeout=60)


def _answers(L):
    try:
        return L.ref.api(timeout=3).get("/sync")["nb_cfg"] > 0
    except Exception:
        return False


def test_apply_an_arm_template_as_it_is_then_list_show_delete(L, tmp_path):
    from tests.unit.test_azure import ARM
    path = tmp_path / "arm.json"
    path.write_text(json.dumps(ARM))
    p = cli("apply", str(path), "--yes", "--name", E2E_LAB)
    assert "+ load balancer arm-lb" in p.stdout and "applied in one transaction" in p.stdout
    assert "every MUX and host agent has it" in p.stdout
    body = json.loads(cli("lb", "show", "arm-lb", "--name", E2E_LAB).stdout)
    vip = address_of(body)
    assert body["properties"]["loadBalancingRules"][0]["properties"]["loadDistribution"] == "SourceIP"
    assert "arm-lb" in cli("lb", "list", "--name", E2E_LAB).stdout
    L.wait_for("the ARM VIP on the edge", lambda: vip_nexthops(L.ref, [vip])[vip] == MUXES, timeout=15)
    res = L.flows("client2", vip, 8081, 100)
    assert res["failures"] == 0 and len(res["by_dip"]) == 1 and set(res["by_dip"]) <= {"vm3", "vm5"}  # SourceIP affinity
    again = cli("apply", str(path), "--yes", "--name", E2E_LAB)
    assert "no change" in again.stdout  # the allocated address is kept: re-applying changes nothing
    cli("lb", "delete", "arm-lb", "--name", E2E_LAB)
    L.synced()
    L.wait_for("the ARM VIP gone", lambda: vip_nexthops(L.ref, [vip])[vip] == [], timeout=15)


@pytest.mark.parametrize("behaviour", ["AllProbedDown", "AllProbedUp"])
def test_no_healthy_backends_behaviour_in_the_data_path(L, behaviour):
    """Azure's noHealthyBackendsBehavior: when the probe takes every backend out, AllProbedDown
    serves nothing new and AllProbedUp serves them all."""
    lb = {"properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {
            "id": "/publicIPAddresses/allup-pip", "properties": {"ipAddress": "203.0.113.60"}}}}],
        "backendAddressPools": [{"name": "p", "properties": {"loadBalancerBackendAddresses": [
            {"name": "vm5", "properties": {"ipAddress": "10.1.3.15"}},
            {"name": "vm6", "properties": {"ipAddress": "10.1.3.16"}}]}}],
        "probes": [{"name": "h", "properties": {"protocol": "Http", "port": 8080, "requestPath": "/allup",
                                                "intervalInSeconds": 1, "probeThreshold": 1,
                                                "noHealthyBackendsBehavior": behaviour}}],
        "loadBalancingRules": [{"name": "r", "properties": {
            "frontendIPConfiguration": {"id": "frontendIPConfigurations/fe"}, "backendAddressPool": {"id": "backendAddressPools/p"},
            "probe": {"id": "probes/h"}, "protocol": "Tcp", "frontendPort": 80, "backendPort": 8080,
            "disableOutboundSnat": True}}]}}
    L.api.put("/loadBalancers/allup", lb)
    L.synced()
    try:
        assert L.flows("client1", "203.0.113.60", 80, 40)["failures"] == 0
        for vm in ("vm5", "vm6"):
            L.sh(vm, "touch /run/muxlab/unhealthy")   # its probe path answers 503
        health = lambda: L.api.post("/loadBalancers/allup/loadBalancingRules/r/health", {})  # noqa: E731
        L.wait_for("the probe to take both out", lambda: all(
            "fails" in b["detail"] or "AllProbedUp" in b["detail"] for b in health()["loadBalancerBackendAddresses"]),
            timeout=20)
        res = L.flows("client1", "203.0.113.60", 80, 40)
        if behaviour == "AllProbedDown":
            assert res["served"] == 0, res
            assert {b["reason"] for b in health()["loadBalancerBackendAddresses"]} == {"Down_Probe_NoHealthyBackend"}
        else:
            assert res["failures"] == 0 and set(res["by_dip"]) == {"vm5", "vm6"}, res
            assert health()["up"] == 2
            assert {b["reason"] for b in health()["loadBalancerBackendAddresses"]} == {"Up_Probe_AllDownIsUp"}
    finally:
        for vm in ("vm5", "vm6"):
            L.sh(vm, "rm -f /run/muxlab/unhealthy")
        L.api.delete("/loadBalancers/allup")
        L.synced()


def test_an_internal_frontend_given_only_a_subnet_is_allocated_kept_and_served(L):
    """As most of Azure's examples write an internal frontend: a subnet, Dynamic allocation."""
    from muxlab.lb.azure import canonical, load_document
    raw = canonical(load_document(Path(__file__).resolve().parents[2] / "containerlab" / "examples" / "ilb-hairpin.yml")["ilb"])
    fe = raw["properties"]["frontendIPConfigurations"][0]["properties"]
    del fe["privateIPAddress"]
    fe.update(privateIPAllocationMethod="Dynamic",
              subnet={"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"})
    try:
        got = L.api.put("/loadBalancers/dyn", raw)
        addr = got["properties"]["frontendIPConfigurations"][0]["properties"]["privateIPAddress"]
        assert addr.startswith("10.1.0.") and got["properties"]["frontendIPConfigurations"][0]["properties"][
            "privateIPAllocationMethod"] == "Dynamic", got
        L.synced()
        res = L.flows("vm6", addr, 80, 60)
        assert res["served"] > 0 and "vm6" not in res["by_dip"], res   # an ILB: vm6's own share is the hairpin
        again = L.api.put("/loadBalancers/dyn", raw)   # the same request again: the same address
        assert again["properties"]["frontendIPConfigurations"][0]["properties"]["privateIPAddress"] == addr
    finally:
        L.api.delete("/loadBalancers/dyn")
        L.synced()
