"""Seed 003's cloud service as the seed writes it: its ServiceDefinition applied as it is
(`muxlab apply ProbeTenant.csdef`), every endpoint it declares, the classic probe semantics
and the guest agent probe. What counts is what the wire shows: which instance answered,
and the hosts' and MUXes' kernel state."""
import ipaddress
import json
import re
import socket
import time
from pathlib import Path

import pytest

from muxlab.datapath.conventions import RUN_DIR
from muxlab.lb.azure import canonical
from muxlab.lb.csdef import parse_csdef
from muxlab.lb.facts import GUEST_PROBE
from tests.e2e.conftest import E2E_LAB, cli

SERVICE = Path(__file__).resolve().parents[2] / "examples" / "cloudservice"
CSDEF, ROLES = SERVICE / "ProbeTenant.csdef", SERVICE / "ProbeTenant.roles.yml"
VIP = "203.0.113.40"
FE, BE = ["vm1", "vm3", "vm5"], ["vm2", "vm4"]
LB = "ProbeTenant"


def flows_to(L, source, address, port, n, udp=False) -> dict:
    """Flows straight to an address (an instance's DIP): muxlab traffic insists on a VIP."""
    argv = f"python -m muxlab.node.flows --vip {address} --port {port} --flows {n} --timeout 2" + (" --udp" if udp else "")
    return json.loads(L.sh(source, argv, timeout=60 + 2 * n).stdout)


def kernel_rotation(L, mux, vip, proto, port) -> set[str]:
    """The VMs a MUX's kernel maps (vip, proto, port) to: the services map names the rule's
    chain, the chain its Maglev map, the map's elements the DIPs (as marks)."""
    services = L.sh(mux, "nft list map ip muxlab_mux services").stdout
    number = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}[proto]   # nft lists an inet_proto by number
    chain = re.search(rf"{re.escape(vip)} \. {number} \. {port} : goto (\S+?),?\s", services)
    if chain is None:
        return set()
    table = re.search(r"map @(\S+)", L.sh(mux, f"nft list chain ip muxlab_mux {chain.group(1)}").stdout).group(1)
    marks = re.findall(r": (0x[0-9a-f]+)", L.sh(mux, f"nft list map ip muxlab_mux {table}").stdout)
    by_dip = {str(vm.ip): vm.name for vm in L.ref.lab.vms}
    return {by_dip[str(ipaddress.IPv4Address(int(m, 16)))] for m in set(marks)}


RULES = {"HTTP_Probe": ("tcp", 80), "FE_External_Http": ("tcp", 10000), "FE_External_Tcp": ("tcp", 10001)}


def in_rotation(L, rule) -> set[str]:
    """The instances every MUX's kernel holds for the rule (one set, once all agree)."""
    proto, port = RULES[rule]
    seen = {}

    def agree():
        sets = {m.name: kernel_rotation(L, m.name, VIP, proto, port) for m in L.ref.lab.muxes}
        seen["sets"] = sets
        return len({frozenset(s) for s in sets.values()}) == 1
    L.wait_for(f"every MUX's kernel to agree on {rule}", agree, timeout=10, interval=0.1)
    return next(iter(seen["sets"].values()))


def reason(L, rule, vm) -> str:
    """Azure's reason code for `vm` in the rule's health."""
    h = L.api.post(f"/loadBalancers/{LB}/loadBalancingRules/{rule}/health", {})
    return next(b["reason"] for b in h["loadBalancerBackendAddresses"] if b["name"] == vm)


def host_counter(L, host, name) -> int:
    out = L.sh(host, f"nft list counter ip muxlab_host {name}").stdout
    return int(re.search(r"packets (\d+)", out).group(1))


@pytest.fixture(scope="module")
def service(L):
    cli("apply", str(CSDEF), "--roles", str(ROLES), "--yes", "--name", E2E_LAB)
    L.synced()
    yield L.facts()
    remove(L)


def remove(L):
    if LB in L.api.load_balancers():   # the probe tests below replace it, then remove it
        L.api.delete(f"/loadBalancers/{LB}")
        L.synced()


def test_the_load_balanced_input_endpoints_reach_the_fe_instances_only(L, service):
    for port, udp in ((10000, False), (10001, False), (10002, True), (80, False)):
        res = L.flows("client1", VIP, port, 120, udp=udp)
        assert res["failures"] == 0 and set(res["by_dip"]) == set(FE), (port, res)


def test_the_custom_probe_fetches_probe_aspx_from_the_platform_address(L, service):
    _, caps = L.capture("vm1", "tcp dst port 80 and src host 168.63.129.16", lambda: time.sleep(12))
    assert caps["vm1"], "MyProbe (every 5 s) should reach vm1's port 80 from 168.63.129.16"


def test_each_instance_input_endpoint_port_reaches_its_own_instance(L, service):
    for base, role in ((10110, FE), (10210, BE)):
        for i, vm in enumerate(role):
            res = L.flows("client1", VIP, base + i, 10)
            assert res["failures"] == 0 and set(res["by_dip"]) == {vm}, (base + i, res)


def test_be_internal_endpoints_open_to_the_service_and_to_nothing_outside_it(L, service):
    eps = [e for e in service.internal if e.role == "BERole"]
    assert {(e.name, e.protocol) for e in eps} >= {("BE_InternalEP_Tcp", "tcp"), ("BE_InternalEP_Udp", "udp"),
                                                    ("BE_InternalEP_Http", "tcp")}
    vm4 = {e.name: e for e in eps if e.vm == "vm4"}   # on host2: vm1 (host1) and vm6 (host3) are routed to it
    denied = host_counter(L, "host2", "internal_denied")
    for e in vm4.values():
        udp = e.protocol == "udp"
        res = flows_to(L, "vm1", e.ip, e.port, 5, udp=udp)   # an FE instance
        assert res["failures"] == 0 and set(res["by_dip"]) == {"vm4"}, (e, res)
        res = flows_to(L, "vm6", e.ip, e.port, 3, udp=udp)   # a VM of the VNet outside the service
        assert res["served"] == 0, (e, res)
    assert host_counter(L, "host2", "internal_denied") >= denied + 9   # every outsider's first packet at least
    # the internet reaches no instance's address at all
    res = flows_to(L, "client1", vm4["BE_InternalEP_Tcp"].ip, vm4["BE_InternalEP_Tcp"].port, 3)
    assert res["served"] == 0


def test_the_seed_s_limits_are_refused_naming_the_limit(L, tmp_path):
    roles = tmp_path / "r.yml"
    roles.write_text(ROLES.read_text())
    eps = "".join(f'<InputEndpoint name="E{i}" protocol="tcp" port="{20000 + i}" />' for i in range(151))
    bad = tmp_path / "Big.csdef"
    bad.write_text(f'<ServiceDefinition name="ProbeTenant"><WorkerRole name="FERole"><Endpoints>{eps}</Endpoints>'
                   f'</WorkerRole><WorkerRole name="BERole"/></ServiceDefinition>')
    proc = cli("apply", str(bad), "--roles", str(roles), "--yes", "--name", E2E_LAB, check=False)
    assert proc.returncode != 0 and "150" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- classic probe semantics

def fast_variant(timeout: int) -> dict:
    """The seed's service with MyProbe every second and the given timeoutInSeconds."""
    text = CSDEF.read_text()
    text = re.sub(r'intervalInSeconds="\d+"', 'intervalInSeconds="1"', text)
    text = re.sub(r'timeoutInSeconds="\d+"', f'timeoutInSeconds="{timeout}"', text)
    import yaml
    from muxlab.fabric.lab import load_lab
    from tests.e2e.conftest import E2E_TOPOLOGY
    fabric = load_lab(E2E_TOPOLOGY.parent / "lab.yml")
    name, lb = parse_csdef(text, yaml.safe_load(ROLES.read_text()), fabric)
    return canonical(lb)


@pytest.fixture
def fast(L):
    def apply(timeout):
        L.api.put(f"/loadBalancers/{LB}", fast_variant(timeout))
        L.synced()
        L.wait_for("every FE instance in rotation", lambda: in_rotation(L, "HTTP_Probe") == set(FE), timeout=30)
    yield apply
    for vm in FE + BE:
        L.sh(vm, f"rm -f {RUN_DIR}/unhealthy {RUN_DIR}/busy")
        L.heal(vm)
    remove(L)


def test_an_http_answer_other_than_200_takes_the_instance_out_at_once(L, fast):
    fast(timeout=100)   # the seed's timeout: only a definite answer can take it out in seconds
    L.sh("vm3", f"touch {RUN_DIR}/unhealthy")   # /Probe.aspx answers 503
    L.wait_for("vm3 out of rotation", lambda: "vm3" not in in_rotation(L, "HTTP_Probe"), timeout=20)
    res = L.flows("client1", VIP, 80, 120)
    assert res["failures"] == 0 and set(res["by_dip"]) == {"vm1", "vm5"}
    assert reason(L, "HTTP_Probe", "vm3") == "Down_Probe_HttpStatusCodeError"   # Azure's reason code
    # the first positive answer puts it back right away
    L.sh("vm3", f"rm -f {RUN_DIR}/unhealthy")
    L.wait_for("vm3 back in rotation", lambda: "vm3" in in_rotation(L, "HTTP_Probe"), timeout=20)


def test_no_positive_answer_for_the_timeout_takes_the_instance_out_and_not_before(L, fast):
    timeout = 6
    fast(timeout=timeout)
    t0 = time.monotonic()
    L.fail("vm5", "stop-service")   # connections refused: silence, not an answer
    L.wait_for("vm5 out of rotation", lambda: "vm5" not in in_rotation(L, "HTTP_Probe"), timeout=timeout + 20)
    assert time.monotonic() - t0 >= timeout - 1.5   # held in while the timeout ran (a lower bound only)
    L.wait_for("the health API to say why", lambda: reason(L, "HTTP_Probe", "vm5") == "Down_Probe_HttpEndpointUnreachable",
               timeout=10)   # refused connections: the probe's endpoint is unreachable
    L.heal("vm5")
    L.wait_for("vm5 back in rotation", lambda: "vm5" in in_rotation(L, "HTTP_Probe"), timeout=20)


def test_an_instance_that_flaps_is_held_out_until_healthy_for_several_probes(L, fast):
    from hostagent.probes import FLAP_HEALTHY_PROBES, FLAP_OUTAGES
    fast(timeout=100)
    for outage in range(FLAP_OUTAGES):
        L.sh("vm1", f"touch {RUN_DIR}/unhealthy")
        L.wait_for(f"vm1 out ({outage + 1})", lambda: "vm1" not in in_rotation(L, "HTTP_Probe"), timeout=20)
        L.sh("vm1", f"rm -f {RUN_DIR}/unhealthy")
        healed = time.monotonic()
        if outage < FLAP_OUTAGES - 1:
            L.wait_for(f"vm1 back ({outage + 1})", lambda: "vm1" in in_rotation(L, "HTTP_Probe"), timeout=20)
    # the last outage made it flap: healthy again, but held out for FLAP_HEALTHY_PROBES probes (1 s apart)
    time.sleep(max(0.0, healed + 2 - time.monotonic()))
    assert "vm1" not in in_rotation(L, "HTTP_Probe")
    health = L.api.post(f"/loadBalancers/{LB}/loadBalancingRules/HTTP_Probe/health", {})
    assert "flapping" in json.dumps(health), health
    L.wait_for("vm1 back after its healthy probes", lambda: "vm1" in in_rotation(L, "HTTP_Probe"),
               timeout=FLAP_HEALTHY_PROBES + 20)


# ---------------------------------------------------------------- the guest agent probe

def test_an_instance_that_reports_itself_busy_leaves_its_guest_probed_endpoints_only(L, fast):
    fast(timeout=100)
    key = f"{LB}/{GUEST_PROBE}"
    assert all(r.probe and r.probe.key == key for r in L.facts().rules if r.lb == LB and r.name != "HTTP_Probe")
    L.sh("vm3", f"touch {RUN_DIR}/busy")   # its StatusCheck: busy; reported at the next heartbeat
    L.wait_for("vm3 out of the guest-probed endpoints",
               lambda: all("vm3" not in in_rotation(L, r) for r in ("FE_External_Http", "FE_External_Tcp")), timeout=10)
    assert "vm3" in in_rotation(L, "HTTP_Probe")   # MyProbe still says yes
    res = L.flows("client1", VIP, 10001, 120)
    assert res["failures"] == 0 and set(res["by_dip"]) == {"vm1", "vm5"}
    res = L.flows("client1", VIP, 80, 120)
    assert res["failures"] == 0 and "vm3" in res["by_dip"]
    L.sh("vm3", f"rm -f {RUN_DIR}/busy")
    L.wait_for("vm3 back", lambda: "vm3" in in_rotation(L, "FE_External_Tcp"), timeout=10)


def test_a_guest_that_stops_reporting_leaves_rotation(L, fast):
    fast(timeout=100)
    L.fail("vm1", "stop-service")   # its guest agent (the VM service) is silent: no report for 3 heartbeats
    L.wait_for("vm1 out of the guest-probed endpoints", lambda: "vm1" not in in_rotation(L, "FE_External_Tcp"),
               timeout=15)
    L.heal("vm1")
    L.wait_for("vm1 back", lambda: "vm1" in in_rotation(L, "FE_External_Tcp"), timeout=15)
