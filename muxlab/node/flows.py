"""Traffic generator that runs inside a client container: opens N flows to VIP:port and
reports which backend answered each. Invoked by `muxlab traffic` and the tests as
`python -m muxlab.node.flows ...`; prints one JSON document.

Each TCP flow: connect (own source port), send a line, read the VM's name, close with RST
(no TIME_WAIT, so a test can reuse a source port). Each UDP flow: its own socket and source
port, one datagram, one answer.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def tcp_flow(vip: str, port: int, timeout: float, sport: int = 0) -> tuple[int, str]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(timeout)
    try:
        s.bind(("0.0.0.0", sport))
        s.connect((vip, port))
        s.sendall(b"hello\n")
        name = s.recv(256).decode().strip()
        return s.getsockname()[1], name
    finally:
        s.close()


def udp_flow(vip: str, port: int, timeout: float, sport: int = 0) -> tuple[int, str]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.bind(("0.0.0.0", sport))
        for _ in range(3):  # UDP is lossy by nature; a flow gets three tries
            s.sendto(b"hello\n", (vip, port))
            try:
                data, peer = s.recvfrom(256)
                if peer[0] != vip:
                    raise OSError(f"answer came from {peer[0]}, not the VIP")
                return s.getsockname()[1], data.decode().strip()
            except socket.timeout:
                continue
        raise socket.timeout("no answer")
    finally:
        s.close()


def run(vip: str, port: int, flows: int, udp: bool, timeout: float, sport: int, workers: int) -> dict:
    fn = udp_flow if udp else tcp_flow
    results: list[dict] = []

    def one(i: int) -> dict:
        t0 = time.monotonic()
        try:
            src, name = fn(vip, port, timeout, sport)
            return {"sport": src, "dip": name, "ms": round((time.monotonic() - t0) * 1000, 2)}
        except OSError as exc:
            return {"sport": sport or None, "error": f"{type(exc).__name__}: {exc}"}

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, flows))) as pool:
        results = list(pool.map(one, range(flows)))
    elapsed = time.monotonic() - t0
    ok = [r for r in results if "dip" in r]
    errors = [r["error"] for r in results if "error" in r]
    return {
        "vip": vip, "port": port, "protocol": "udp" if udp else "tcp", "flows": flows,
        "served": len(ok), "failures": len(errors), "errors": sorted(Counter(errors).items())[:10],
        "by_dip": dict(sorted(Counter(r["dip"] for r in ok).items())),
        "seconds": round(elapsed, 3), "flows_per_second": round(flows / elapsed, 1) if elapsed else None,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--flows", type=int, default=100)
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--sport", type=int, default=0, help="fixed source port (one flow at a time)")
    ap.add_argument("--workers", type=int, default=16)
    a = ap.parse_args()
    print(json.dumps(run(a.vip, a.port, a.flows, a.udp, a.timeout, a.sport, 1 if a.sport else a.workers)))


if __name__ == "__main__":
    main()
