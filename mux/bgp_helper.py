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

from muxlab.datapath.conventions import ANNOUNCE_FILE, MUX_TABLE
from muxlab.node.runtime import run_path

ANNOUNCE_PATH = run_path(ANNOUNCE_FILE)


PRESENCE_EVERY_S = 5.0   # a data path flushed by hand withdraws the VIPs within this (an nft run each time)
BATCH = 200   # prefixes per command: thousands of VIPs go out in a few UPDATE-sized commands


def send(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    # with api ack enabled ExaBGP answers "done" (or "error") for each command; reading every
    # answer keeps its pipe to us from filling up, which would block ExaBGP itself
    ready, _, _ = select.select([sys.stdin], [], [], 5.0)
    if ready:
        ack = sys.stdin.readline().strip()
        if ack != "done":
            print(f"bgp_helper: {line[:120]!r} -> {ack!r}", file=sys.stderr, flush=True)


def commands(verb: str, prefixes: list[str]) -> list[str]:
    """`announce`/`withdraw` commands for `prefixes`, BATCH at a time, next hop this MUX."""
    return [f"{verb} attributes next-hop self nlri {' '.join(prefixes[i:i + BATCH])}"
            for i in range(0, len(prefixes), BATCH)]


def stamp() -> int | None:
    """The announce file's change time (it is replaced whole, atomically): read it again only
    when this moves."""
    try:
        st = ANNOUNCE_PATH.stat()
        return st.st_mtime_ns ^ st.st_ino
    except FileNotFoundError:
        return None


def wanted() -> set[str] | None:
    try:
        return set(json.loads(ANNOUNCE_PATH.read_text())["vips"])
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError):
        return None  # being rewritten: keep what we have


def datapath_present() -> bool:
    """The MUX's table is in the kernel (names only: listing its sets costs as much as they hold)."""
    out = subprocess.run(["nft", "list", "tables", "ip"], capture_output=True, text=True).stdout
    return f"table ip {MUX_TABLE}" in out.splitlines()


def main() -> None:
    announced: set[str] = set()
    checked_at, present, seen = 0.0, False, (0, False)
    while True:
        try:
            if time.monotonic() - checked_at > PRESENCE_EVERY_S:
                present, checked_at = datapath_present(), time.monotonic()
            now = (stamp(), present)
            want = (wanted() if present else set()) if now != seen else None
            if want is not None:
                seen = now
                for line in commands("announce", sorted(want - announced)) + commands("withdraw", sorted(announced - want)):
                    send(line)
                announced = want
        except Exception as exc:  # never exit
            print(f"bgp_helper: {exc!r}", file=sys.stderr, flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
