"""ExaBGP API helper: announces the VIPs the MUX agent says this MUX can serve, withdraws
the rest. ExaBGP runs it and reads its stdout; it must never exit (ExaBGP would stop
announcing), so every error is logged to stderr and the loop goes on.

If the MUX agent stops refreshing its file the helper keeps the last announcement: it is
the data path (kernel state) that serves traffic, not the agent process. But if that data
path is gone (its nft table deleted or flushed away), nothing is announced.
"""
from __future__ import annotations

import json
import select
import subprocess
import sys
import time

from muxlab.node.runtime import RUN_DIR

ANNOUNCE_FILE = RUN_DIR / "announce.json"


def send(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    # with api ack enabled ExaBGP answers "done" (or "error") for each command
    ready, _, _ = select.select([sys.stdin], [], [], 2.0)
    if ready:
        ack = sys.stdin.readline().strip()
        if ack != "done":
            print(f"bgp_helper: {line!r} -> {ack!r}", file=sys.stderr, flush=True)


def wanted() -> set[str] | None:
    try:
        return set(json.loads(ANNOUNCE_FILE.read_text())["vips"])
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError):
        return None  # being rewritten: keep what we have


def datapath_present() -> bool:
    return subprocess.run(["nft", "list", "set", "ip", "muxlab_mux", "vips"], capture_output=True).returncode == 0


def main() -> None:
    announced: set[str] = set()
    checked_at, present = 0.0, False
    while True:
        try:
            if time.monotonic() - checked_at > 1.0:
                present, checked_at = datapath_present(), time.monotonic()
            want = wanted() if present else set()
            if want is not None:
                for prefix in sorted(want - announced):
                    send(f"announce route {prefix} next-hop self")
                for prefix in sorted(announced - want):
                    send(f"withdraw route {prefix} next-hop self")
                announced = want
        except Exception as exc:  # never exit
            print(f"bgp_helper: {exc!r}", file=sys.stderr, flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
