"""Offloads on a node's lab interfaces. containerlab switches TX checksum offload off on every
veth it creates, and with it segmentation: each TCP segment is then cut to the MTU at the
first hop and handled one by one by every hop after it (docs/performance.md). A node turns
back on what its kernel lets it, at start and whenever a link is re-plugged."""
from __future__ import annotations

import subprocess
from pathlib import Path

# `ethtool -K` name -> the name `ethtool -k` prints
WANTED = {"tx": "tx-checksumming", "sg": "scatter-gather", "tso": "tcp-segmentation-offload",
          "gso": "generic-segmentation-offload", "gro": "generic-receive-offload"}


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
                changed[dev] = enable(dev)
                self.done[dev] = idx
        return changed
