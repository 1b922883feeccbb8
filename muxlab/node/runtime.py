"""Where things are inside a lab node, and small helpers every node-side program uses."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from muxlab.datapath import conventions

# The fabric, bound read-only into every node by the topology.
FABRIC_PATH = Path(os.environ.get("MUXLAB_FABRIC", conventions.FABRIC_FILE))
# This node's own runtime state (never shared with other nodes).
RUN_DIR = Path(os.environ.get("MUXLAB_RUN_DIR", conventions.RUN_DIR))


def run_path(conventional: str) -> Path:
    """Where a file of the conventions' RUN_DIR is in this node (MUXLAB_RUN_DIR may move it)."""
    return RUN_DIR / PurePosixPath(conventional).relative_to(conventions.RUN_DIR)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
