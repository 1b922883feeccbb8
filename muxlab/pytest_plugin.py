"""The muxlab pytest plugin (registered by installing muxlab: entry point `pytest11`).

Fixtures for users' own tests of a load-balanced lab:

    muxlab_topology   (session) the topology file and lab name to deploy. Default: the
                      `--muxlab-topology` / `--muxlab-name` options, else muxlab's default lab.
                      Override it in your conftest.py to deploy your own.
    muxlab_loadbalancers (session) files to `muxlab apply` once the lab is up (default:
                      `--muxlab-lbs`, else none). Override to apply your own.
    muxlab_lab        (session) deploys the lab, applies the load balancers, yields a
                      MuxlabLab, destroys the lab at the end (`--muxlab-keep` keeps it;
                      `--muxlab-reuse` uses a lab already running and leaves it).

MuxlabLab: traffic (`flows`), faults (`fail`, `heal`, `drain`), captures (`capture`),
packet walks (`trace`), long-lived connections (`hold`), and waiting (`wait_for`,
`synced`, `converged`). See examples/pytest/ for a suite to copy.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from muxlab.datapath.conventions import MAGLEV_TABLES_FILE, rule_tables


NOT_ROOT = "muxlab labs deploy containers: run as root"
REQUIRE_LAB_ENV = "MUXLAB_REQUIRE_LAB"   # set: tests that need a lab fail instead of skipping


def pytest_terminal_summary(terminalreporter):
    """Said once, at the end, where nobody misses it: the lab tests did not run."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if NOT_ROOT in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"muxlab: {len(skipped)} tests needing a lab were SKIPPED ({NOT_ROOT}); "
                                    f"nothing was shown about the data path. Set {REQUIRE_LAB_ENV}=1 to make that "
                                    "a failure.", yellow=True, bold=True)


def pytest_addoption(parser):
    g = parser.getgroup("muxlab", "muxlab labs")
    g.addoption("--muxlab-topology", help="containerlab topology of the lab to deploy (its lab.yml beside it)")
    g.addoption("--muxlab-name", help="lab name (default: the topology's)")
    g.addoption("--muxlab-lbs", action="append", default=[], help="load balancers file to apply once deployed (repeatable)")
    g.addoption("--muxlab-keep", action="store_true", help="leave the lab deployed after the session")
    g.addoption("--muxlab-reuse", action="store_true", help="use the lab if it is already running, and leave it")


class MuxlabLab:
    """Test helpers over a deployed lab (a muxlab.cli.lab.LabRef)."""

    def __init__(self, ref):
        self.ref = ref
        self.agents = ref.lab.agents

    @property
    def api(self):
        return self.ref.api()

    # --- the configuration ---------------------------------------------------------------
    def apply(self, path: str | Path, prune: bool = False) -> str:
        from muxlab.cli import tenant
        return tenant.apply(self.ref, str(path), yes=True, prune=prune)

    def synced(self, api=None, timeout=30):
        """Until every MUX and host agent applied the configuration of the last write."""
        api = api or self.api
        return api.wait_synced(self.agents, timeout=timeout)

    def facts(self):
        """The load balancers the managers hold, compiled as the managers compile them into the facts."""
        from muxlab.lb.azure import LoadBalancer
        from muxlab.lb.compiler import compile_facts
        lbs = {n: LoadBalancer.model_validate(lb) for n, lb in self.api.load_balancers().items()}
        return compile_facts(lbs, self.ref.lab)

    # --- traffic and observation ------------------------------------------------------------
    def sh(self, node, cmd, timeout=60, check=True):
        from muxlab.cli import observe
        return observe.sh(self.ref, node, cmd, timeout=timeout, check=check)

    def flows(self, source, vip, port, n, udp=False, sport=0, keep_results=False):
        from muxlab.cli.traffic import run_flows
        return run_flows(self.ref, source, vip, port, n, udp=udp, sport=sport, keep_results=keep_results)

    def capture(self, nodes, filt, during, iface="any", timeout=60):
        """Capture on each of `nodes` while `during()` runs; returns (during's result,
        {node: [packet records]})."""
        from muxlab.cli import observe
        return observe.capture(self.ref, nodes, filt, during, iface, timeout)

    def trace(self, source, to, port, udp=False) -> dict:
        """One flow's walk, hop by hop (what `muxlab trace --json` prints)."""
        from muxlab.cli import trace
        return trace.trace(self.ref, source, to, port, udp=udp)

    def hold(self, vip="203.0.113.10", port=80, conns=24, duration=10.0, every=0.02, source="client1"):
        """Long-lived connections that notice a break; `.result()` once `duration` is over."""
        from muxlab.cli.observe import Hold
        return Hold(self.ref, source, vip, port, conns, duration, every)

    # --- faults ------------------------------------------------------------------------
    def fail(self, node, mode):
        from muxlab.cli import faults
        return faults.fail(self.ref, node, mode)

    def heal(self, node):
        from muxlab.cli import faults
        return faults.heal(self.ref, node)

    def drain(self, mux, on=True):
        from muxlab.cli import faults
        return faults.drain(self.ref, mux, on)

    # --- state -------------------------------------------------------------------------
    def mux_tables(self):
        """MUX -> its programmed Maglev tables (rule -> bucket owners)."""
        return {m.name: rule_tables(json.loads(self.sh(m.name, f"cat {MAGLEV_TABLES_FILE}").stdout))
                for m in self.ref.lab.muxes}

    def assert_mux_tables_identical(self, timeout=10.0):
        """The MUXes' tables, once they agree. Right after a change each MUX applies it when
        its update arrives, so for a moment they may differ: this waits for agreement, with
        `timeout` only to end a hopeless wait (not a claim about how fast they agree)."""
        seen = {}

        def agree():
            seen["tables"] = tables = self.mux_tables()
            first = next(iter(tables.values()))
            return [first] if all(t == first for t in tables.values()) else None   # a list: {} is an answer
        try:
            return self.wait_for("every MUX's Maglev tables to agree", agree, timeout=timeout, interval=0.1)[0]
        except AssertionError:
            differ = {m: {r: t for r, t in tabs.items() if t != next(iter(seen["tables"].values())).get(r)}
                      for m, tabs in seen["tables"].items()}
            raise AssertionError(f"the MUXes' Maglev tables still differ (rules that differ from the first MUX's, "
                                 f"per MUX): {differ}") from None

    def nexthops(self, vips=None):
        from muxlab.cli import lab
        return lab.vip_nexthops(self.ref, vips)

    def converged(self, timeout=60):
        """Back to the full lab: every MUX established and in ECMP for every VIP."""
        from muxlab.cli import lab
        want = sorted(m.name for m in self.ref.lab.muxes)
        self.wait_for("every MUX back in ECMP", lambda: all(h == want for h in lab.vip_nexthops(self.ref).values())
                      and set(lab.bgp_sessions(self.ref).values()) == {"Established"}, timeout=timeout)

    def wait_for(self, what, fn, timeout=30, interval=0.2):
        from muxlab.cli.observe import wait_for
        from muxlab.errors import MuxlabError
        try:
            return wait_for(what, fn, timeout, interval)
        except MuxlabError as exc:
            raise AssertionError(str(exc)) from None


@pytest.fixture(scope="session")
def muxlab_topology(pytestconfig) -> tuple[Path | None, str | None]:
    topo = pytestconfig.getoption("muxlab_topology")
    return (Path(topo) if topo else None, pytestconfig.getoption("muxlab_name"))


@pytest.fixture(scope="session")
def muxlab_loadbalancers(pytestconfig) -> list[Path]:
    return [Path(p) for p in pytestconfig.getoption("muxlab_lbs")]


@pytest.fixture(scope="session")
def muxlab_lab(pytestconfig, muxlab_topology, muxlab_loadbalancers):
    from muxlab.cli import lab as labmod
    if os.geteuid() != 0:
        if os.environ.get(REQUIRE_LAB_ENV):   # the README's test command: a skipped e2e suite is a failure
            pytest.fail(f"{NOT_ROOT} ({REQUIRE_LAB_ENV} is set: the end-to-end tests must run here)")
        pytest.skip(NOT_ROOT)
    ref = labmod.resolve(*muxlab_topology)
    reuse = pytestconfig.getoption("muxlab_reuse") and labmod.containers(ref.name)
    if not reuse:
        labmod.down(ref)  # leftovers of an aborted run
    try:
        if not reuse:
            labmod.up(ref, wait=240)
        lab = MuxlabLab(ref)
        for path in muxlab_loadbalancers:
            lab.apply(path)
        yield lab
    finally:
        if not reuse and not pytestconfig.getoption("muxlab_keep"):
            labmod.down(ref)
