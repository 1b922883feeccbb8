"""Health probes the host agent runs against its own VMs (seed 003: the probe comes from the
host the VM runs on), from 168.63.129.16 as Azure's (conventions.PLATFORM_ADDRESS, on the
host's bridge: the VM answers through its default gateway, the host). TCP: a connection must
open. HTTP: GET path must answer 200; any other status takes the VM out of rotation.

`ProbeState.step` is the pure threshold logic: `unhealthy_threshold` consecutive failures
take a backend out, `healthy_threshold` consecutive successes bring it back.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from muxlab.datapath.conventions import PLATFORM_ADDRESS
from muxlab.fabric.lab import Lab
from muxlab.lb.facts import Facts, Probe


@dataclass
class ProbeState:
    up: bool = True          # a backend starts in rotation; the first failures take it out
    ok_streak: int = 0
    fail_streak: int = 0
    since: float = 0.0       # when `up` last changed
    last_error: str = ""

    def step(self, ok: bool, probe: Probe, now: float, error: str = "") -> bool:
        """Record one probe result; True when the backend went in or out of rotation."""
        if ok:
            self.ok_streak, self.fail_streak, self.last_error = self.ok_streak + 1, 0, ""
            if not self.up and self.ok_streak >= probe.healthy_threshold:
                self.up, self.since = True, now
                return True
        else:
            self.fail_streak, self.ok_streak, self.last_error = self.fail_streak + 1, 0, error
            if self.up and self.fail_streak >= probe.unhealthy_threshold:
                self.up, self.since = False, now
                return True
        return False

    def report(self) -> dict:
        return asdict(self)


def check(probe: Probe, address: str, source: str | None = PLATFORM_ADDRESS) -> tuple[bool, str]:
    """Run one probe against address, from `source` (None: whatever the route picks); (ok, error)."""
    try:
        with socket.create_connection((address, probe.port), timeout=probe.timeout,
                                      source_address=(source, 0) if source else None) as s:
            if probe.protocol == "tcp":
                return True, ""
            s.settimeout(probe.timeout)
            s.sendall(f"GET {probe.path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: muxlab-probe\r\n\r\n".encode())
            head = s.recv(128).split(b"\r\n", 1)[0].split()
            if len(head) >= 2 and head[1] == b"200":
                return True, ""
            return False, f"HTTP {head[1].decode() if len(head) >= 2 else '?'}"
    except OSError as exc:
        return False, type(exc).__name__


class Prober:
    """Probes every (VM, probe) pair of one host on their own intervals; the checks that are
    due run side by side, so one dead VM's timeouts do not delay the others."""

    def __init__(self):
        self.states: dict[tuple[str, str], ProbeState] = {}
        self.due: dict[tuple[str, str], float] = {}
        self.pool = ThreadPoolExecutor(max_workers=16)

    def sync(self, targets: dict[tuple[str, str], tuple[Probe, str]]) -> None:
        """Follow model changes: new pairs start up and due now; removed pairs go."""
        for key in list(self.states):
            if key not in targets:
                del self.states[key], self.due[key]
        for key in targets:
            if key not in self.states:
                self.states[key] = ProbeState(since=time.time())
                self.due[key] = 0.0

    def run_due(self, targets: dict[tuple[str, str], tuple[Probe, str]]) -> bool:
        """Run the probes whose time has come; True when any backend changed rotation."""
        now = time.monotonic()
        due = [key for key in targets if now >= self.due.get(key, 0.0)]
        for key in due:
            self.due[key] = now + targets[key][0].interval
        results = self.pool.map(lambda key: check(*targets[key]), due)
        changed = False
        for key, (ok, err) in zip(due, results):
            changed |= self.states[key].step(ok, targets[key][0], time.time(), err)
        return changed

    def report(self) -> dict[str, dict[str, dict]]:
        out: dict[str, dict[str, dict]] = {}
        for (vm, probe), st in sorted(self.states.items()):
            out.setdefault(vm, {})[probe] = st.report()
        return out


def probe_targets(fabric: Lab, facts: Facts, host: str) -> dict[tuple[str, str], tuple[Probe, str]]:
    """(VM, probe key) -> (probe, DIP) for every probe a rule attaches to a VM on this host."""
    local = {vm.name for vm in fabric.vms_on(host)}
    out = {}
    for rule in facts.rules:
        if rule.probe:
            for b in rule.backends:
                if b.vm in local:
                    out[(b.vm, rule.probe.key)] = (rule.probe, b.ip)
    return out
