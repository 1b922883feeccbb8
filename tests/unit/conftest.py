import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "containerlab" / "lab.yml"             # the fabric
DEFAULT_LBS = REPO / "containerlab" / "loadbalancers.yml"     # the load balancers a lab starts with


@pytest.fixture
def raw_model():
    """The default fabric as a plain mapping, to mutate per test."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_MODEL.read_text()))


@pytest.fixture
def raw_lbs():
    """The default load balancers as plain mappings (name -> body), to mutate per test."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_LBS.read_text())["loadBalancers"])


def fabric():
    from muxlab.fabric.lab import load_lab
    return load_lab(DEFAULT_MODEL)


def default_lbs():
    from muxlab.lb.azure import load_document
    return load_document(DEFAULT_LBS)


def default_facts(lbs=None):
    from muxlab.lb.compiler import compile_facts
    return compile_facts(lbs if lbs is not None else default_lbs(), fabric())


@pytest.fixture
def lab():
    """Throwaway network namespaces wired as a small lab (tests.unit.test_boundary.Lab)."""
    from tests.unit.test_boundary import Lab
    L = Lab()
    try:
        yield L
    finally:
        L.close()
