"""Health probes the host agent runs against its own VMs (seed 003: the probe comes from the
host the VM runs on), from 168.63.129.16 as Azure's (conventions.PLATFORM_ADDRESS, on the
host's bridge: the VM answers through its default gateway, the host). TCP: a connection must
open. HTTP: GET path must answer 200; any other status takes the VM out of rotation.
Guest (a classic cloud service's rules without a probe): the VM's last health report to the
host's WireServer (hostagent/wireserver.py) must be fresh and say Ready.

Two pure state machines turn answers into rotation (Probe.semantics):
- `ProbeState` ("threshold", Azure Load Balancer's probeThreshold): `unhealthy_threshold`
  consecutive failures take a backend out, `healthy_threshold` consecutive successes bring it back.
- `ClassicState` ("classic", seed 003's cloud services): a definite refusal (an HTTP status
  other than 200, a guest reporting itself busy) takes the instance out at once; no positive
  answer for `down_after` seconds (timeoutInSeconds) takes it out; the first positive answer
  puts it back right away, unless it flaps: an instance that went out FLAP_OUTAGES times
  within FLAP_WINDOW_PROBES probe intervals comes back only after FLAP_HEALTHY_PROBES positive
  answers in a row.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

from muxlab.datapath.conventions import PLATFORM_ADDRESS
from muxlab.fabric.lab import Lab
from muxlab.lb.facts import GUEST_PROTOCOL, Facts, Probe

FLAP_OUTAGES = 3           # outages ...
FLAP_WINDOW_PROBES = 30    # ... within this many probe intervals: the instance flaps
FLAP_HEALTHY_PROBES = 5    # a flapping instance returns after this many positive answers in a row


@dataclass
class ProbeState:
    up: bool = True          # a backend starts in rotation; the first failures take it out
    ok_streak: int = 0
    fail_streak: int = 0
    since: float = 0.0       # when `up` last changed
    last_error: str = ""

    def step(self, ok: bool, probe: Probe, now: float, error: str = "", definite: bool = False) -> bool:
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

    @property
    def failing(self) -> bool:
        """In rotation, with failures since the last success (on the way out)."""
        return self.up and self.fail_streak > 0


@dataclass
class ClassicState:
    up: bool = True          # an instance starts in rotation, and has down_after to answer
    since: float = 0.0       # when `up` last changed
    last_ok: float = 0.0     # the last positive answer (at start: `since`)
    ok_streak: int = 0
    outages: list[float] = field(default_factory=list)   # when it went out, within the flap window
    last_error: str = ""

    def flapping(self, probe: Probe, now: float) -> bool:
        return sum(now - t < FLAP_WINDOW_PROBES * probe.interval for t in self.outages) >= FLAP_OUTAGES

    def step(self, ok: bool, probe: Probe, now: float, error: str = "", definite: bool = False) -> bool:
        """Record one answer; True when the instance went in or out of rotation. `definite`:
        the answer was a refusal (HTTP 503, a busy guest), not a silence."""
        if ok:
            self.last_ok, self.ok_streak = now, self.ok_streak + 1
            if self.up:
                self.last_error = ""
                return False
            if self.flapping(probe, now) and self.ok_streak < FLAP_HEALTHY_PROBES:
                self.last_error = (f"flapping ({FLAP_OUTAGES} outages in {FLAP_WINDOW_PROBES} probes): held out until "
                                   f"{FLAP_HEALTHY_PROBES} positive answers in a row ({self.ok_streak} so far)")
                return False
            self.up, self.since, self.last_error = True, now, ""
            return True
        self.ok_streak, self.last_error = 0, error
        if self.up and (definite or now - self.last_ok >= probe.down_after):
            self.up, self.since = False, now
            self.outages = [t for t in self.outages if now - t < FLAP_WINDOW_PROBES * probe.interval] + [now]
            if not definite:
                self.last_error = f"no positive answer for {probe.down_after:g} s ({error})"
            return True
        return False

    def report(self) -> dict:
        return asdict(self)

    @property
    def failing(self) -> bool:
        return self.up and bool(self.last_error)


# Azure's per-backend health reasons (loadBalancingRules/{rule}/health); the host knows the
# probe's own, the managers add the administrative ones (manager/api.py)
UP, APPROACHING_DOWN = "Up_Probe_Success", "Up_Probe_ApproachingUnhealthyThreshold"
APPROACHING_UP = "Down_Probe_ApproachingHealthyThreshold"
TCP_TIMEOUT, HTTP_STATUS, HTTP_UNREACHABLE, HTTP_NO_RESPONSE = (
    "Down_Probe_TcpProbeTimeout", "Down_Probe_HttpStatusCodeError", "Down_Probe_HttpEndpointUnreachable",
    "Down_Probe_HttpNoResponse")


def reason_code(st: ProbeState | ClassicState, probe: Probe) -> str:
    """Azure's reason for a backend's state, from its probe's history."""
    error = st.last_error
    if st.up:
        return APPROACHING_DOWN if st.failing else UP
    if st.ok_streak:
        return APPROACHING_UP
    if probe.protocol != "http":
        return TCP_TIMEOUT   # a TCP probe (or the guest's report) had no answer
    if error.startswith("HTTP "):
        return HTTP_STATUS
    return HTTP_UNREACHABLE if "Refused" in error or "Unreachable" in error else HTTP_NO_RESPONSE


def new_state(probe: Probe, now: float) -> ProbeState | ClassicState:
    if probe.semantics == "classic":
        return ClassicState(since=now, last_ok=now)
    return ProbeState(since=now)


def check(probe: Probe, address: str, source: str | None = PLATFORM_ADDRESS) -> tuple[bool, str, bool]:
    """Run one probe against address, from `source` (None: whatever the route picks);
    (ok, error, definite): definite when the VM answered no (an HTTP status other than 200)."""
    try:
        with socket.create_connection((address, probe.port), timeout=probe.timeout,
                                      source_address=(source, 0) if source else None) as s:
            if probe.protocol == "tcp":
                return True, "", False
            s.settimeout(probe.timeout)
            s.sendall(f"GET {probe.path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: muxlab-probe\r\n\r\n".encode())
            head = s.recv(128).split(b"\r\n", 1)[0].split()
            if len(head) >= 2 and head[1] == b"200":
                return True, "", False
            return False, f"HTTP {head[1].decode() if len(head) >= 2 else '?'}", len(head) >= 2
    except OSError as exc:
        return False, type(exc).__name__, False


class Prober:
    """Probes every (VM, probe) pair of one host on their own intervals; the checks that are
    due run side by side, so one dead VM's timeouts do not delay the others."""

    def __init__(self, guest: Callable[[str, Probe], tuple[bool, str, bool]] | None = None):
        self.guest = guest   # (vm, probe) -> the guest probe's answer (hostagent.wireserver.Reports.answer)
        self.states: dict[tuple[str, str], ProbeState | ClassicState] = {}
        self.due: dict[tuple[str, str], float] = {}
        self.pool = ThreadPoolExecutor(max_workers=16)

    def sync(self, targets: dict[tuple[str, str], tuple[Probe, str]]) -> None:
        """Follow model changes: new pairs start up and due now; removed pairs go."""
        for key in list(self.states):
            if key not in targets:
                del self.states[key], self.due[key]
        for key, (probe, _) in targets.items():
            if key not in self.states:
                self.states[key] = new_state(probe, time.time())
                self.due[key] = 0.0

    def run_due(self, targets: dict[tuple[str, str], tuple[Probe, str]]) -> bool:
        """Run the probes whose time has come; True when any backend changed rotation."""
        now = time.monotonic()
        due = [key for key in targets if now >= self.due.get(key, 0.0)]
        for key in due:
            self.due[key] = now + targets[key][0].interval
        results = self.pool.map(lambda key: self.answer(key, *targets[key]), due)
        changed = False
        for key, (ok, err, definite) in zip(due, results):
            changed |= self.states[key].step(ok, targets[key][0], time.time(), err, definite)
        return changed

    def answer(self, key: tuple[str, str], probe: Probe, address: str) -> tuple[bool, str, bool]:
        if probe.protocol == GUEST_PROTOCOL:
            return self.guest(key[0], probe) if self.guest else (False, "no WireServer", False)
        return check(probe, address)

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
