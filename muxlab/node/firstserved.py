"""Runs inside a client container: opens new TCP connections to VIP:port, back to back,
until one is answered (by a given VM, with --dip), and prints when (wall clock, which the
containers share with the operator's machine) as one JSON document. The benchmarks start it
before a change and read how long the change took to serve traffic; nothing polls from
outside the lab. `python -m muxlab.node.firstserved --vip V --port P [--dip vm6]`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .flows import tcp_flow


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dip", help="wait for an answer from this VM (default: any)")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=0.002)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    attempts = 0
    print("READY", file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        attempts += 1
        try:
            _, name = tcp_flow(a.vip, a.port, 0.2)
            if a.dip is None or name == a.dip:
                print(json.dumps({"t": time.time(), "dip": name, "attempts": attempts}))
                return
        except OSError:
            pass
        time.sleep(a.every)
    print(json.dumps({"t": None, "attempts": attempts}))


if __name__ == "__main__":
    main()
