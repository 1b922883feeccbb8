"""E2E fixtures: one real lab per test session, deployed with containerlab under its own
name (never a user's `muxlab` lab) and always destroyed, also when tests fail."""
import json
import os
import subprocess
import sys
import time

import shutil
from pathlib import Path

import pytest
import yaml

from muxlab.cli import lab as labmod
from muxlab.cli.traffic import run_flows

E2E_LAB = os.environ.get("MUXLAB_E2E_LAB", "muxlab-e2e")
MUXLAB = [sys.executable, "-m", "muxlab"]
REPO = Path(__file__).resolve().parents[2]
# The default lab, with lab time scaled down: an Azure idle-timeout "minute" lasts 2 s here,
# so the 4-minute minimum is 8 s (tests of idle timeouts would otherwise wait 4 minutes).
E2E_TOPOLOGY = REPO / ".labs" / "e2e-topology" / "muxlab.clab.yml"
SECONDS_PER_MINUTE = 2


def write_e2e_topology() -> Path:
    from muxlab.cli.lab import render_folder
    folder = E2E_TOPOLOGY.parent
    folder.mkdir(parents=True, exist_ok=True)
    fabric = yaml.safe_load((REPO / "containerlab" / "lab.yml").read_text())
    fabric.setdefault("timing", {})["seconds_per_minute"] = SECONDS_PER_MINUTE
    (folder / "lab.yml").write_text(yaml.safe_dump(fabric, sort_keys=False))
    shutil.copy(REPO / "containerlab" / "loadbalancers.yml", folder / "loadbalancers.yml")
    render_folder(folder)
    return E2E_TOPOLOGY


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def cli(*args, timeout=900, check=True):
    if E2E_LAB in args and "-t" not in args:
        args = (*args, "-t", str(E2E_TOPOLOGY))
    proc = subprocess.run([*MUXLAB, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"muxlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("e2e tests deploy containers: run as root")
    write_e2e_topology()
    cli("down", "--name", E2E_LAB, check=False, timeout=300)  # leftovers of an aborted run
    try:
        cli("up", "--name", E2E_LAB, "--wait", "240")
        yield labmod.resolve(E2E_TOPOLOGY, E2E_LAB)
    finally:
        cli("down", "--name", E2E_LAB, check=False, timeout=300)


class Lab:
    """Test helpers over a deployed lab."""

    def __init__(self, ref):
        self.ref = ref
        self.agents = ref.lab.agents

    @property
    def api(self):
        return self.ref.api()

    def synced(self, api=None, timeout=30):
        """Until every MUX and host agent applied the configuration of the last write."""
        api = api or self.api
        return api.wait_synced(self.agents, timeout=timeout)

    def services(self):
        """The load balancers the managers hold, compiled as the agents compile them."""
        from muxlab.model.compiled import compile_services
        from muxlab.model.service import LoadBalancer
        lbs = {n: LoadBalancer.model_validate(lb) for n, lb in self.api.load_balancers().items()}
        return compile_services(lbs, self.ref.lab)

    def sh(self, node, cmd, timeout=60, check=True):
        return labmod.docker_exec(self.ref, node, ["sh", "-c", cmd], timeout=timeout, check=check)

    def flows(self, source, vip, port, n, udp=False, sport=0, keep_results=False):
        return run_flows(self.ref, source, vip, port, n, udp=udp, sport=sport, keep_results=keep_results)

    def capture(self, nodes, filt, during, iface="any", timeout=60):
        """Capture on each of `nodes` while `during()` runs; returns (during's result,
        {node: [packet records]})."""
        nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        pcap = f"/tmp/cap-{time.monotonic_ns()}.pcap"
        for node in nodes:
            self.sh(node, f"(timeout {timeout} tcpdump -U --immediate-mode -i {iface} -n -w {pcap} '{filt}' >/dev/null 2>&1 &) ; "
                          f"for i in $(seq 50); do [ -e {pcap} ] && break; sleep 0.1; done")
        time.sleep(1.0)  # tcpdump attaches after it creates the file
        try:
            result = during()
            time.sleep(0.5)
        finally:
            for node in nodes:
                self.sh(node, "pkill -INT tcpdump; sleep 0.3", check=False)
        packets = {node: json.loads(self.sh(node, f"python -m muxlab.node.capture {pcap}; rm -f {pcap}", timeout=120).stdout)
                   for node in nodes}
        return result, packets

    def hold(self, vip="203.0.113.10", port=80, conns=24, duration=10.0, every=0.02, source="client1"):
        """Start the failure-watching client (muxlab.node.holdclient); returns a Hold once its
        long-lived connections are all open."""
        return Hold(self.ref, source, vip, port, conns, duration, every)

    def mux_tables(self):
        """MUX -> its programmed Maglev tables (chain -> bucket owners)."""
        return {m.name: json.loads(self.sh(m.name, "cat /run/muxlab/tables.json").stdout)["tables"] for m in self.ref.lab.muxes}

    def assert_mux_tables_identical(self, settle=2.0):
        """The MUXes' tables, after they agree: each MUX re-reads the desired state every
        250 ms, so right after a change they may differ for one such period."""
        deadline = time.monotonic() + settle
        while True:
            tables = self.mux_tables()
            first = next(iter(tables.values()))
            if all(t == first for t in tables.values()):
                return first
            assert time.monotonic() < deadline, f"MUX tables still differ after {settle}s"
            time.sleep(0.1)

    def converged(self, timeout=60):
        """Back to the full lab: every MUX established and in ECMP for every VIP."""
        want = sorted(m.name for m in self.ref.lab.muxes)
        self.wait_for("every MUX back in ECMP", lambda: all(h == want for h in labmod.vip_nexthops(self.ref).values())
                      and set(labmod.bgp_sessions(self.ref).values()) == {"Established"}, timeout=timeout)

    def wait_for(self, what, fn, timeout=30, interval=0.2):
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)


class Hold:
    def __init__(self, ref, source, vip, port, conns, duration, every):
        argv = ["docker", "exec", ref.container(source), "python", "-m", "muxlab.node.holdclient", "--vip", vip,
                "--port", str(port), "--conns", str(conns), "--duration", str(duration), "--every", str(every)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise AssertionError(f"holdclient did not start: {line}{self.proc.stderr.read()}")
        self.duration = duration

    def result(self):
        out, err = self.proc.communicate(timeout=self.duration + 60)
        assert self.proc.returncode == 0, err
        return json.loads(out)


@pytest.fixture(scope="session")
def L(lab):
    return Lab(lab)
