"""The one interface through which MUXes and host agents read desired state.

Today the source is files: the lab model (bound read-only into every node), optionally
replaced live by `<store>/lab.yml`, plus what host agents report (`<store>/health/`) and
what operators ask (`<store>/drain/`). The store is a directory shared by every node of a
lab. A manager service can later serve the same `Snapshot` over the network without the
data path noticing.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .model import Lab, ModelError, load_lab

MODEL_PATH = Path(os.environ.get("MUXLAB_MODEL", "/etc/muxlab/lab.yml"))
STORE_DIR = Path(os.environ.get("MUXLAB_STORE_DIR", "/var/lib/muxlab"))
RUN_DIR = Path(os.environ.get("MUXLAB_RUN_DIR", "/run/muxlab"))


@dataclass
class Snapshot:
    lab: Lab
    # DIP name -> False for backends a host agent reports down; absent means healthy
    health: dict[str, dict[str, bool]] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()

    def healthy(self, vm: str, probe: str | None) -> bool:
        if probe is None:
            return True
        return self.health.get(vm, {}).get(probe, True)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class StateSource:
    """Reads the current Snapshot; `changed()` says whether anything moved since the last read."""

    def __init__(self, model_path: Path = MODEL_PATH, store: Path = STORE_DIR):
        self.model_path = model_path
        self.store = store
        self._stamp: tuple | None = None

    def _files(self) -> list[Path]:
        files = [self.model_path, self.store / "lab.yml"]
        for sub in ("health", "drain"):
            d = self.store / sub
            if d.is_dir():
                files += sorted(d.iterdir())
        return files

    def _current_stamp(self) -> tuple:
        out = []
        for f in self._files():
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                pass
        return tuple(out)

    def changed(self) -> bool:
        return self._current_stamp() != self._stamp

    def read(self) -> Snapshot:
        self._stamp = self._current_stamp()
        live = self.store / "lab.yml"
        try:
            lab = load_lab(live if live.exists() else self.model_path)
        except ModelError:
            # `muxlab apply` validates before writing, so this is a hand edit gone wrong:
            # keep serving the static model rather than tearing the data path down.
            lab = load_lab(self.model_path)
        health: dict[str, dict[str, bool]] = {}
        hdir = self.store / "health"
        if hdir.is_dir():
            for f in sorted(hdir.glob("*.json")):
                try:
                    report = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                for vm, probes in report.get("vms", {}).items():
                    health[vm] = {p: bool(s.get("up", True)) for p, s in probes.items()}
        ddir = self.store / "drain"
        drained = frozenset(p.name for p in ddir.iterdir()) if ddir.is_dir() else frozenset()
        return Snapshot(lab, health, drained)
