import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "containerlab" / "lab.yml"


@pytest.fixture
def raw_model():
    """The default lab model as a plain mapping, to mutate per test."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_MODEL.read_text()))
