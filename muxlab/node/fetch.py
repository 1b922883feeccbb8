"""One long download from a VIP, inside a VM or client (Fastpath's tests, bench and workshop):
`python -m muxlab.node.fetch VIP PORT BYTES [--rate BYTES_PER_S] [--avoid vm3,vm4]`.

It asks the backend its name first (the VM service answers any line that is no command
with it), opens the connection again while that name is one to avoid (a backend on the
caller's own host: Fastpath has nothing to bypass there) or it does not connect, then asks for BYTES (`SEND n`)
and reads them, at most --rate a second. Prints one JSON line when the backend is known
({"served_by", "source"}) and one at the end ({"got", "seconds", "error"})."""
from __future__ import annotations

import argparse
import json
import socket
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vip")
    ap.add_argument("port", type=int)
    ap.add_argument("bytes", type=int)
    ap.add_argument("--rate", type=float, default=0, help="bytes a second at most (0: as fast as it comes)")
    ap.add_argument("--avoid", default="", help="backends to connect again from (comma-separated names)")
    ap.add_argument("--timeout", type=float, default=10)
    a = ap.parse_args()
    avoid = {n for n in a.avoid.split(",") if n}
    for _ in range(50):
        try:
            s = socket.create_connection((a.vip, a.port), timeout=2)
            s.settimeout(a.timeout)
            s.sendall(b"who\n")
            name = s.recv(100).decode().strip()
        except OSError:   # an internal frontend's hairpin (mapped back to the caller) never connects
            continue
        if name not in avoid:
            break
        s.close()
    else:
        raise SystemExit(f"no connection to {a.vip}:{a.port} reached a backend outside {sorted(avoid)}")
    print(json.dumps({"served_by": name, "source": list(s.getsockname())}), flush=True)
    s.sendall(b"SEND %d\n" % a.bytes)
    got, error, start = 0, "", time.monotonic()
    try:
        while got < a.bytes:
            chunk = s.recv(min(1 << 16, a.bytes - got))
            if not chunk:
                error = "closed early"
                break
            got += len(chunk)
            if a.rate:
                ahead = got / a.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    except OSError as e:
        error = type(e).__name__
    print(json.dumps({"got": got, "seconds": round(time.monotonic() - start, 3), "error": error}), flush=True)


if __name__ == "__main__":
    main()
