"""Failure-watching client, run inside a client container:
`python -m muxlab.holdclient --vip V --port P --conns N --duration D`.

It opens N long-lived TCP connections through the VIP and pings each every `--ping`
seconds (a connection is broken when a ping fails or a different VM answers), while it
opens a new short connection every `--every` seconds (answered within `--new-timeout`, or
it counts as not served). When all N are open it prints `READY` on stderr, so a caller
knows when to start; `STEADY` once every held connection has answered a few pings and new
connections are being served (the baseline a fault is measured against); after D seconds it
prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


STEADY_PINGS, STEADY_SERVED = 5, 20


def connect(vip: str, port: int, timeout: float) -> tuple[socket.socket, str]:
    s = socket.create_connection((vip, port), timeout=timeout)
    s.settimeout(timeout)
    s.sendall(b"hello\n")
    return s, s.recv(256).decode().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=24)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--ping", type=float, default=0.1)
    ap.add_argument("--every", type=float, default=0.02)
    ap.add_argument("--new-timeout", type=float, default=1.0)
    ap.add_argument("--ping-timeout", type=float, default=5.0)
    a = ap.parse_args()

    held = []
    for _ in range(a.conns):
        s, name = connect(a.vip, a.port, 5.0)
        s.settimeout(a.ping_timeout)  # TCP retransmits ride out a MUX failover within this
        held.append({"sock": s, "dip": name, "broken_at": None, "error": None, "pings": 0})
    start = time.time()
    print("READY", start, file=sys.stderr, flush=True)
    stop = time.monotonic() + a.duration

    def pinger(c):
        while time.monotonic() < stop and c["broken_at"] is None:
            try:
                c["sock"].sendall(b"ping\n")
                name = c["sock"].recv(256).decode().strip()
                if name != c["dip"]:
                    raise OSError(f"answered by {name or 'nobody (closed)'}, not {c['dip']}")
                c["pings"] += 1
            except OSError as exc:
                c["broken_at"], c["error"] = time.time(), f"{type(exc).__name__}: {exc}"
            time.sleep(a.ping)

    threads = [threading.Thread(target=pinger, args=(c,), daemon=True) for c in held]
    for t in threads:
        t.start()

    attempts = []

    def attempt(t0: float):
        try:
            s, name = connect(a.vip, a.port, a.new_timeout)
            s.close()
            attempts.append([t0, True, round(time.time() - t0, 4), name])
        except OSError as exc:
            attempts.append([t0, False, round(time.time() - t0, 4), type(exc).__name__])

    def steady():
        # the baseline: every held connection answered, new ones served, before any fault
        while time.monotonic() < stop:
            if all(c["pings"] >= STEADY_PINGS for c in held) and sum(1 for x in attempts if x[1]) >= STEADY_SERVED:
                print("STEADY", time.time(), file=sys.stderr, flush=True)
                return
            time.sleep(0.05)

    threading.Thread(target=steady, daemon=True).start()
    with ThreadPoolExecutor(max_workers=64) as pool:
        nxt = time.monotonic()
        while time.monotonic() < stop:
            pool.submit(attempt, time.time())
            nxt += a.every
            time.sleep(max(0.0, nxt - time.monotonic()))
    for t in threads:
        t.join(timeout=a.ping_timeout + 1)
    for c in held:
        c["sock"].close()
    print(json.dumps({
        "start": start, "vip": a.vip, "port": a.port,
        "conns": [{k: c[k] for k in ("dip", "broken_at", "error", "pings")} for c in held],
        "attempts": sorted(attempts),
    }))


if __name__ == "__main__":
    main()
