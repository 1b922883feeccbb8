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
import time
from dataclasses import dataclass, field
from pathlib import Path

from .model import Lab, ModelError, load_lab

MODEL_PATH = Path(os.environ.get("MUXLAB_MODEL", "/etc/muxlab/lab.yml"))
STORE_DIR = Path(os.environ.get("MUXLAB_STORE_DIR", "/var/lib/muxlab"))
RUN_DIR = Path(os.environ.get("MUXLAB_RUN_DIR", "/run/muxlab"))
# A host agent rewrites its health report every second; a report older than this means the
# host (or its agent) is gone, and every DIP behind it leaves every MUX's tables.
STALE_AFTER = 3.0


@dataclass
class Snapshot:
    lab: Lab
    # VM name -> probe name -> up, as its host agent reports; a probe not reported is up
    health: dict[str, dict[str, bool]] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()
    # hosts with no fresh report: their VMs are down whatever the probes said
    dead_hosts: frozenset[str] | None = None

    def healthy(self, vm: str, probe: str | None) -> bool:
        if self.dead_hosts is not None and self.lab.vm(vm).host in self.dead_hosts:
            return False
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

    def __init__(self, model_path: Path = MODEL_PATH, store: Path = STORE_DIR, watch_reports: bool = True):
        self.model_path = model_path
        self.store = store
        # health reports and drains change every second; a reader that only needs the
        # model (a host agent) should not re-parse it for each of them
        self.watch_reports = watch_reports
        self._stamp: tuple | None = None

    def _files(self) -> list[Path]:
        files = [self.model_path, self.store / "lab.yml"]
        for sub in ("health", "drain") if self.watch_reports else ():
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
        health, alive = read_health(self.store, time.time())
        ddir = self.store / "drain"
        drained = frozenset(p.name for p in ddir.iterdir()) if ddir.is_dir() else frozenset()
        return Snapshot(lab, health, drained, frozenset(h.name for h in lab.hosts) - alive)


def health_reports(store: Path) -> dict[str, dict]:
    """Host -> the health report its agent last wrote (unreadable ones skipped)."""
    reports = {}
    hdir = store / "health"
    for f in sorted(hdir.glob("*.json")) if hdir.is_dir() else []:
        try:
            report = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        reports[report.get("host", f.stem)] = report
    return reports


def fresh_hosts(reports: dict[str, dict], now: float) -> set[str]:
    return {host for host, report in reports.items() if now - report.get("at", 0) <= STALE_AFTER}


def read_health(store: Path, now: float) -> tuple[dict[str, dict[str, bool]], set[str]]:
    """Probe results of every host agent, and the hosts whose report is fresh."""
    reports = health_reports(store)
    health = {vm: {p: bool(st.get("up", True)) for p, st in probes.items()}
              for report in reports.values() for vm, probes in report.get("vms", {}).items()}
    return health, fresh_hosts(reports, now)
