"""The virtual network's boundary, as Azure draws it (seed 004's security paragraph): the
internet reaches public frontends only, tenants never reach the management network, VMs get
what they need from the platform through their host's platform addresses, and the control
plane is authenticated, encrypted and allowed per node. Every assertion reads the kernel,
the wire or a server's refusal, never what an agent says about itself."""
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from muxlab.datapath.conventions import (API_PORT, CA_CERT, IMDS_ADDRESS, NODE_CERT, NODE_KEY, OVSDB_PORT, PKI_DIR,
                                      PLATFORM_ADDRESS)
from muxlab.cli.api import tls_context
from muxlab.lb.azure import canonical, load_document
from tests.e2e.conftest import E2E_LAB, MUXLAB, cli

EXAMPLES = Path(__file__).resolve().parents[2] / "containerlab" / "examples"
ILB_VIP = "10.1.0.100"
TIMEOUT = 1.5

# One attempt from inside a node: a TCP connect, or a UDP datagram and its answer. Prints
# "answered" or why not; it never hangs past its timeout.
REACH = r"""
import socket, sys
addr, port, udp, t = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "udp", float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
s.settimeout(t)
try:
    if udp:
        s.sendto(b"hello\n", (addr, port)); s.recvfrom(100)
    else:
        s.connect((addr, port))
    print("answered")
except OSError as e:
    print(type(e).__name__)
"""


def reach(L, node, addr, port, udp=False) -> str:
    return L.sh(node, f"python -c '{REACH}' {addr} {port} {'udp' if udp else 'tcp'} {TIMEOUT}", timeout=30).stdout.strip()


def counter(L, node, family, table, name) -> int:
    out = json.loads(L.sh(node, f"nft -j list counter {family} {table} {name}").stdout)
    return next(x["counter"]["packets"] for x in out["nftables"] if "counter" in x)


def edge_drops(L) -> int:
    return counter(L, "edge", "ip", "muxlab_edge", "internet_to_private")


def mgmt_addresses(L) -> list[str]:
    """The managers' management addresses, as Docker gave them."""
    return [url.split("//")[1].rsplit(":", 1)[0] for url in L.ref.manager_urls()]


@pytest.fixture(scope="module")
def ilb(L):
    lbs = load_document(EXAMPLES / "ilb-hairpin.yml")
    api = L.api
    for n, lb in lbs.items():
        api.put(f"/loadBalancers/{n}", canonical(lb))
    L.synced(api)
    yield
    for n in lbs:
        api.delete(f"/loadBalancers/{n}")
    L.synced(api)


# ---------------------------------------------------------------- internet and VNet apart


@pytest.mark.parametrize("client", ["client1", "client2"])
def test_the_internet_reaches_no_private_address_and_the_edge_counts_each_drop(L, ilb, client):
    host1 = str(L.ref.lab.host("host1").address)
    targets = [(str(vm.ip), 8080) for vm in L.ref.lab.vms] + [(ILB_VIP, 80), (host1, 22)]
    before = edge_drops(L)
    for addr, port in targets:
        for udp in (False, True):
            got = reach(L, client, addr, port, udp)
            assert got != "answered", f"{client} reached {addr}:{port}/{'udp' if udp else 'tcp'}"
    after = edge_drops(L)
    print(f"{client}: {len(targets) * 2} attempts, edge internet_to_private {before} -> {after}")
    # every attempt's first packet at least (TCP retries a SYN within the timeout: >=)
    assert after - before >= len(targets) * 2
    # the public frontend still answers the same client
    assert reach(L, client, "203.0.113.10", 80) == "answered"


def test_a_vm_reaches_the_internal_frontend_and_the_mux_refuses_it_to_outsiders(L, ilb):
    res = L.flows("vm3", ILB_VIP, 80, 60)
    # every VM is in the ILB's pool: the flows Maglev maps back to vm3 itself fail (the
    # hairpin of seeds 000/001, test_6); every other one is answered from inside the VNet
    assert res["served"] > 0 and "vm3" not in res["by_dip"] and res["failures"] < 30, res
    # defence in depth: with the edge told to let the internet through to the ILB (its
    # allowance set, as the data-path benchmark uses it), the MUXes still refuse it, counted
    muxes = [m.name for m in L.ref.lab.muxes]
    before = sum(counter(L, m, "ip", "muxlab_mux", "ilb_not_vnet") for m in muxes)
    L.sh("edge", f"nft add element ip muxlab_edge bench_direct {{ {ILB_VIP} }}")
    try:
        assert reach(L, "client1", ILB_VIP, 80) != "answered"
    finally:
        L.sh("edge", f"nft delete element ip muxlab_edge bench_direct {{ {ILB_VIP} }}")
    after = sum(counter(L, m, "ip", "muxlab_mux", "ilb_not_vnet") for m in muxes)
    print(f"MUXes' ilb_not_vnet {before} -> {after}")
    assert after > before


# ---------------------------------------------------------------- the management network


@pytest.mark.parametrize("node", ["vm1", "client1"])
def test_tenants_have_no_interface_on_the_management_network_and_reach_nothing_on_it(L, node):
    links = L.sh(node, "ip -o link show").stdout
    assert "eth0" not in links, links
    for addr in mgmt_addresses(L):
        for port in (OVSDB_PORT, API_PORT):
            got = reach(L, node, addr, port)
            assert got != "answered", f"{node} reached {addr}:{port}"


# ---------------------------------------------------------------- platform addresses


def test_imds_requires_the_metadata_header_and_describes_the_vm(L):
    get = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 'http://{IMDS_ADDRESS}/metadata/instance?api-version=2021-02-01'"
    assert L.sh("vm1", get).stdout.strip() == "400"
    doc = json.loads(L.sh("vm1", f"curl -s --max-time 3 -H Metadata:true "
                                  f"'http://{IMDS_ADDRESS}/metadata/instance?api-version=2021-02-01'").stdout)
    assert doc["compute"]["name"] == "vm1"
    addrs = [a["privateIpAddress"] for i in doc["network"]["interface"] for a in i["ipv4"]["ipAddress"]]
    assert str(L.ref.lab.vm("vm1").ip) in addrs
    lb = json.loads(L.sh("vm1", f"curl -s --max-time 3 -H Metadata:true "
                                f"'http://{IMDS_ADDRESS}/metadata/loadbalancer?api-version=2020-10-01'").stdout)
    rules = lb["loadbalancer"]["inboundRules"]
    assert any(r["frontendIpAddress"] == "203.0.113.10" and r["frontendPort"] == 80 and r["backendPort"] == 8080
               for r in rules), rules


def test_a_vm_serves_a_new_backend_port_it_learned_from_imds(L):
    body = one_backend_lb("203.0.113.40", L.ref.lab.vm("vm4"), port=443, backend_port=8443)
    api = L.api
    api.put("/loadBalancers/imds-new-port", body)
    try:
        L.synced(api)
        # vm4 has no route to any manager: only IMDS can have told it to open 8443
        L.wait_for("vm4 listening on 8443", lambda: ":8443" in L.sh("vm4", "ss -ltn").stdout, timeout=20)
        res = L.flows("client1", "203.0.113.40", 443, 20)
        assert res["by_dip"] == {"vm4": 20}, res
    finally:
        api.delete("/loadBalancers/imds-new-port")
        L.synced(api)


def test_health_probes_arrive_from_the_platform_address(L):
    _, caps = L.capture(["vm2"], "tcp and dst port 8080 and tcp[tcpflags] & tcp-syn != 0", lambda: __import__("time").sleep(3),
                        iface="eth1")
    sources = {p["src"] for p in caps["vm2"]}
    print(f"probe SYNs on vm2: {len(caps['vm2'])} from {sorted(sources)}")
    assert caps["vm2"] and sources == {PLATFORM_ADDRESS}


# ---------------------------------------------------------------- control plane


def ovsdb(L, node, ops, cert=True) -> subprocess.CompletedProcess:
    """`ovsdb-client transact` from `node` to manager1's OVSDB, with the node's certificate."""
    addr = mgmt_addresses(L)[0]
    keys = f"--private-key={PKI_DIR}/{NODE_KEY} --certificate={PKI_DIR}/{NODE_CERT} --ca-cert={PKI_DIR}/{CA_CERT}"
    cmd = (f"timeout 10 ovsdb-client {keys if cert else ''} transact ssl:{addr}:{OVSDB_PORT} "
           f"'{json.dumps(['Muxlab', *ops])}'")
    return L.sh(node, cmd, check=False, timeout=30)


def refused(proc) -> bool:
    text = proc.stdout + proc.stderr
    return proc.returncode != 0 or '"error"' in text


def test_a_host_may_write_its_own_chassis_row_and_nothing_else(L):
    own = ovsdb(L, "host1", [{"op": "mutate", "table": "Chassis", "where": [["name", "==", "host1"]],
                              "mutations": [["nb_cfg", "+=", 0]]}])
    assert not refused(own), own.stdout + own.stderr
    for ops in ([{"op": "update", "table": "Chassis", "where": [["name", "==", "host2"]], "row": {"nb_cfg": 0}}],
                [{"op": "update", "table": "Mux", "where": [["name", "==", "mux1"]], "row": {"drained": True}}],
                [{"op": "insert", "table": "Load_Balancer", "row": {"name": "evil", "spec": "{}"}}],
                [{"op": "update", "table": "Global", "where": [], "row": {"nb_cfg": 0}}]):
        proc = ovsdb(L, "host1", ops)
        print(ops[0]["table"], (proc.stdout + proc.stderr).strip()[:200])
        assert refused(proc) and "permission" in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def test_no_certificate_no_connection(L):
    proc = ovsdb(L, "host1", [], cert=False)
    assert proc.returncode != 0, proc.stdout
    addr = mgmt_addresses(L)[0]
    plain = L.sh("host1", f"timeout 10 ovsdb-client list-dbs tcp:{addr}:{OVSDB_PORT}", check=False)
    assert plain.returncode != 0, plain.stdout


def test_the_api_wants_a_token(L):
    url = L.ref.manager_urls()[0]
    sni = {"sni_hostname": L.ref.lab.managers[0]}   # its certificate names the manager
    with httpx.Client(verify=tls_context(L.ref.ca_file), timeout=5) as c:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            r = c.get(url + "/loadBalancers", headers=headers, extensions=sni)
            assert r.status_code == 401, (headers, r.status_code, r.text)
        assert c.get(url + "/loadBalancers", headers={"Authorization": f"Bearer {L.ref.token}"}, extensions=sni).status_code == 200
        assert c.get(url + "/openapi.json", extensions=sni).status_code == 200
    with pytest.raises(httpx.TransportError):   # plain HTTP is gone
        httpx.get(url.replace("https://", "http://") + "/loadBalancers", timeout=5)


def test_a_poison_row_is_reported_skipped_and_deletable(L):
    bad = [{"op": "insert", "table": "Load_Balancer", "row": {"name": "poison", "spec": "{not json", "allocations": ""}}]
    proc = L.sh("manager1", f"ovsdb-client transact unix:/run/muxlab/ovsdb.sock '{json.dumps(['Muxlab', *bad])}'")
    assert "error" not in proc.stdout, proc.stdout
    api = L.api
    try:
        status = api.get("/status")
        assert any(x["name"] == "poison" for x in status["invalid"]), status.get("invalid")
        # every other load balancer is still served, and a change still reaches every agent
        assert L.flows("client1", "203.0.113.10", 80, 30)["failures"] == 0
        api.put("/loadBalancers/after-poison", one_backend_lb("203.0.113.41", L.ref.lab.vm("vm5")))
        L.synced(api)
        assert L.flows("client1", "203.0.113.41", 80, 10)["by_dip"] == {"vm5": 10}
        assert "poison" in cli("status", "--name", E2E_LAB).stdout
    finally:
        api.delete("/loadBalancers/poison")
        api.delete("/loadBalancers/after-poison")
    assert not any(x["name"] == "poison" for x in api.get("/status")["invalid"])


def one_backend_lb(vip, vm, port=80, backend_port=8080):
    return {"properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {"properties": {"ipAddress": vip}}}}],
        "backendAddressPools": [{"name": "pool", "properties": {"loadBalancerBackendAddresses": [
            {"name": vm.name, "properties": {"ipAddress": str(vm.ip)}}]}}],
        "probes": [{"name": "tcp", "properties": {"protocol": "Tcp", "port": backend_port, "intervalInSeconds": 1}}],
        "loadBalancingRules": [{"name": "r", "properties": {
            "frontendIPConfiguration": {"id": "frontendIPConfigurations/fe"},
            "backendAddressPool": {"id": "backendAddressPools/pool"}, "probe": {"id": "probes/tcp"},
            "protocol": "Tcp", "frontendPort": port, "backendPort": backend_port}}]}}


# ---------------------------------------------------------------- names that cannot escape


def test_a_lab_name_that_climbs_out_is_refused_and_nothing_is_removed(tmp_path):
    canary = Path(__file__).resolve().parents[2] / "containerlab" / ".labs"
    canary.mkdir(exist_ok=True)
    (canary / "keep").write_text("x")
    for name in ("..", "../..", "a/b", "Muxlab"):
        proc = subprocess.run([*MUXLAB, "down", "--name", name], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "--name" in proc.stderr + proc.stdout, (name, proc.stdout, proc.stderr)
    assert (canary / "keep").exists()
    (canary / "keep").unlink()
