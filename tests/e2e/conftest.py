"""E2E fixtures: one real lab per test session, deployed with containerlab under its own
name (never a user's `muxlab` lab) and always destroyed, also when tests fail."""
import os
import subprocess
import sys

from pathlib import Path

import pytest


E2E_LAB = os.environ.get("MUXLAB_E2E_LAB", "muxlab-e2e")
MUXLAB = [sys.executable, "-m", "muxlab"]
REPO = Path(__file__).resolve().parents[2]
# The default lab, with lab time scaled down: an Azure idle-timeout "minute" lasts 2 s here,
# so the 4-minute minimum is 8 s (tests of idle timeouts would otherwise wait 4 minutes).
E2E_TOPOLOGY = REPO / ".labs" / "e2e-topology" / "muxlab.clab.yml"
SECONDS_PER_MINUTE = 2


def write_e2e_topology() -> Path:
    from muxlab.cli.lab import write_variant
    return write_variant(E2E_TOPOLOGY.parent, lambda fabric: fabric.setdefault("timing", {}).__setitem__(
        "seconds_per_minute", SECONDS_PER_MINUTE))


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


# The project's own tests use the muxlab pytest plugin's fixtures (muxlab/pytest_plugin.py),
# as users do: only which lab to deploy is ours.
@pytest.fixture(scope="session")
def muxlab_topology():
    return write_e2e_topology(), E2E_LAB


@pytest.fixture(scope="session")
def lab(muxlab_lab):
    return muxlab_lab.ref


@pytest.fixture(scope="session")
def L(muxlab_lab):
    return muxlab_lab
