"""Watching a lab from the operator's machine while something happens: captures on several
nodes, long-lived connections that notice a break, waiting for a condition. Shared by the
workshop checks, the pytest plugin and `muxlab trace`/`capture`."""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from typing import Any, Callable

from ..errors import MuxlabError
from .lab import LabRef, docker_exec


def sh(ref: LabRef, node: str, cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return docker_exec(ref, node, ["sh", "-c", cmd], timeout=timeout, check=check)


def start_tcpdump(ref: LabRef, node: str, pcap: str, filt: str, iface: str = "any", timeout: float = 60,
                  extra: str = "") -> None:
    """tcpdump in the background inside `node`, writing `pcap`; returns once it says it is
    listening (it attaches to the interfaces after creating the file), at most 10 s."""
    sh(ref, node, f"rm -f {pcap} {pcap}.log; timeout {int(timeout)} tcpdump -U --immediate-mode {extra} -i {iface} -n "
                  f"-w {pcap} '{filt}' >/dev/null 2>{pcap}.log & echo $! > {pcap}.pid; "
                  f"for i in $(seq 200); do grep -q 'listening on' {pcap}.log && exit 0; sleep 0.05; done; "
                  f"echo 'tcpdump did not start:' >&2; cat {pcap}.log >&2; exit 1")


def stop_tcpdump(ref: LabRef, node: str, pcap: str) -> None:
    """Stop the tcpdump start_tcpdump started for `pcap` (only that one: a learner's own
    capture goes on) and wait until it wrote its last packets, at most 5 s."""
    sh(ref, node, f"p=$(cat {pcap}.pid 2>/dev/null) && kill -INT $p 2>/dev/null; "
                  f"for i in $(seq 100); do kill -0 $p 2>/dev/null || break; sleep 0.05; done; rm -f {pcap}.pid {pcap}.log",
       check=False)


def capture(ref: LabRef, nodes: str | list[str], filt: str, during: Callable[[], Any], iface: str = "any",
            timeout: float = 60) -> tuple[Any, dict[str, list[dict]]]:
    """Capture on each of `nodes` while `during()` runs; returns (during's result,
    {node: [packet records of muxlab.node.capture]})."""
    nodes = [nodes] if isinstance(nodes, str) else list(nodes)
    pcap = f"/tmp/cap-{time.monotonic_ns()}.pcap"
    for node in nodes:
        start_tcpdump(ref, node, pcap, filt, iface, timeout)
    try:
        result = during()
        time.sleep(0.5)   # the last replies are still on their way when `during` returns
    finally:
        for node in nodes:
            stop_tcpdump(ref, node, pcap)
    packets = {node: json.loads(sh(ref, node, f"python -m muxlab.node.capture {pcap}; rm -f {pcap}", timeout=120).stdout)
               for node in nodes}
    return result, packets


class Hold:
    """Long-lived connections from a client (muxlab.node.holdclient) that ping their VM and
    open a new connection every `every` seconds; started once all are open."""

    def __init__(self, ref: LabRef, source: str, vip: str, port: int = 80, conns: int = 24, duration: float = 10.0,
                 every: float = 0.02):
        argv = ["docker", "exec", ref.container(source), "python", "-m", "muxlab.node.holdclient", "--vip", vip,
                "--port", str(port), "--conns", str(conns), "--duration", str(duration), "--every", str(every)]
        # unbuffered: its stderr's lines (READY, STEADY) are waited for with select
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._err = b""
        self.duration = duration
        line = self._line(60)
        if not line.startswith("READY"):
            self.proc.kill()
            raise MuxlabError(f"holdclient did not start: {line}{self.proc.stderr.read().decode(errors='replace')}")

    def _line(self, timeout: float) -> str:
        """holdclient's next stderr line, or '' when none comes within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._err:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stderr], [], [], left)[0]:
                return ""
            chunk = os.read(self.proc.stderr.fileno(), 4096)
            if not chunk:
                break
            self._err += chunk
        line, _, self._err = self._err.partition(b"\n")
        return line.decode(errors="replace")

    def steady(self, timeout: float | None = None) -> None:
        """Wait, at most `timeout` seconds (the run's duration), until the connections have a
        baseline: each held one answered a few pings, new ones were served (holdclient's STEADY)."""
        line = self._line(self.duration if timeout is None else timeout)
        if not line.startswith("STEADY"):
            raise MuxlabError(f"holdclient found no steady baseline: {line or 'nothing within the bound'}")

    def result(self) -> dict:
        out, err = self.proc.communicate(timeout=self.duration + 60)
        if self.proc.returncode != 0:
            raise MuxlabError(f"holdclient failed: {(self._err + err).decode(errors='replace')[-2000:]}")
        return json.loads(out)


def hold_summary(run: dict) -> dict:
    """What a person asks of a hold: how many connections broke, how many new ones failed."""
    broken = [c for c in run["conns"] if c["broken_at"] is not None]
    failed = [a for a in run["attempts"] if not a[1]]
    return {"conns": len(run["conns"]), "broken": len(broken), "errors": sorted({c["error"] for c in broken}),
            "new_connections": len(run["attempts"]), "new_failures": len(failed),
            "dips": sorted({c["dip"] for c in run["conns"] if c["dip"]})}


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MuxlabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
