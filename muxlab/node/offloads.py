"""Offloads on a node's lab interfaces. containerlab switches TX checksum offload off on every
veth it creates, and with it segmentation: each TCP segment is then cut to the MTU at the
first hop and handled one by one by every hop after it (docs/performance.md). A node turns
back on what its kernel lets it, at start and whenever a link is re-plugged.

Small UDP packets get the same treatment: with `rx-udp-gro-forwarding` and threaded NAPI on
the receiving veth, the datagrams a socket sends are merged (GRO) in a kernel thread of
their own and cross every hop after the first as one packet, cut back into datagrams at the
receiving socket."""
from __future__ import annotations

import subprocess
from pathlib import Path

# `ethtool -K` name -> the name `ethtool -k` prints
WANTED = {"tx": "tx-checksumming", "sg": "scatter-gather", "tso": "tcp-segmentation-offload",
          "gso": "generic-segmentation-offload", "gro": "generic-receive-offload",
          "rx-udp-gro-forwarding": "rx-udp-gro-forwarding"}


def to_enable(features_text: str) -> list[str]:
    """From `ethtool -k DEV`'s output: the wanted features that are off and not fixed."""
    state = {}
    for line in features_text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            state[name] = value.strip()
    return [short for short, long in WANTED.items()
            if state.get(long, "").startswith("off") and "[fixed]" not in state[long]]


def ifindex(dev: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{dev}/ifindex").read_text())
    except (OSError, ValueError):
        return None


def enable(dev: str) -> list[str]:
    """Switch on what `dev` allows; returns what was switched on."""
    shown = subprocess.run(["ethtool", "-k", dev], capture_output=True, text=True)
    todo = to_enable(shown.stdout) if shown.returncode == 0 else []
    if todo:
        subprocess.run(["ethtool", "-K", dev, *[x for f in todo for x in (f, "on")]], capture_output=True)
    return todo


def thread_napi(dev: str) -> bool:
    """Poll `dev`'s NAPI in a kernel thread of its own, so a veth's receive side runs beside
    the sender instead of inline in its system call: that is what lets GRO merge a burst of
    datagrams. Docker mounts /sys read-only; with SYS_ADMIN a private mount namespace can
    write it without making the container's own /sys writable. Returns whether it changed."""
    knob = Path(f"/sys/class/net/{dev}/threaded")
    try:
        if knob.read_text().strip() != "0":
            return False
    except OSError:   # no NAPI on this device: nothing to thread
        return False
    done = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -o remount,rw /sys && echo 1 > {knob}"],
                          capture_output=True)
    return done.returncode == 0


class Offloads:
    """Remembers each interface's ifindex: a re-plugged link is a new device, offloads off again."""

    def __init__(self, interfaces: list[str]):
        self.interfaces = interfaces
        self.done: dict[str, int] = {}

    def ensure(self) -> dict[str, list[str]]:
        changed = {}
        for dev in self.interfaces:
            idx = ifindex(dev)
            if idx is not None and self.done.get(dev) != idx:
                changed[dev] = enable(dev) + (["threaded-napi"] if thread_napi(dev) else [])
                self.done[dev] = idx
        return changed
