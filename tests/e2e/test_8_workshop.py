"""Issue #9: every workshop exercise end to end (so none can rot), the packet walk, one
capture across nodes, and heal after a learner stopped a container by hand."""
import json
import subprocess
import threading

import pytest

from muxlab.cli import capture as capmod
from muxlab.cli import faults

from .conftest import E2E_LAB, cli


@pytest.mark.timeout(3000)   # the session default (900 s, pyproject.toml) would cut the CLI's own 3000 s short
def test_every_exercise_starts_solves_checks_and_resets(L):
    proc = cli("workshop", "check", "--all", "--solve", "--name", E2E_LAB, check=False, timeout=3000)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert '"failed": 0' in proc.stdout
    L.converged()


def test_trace_walks_the_request_through_a_mux_and_the_reply_around_it(L, tmp_path):
    svg = tmp_path / "walk.svg"
    t = json.loads(cli("trace", "--from", "client1", "--to", "web", "--port", "80", "--json", "--svg", str(svg),
                       "--name", E2E_LAB).stdout)
    assert t["answered"]
    request = [h["node"] for h in t["request"]]
    reply = [h["node"] for h in t["reply"]]
    mux = t["ecmp"]["mux"]
    assert request[:3] == ["client1", "edge", mux] and request[-1] == t["served_by"], request
    assert request[3] == "edge" and request[4].startswith("host"), request  # VXLAN through the underlay
    assert not any(n.startswith("mux") for n in reply) and reply[-1] == "client1", reply  # DSR
    vxlan = [e for h in t["request"] for e in h["events"] if e["headers"].startswith("VXLAN")]
    assert vxlan and all("VNI 4242" in e["headers"] for e in vxlan)
    mux_rules = " ".join(r["rule"] for h in t["request"] if h["node"] == mux for r in h["rules"])
    assert "jhash" in mux_rules
    host_rules = " ".join(r["rule"] for h in t["request"] if h["node"].startswith("host") for r in h["rules"])
    assert "dnat" in host_rules
    # the bucket recomputed from the packet's fields names the VM that answered
    assert t["maglev"]["agrees_with_capture"] is True, t["maglev"]
    text = svg.read_text()
    assert text.startswith("<svg") and "#1f6fd1" in text and "#d9480f" in text
    print(cli("trace", "--from", "client1", "--to", "web", "--port", "80", "--name", E2E_LAB).stdout)


def test_capture_merges_every_node_into_one_time_line(L, tmp_path):
    from scapy.utils import PcapNgReader
    out = tmp_path / "all.pcapng"
    timer = threading.Timer(1.5, lambda: L.flows("client1", "web", 80, 5))
    timer.start()
    counts = capmod.capture(L.ref, ["client1", "edge", "mux1", "mux2", "mux3", "host1", "host2", "host3", "vm1:eth1"],
                            out, duration=5)
    timer.join()
    with PcapNgReader(str(out)) as r:
        pkts = list(r)
    times = [float(p.time) for p in pkts]
    assert times == sorted(times)
    names = {p.sniffed_on for p in pkts}
    assert "client1:eth1" in names and any(n.startswith("edge:eth") for n in names)
    assert any(n.startswith("mux") for n in names) and any(n.startswith("host") for n in names)
    assert not any(n.endswith(":eth0") for n in names)   # the management network is not the lab's path
    assert sum(counts.values()) == len(pkts)


def test_heal_brings_back_a_vm_stopped_by_hand(L):
    subprocess.run(["docker", "stop", "-t", "1", L.ref.container("vm4")], check=True, capture_output=True)
    L.wait_for("vm4 out of rotation", lambda: "vm4" not in L.assert_mux_tables_identical()["web/http"], timeout=20)
    said = faults.heal(L.ref, "vm4")
    assert "started its container" in said and "re-plugged" in said, said
    L.wait_for("vm4 back in rotation", lambda: "vm4" in L.assert_mux_tables_identical()["web/http"], timeout=40)
    assert faults.heal(L.ref, "vm4").endswith("nothing to heal")


def test_the_example_suite_for_users_runs_on_this_lab(L):
    """examples/pytest/ through the installed plugin (entry point), against the running lab."""
    import sys
    from .conftest import E2E_TOPOLOGY, REPO
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "examples" / "pytest"), "-q", "-p", "no:cacheprovider",
                           "--muxlab-topology", str(E2E_TOPOLOGY), "--muxlab-name", E2E_LAB, "--muxlab-reuse"],
                          capture_output=True, text=True, timeout=600, cwd=REPO / "examples" / "pytest")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
