"""The backend "application" on every VM: answers with the VM's name so people and tests
see which DIP served them.

TCP, on every backend and probe port the model gives this VM:
  - an HTTP request gets `200 <name>` (`GET /health` gets 503 while RUN_DIR/unhealthy exists);
  - `SINK <n>\\n` then n bytes: answers `<name> got <n>` (full-size transfers towards the VM);
  - `SEND <n>\\n`: answers with n bytes (full-size transfers towards the client);
  - anything else: each chunk is answered with `<name>\\n` (long-lived flows ping through it).
UDP, on the UDP backend ports: each datagram is answered with `<name>\\n`.

UDP sockets are bound per address (the DIP and every floating-IP VIP on lo), never to
0.0.0.0: an unconnected wildcard socket answers from the primary address, so a floating-IP
(DSR) reply would leave from the DIP instead of the VIP and the client would drop it.
"""
from __future__ import annotations

import socket
import socketserver
import threading

from .model import load_lab
from .state import MODEL_PATH, RUN_DIR


def ports_for(lab, vm: str) -> tuple[set[int], set[int]]:
    tcp, udp = set(), set()
    for vip in lab.vips:
        for r in vip.rules:
            if vm in lab.pools[r.pool]:
                (tcp if r.protocol == "tcp" else udp).add(r.backend_port)
                if r.probe:
                    tcp.add(lab.probes[r.probe].port)
    tcp.discard(5201)  # iperf3 owns it
    udp.discard(5201)
    return tcp, udp


def make_handlers(name: str):
    reply = f"{name}\n".encode()

    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(600)
            try:
                data = sock.recv(65536)
                if data[:4] in (b"GET ", b"HEAD"):
                    path = data.split(b" ", 2)[1] if b" " in data else b"/"
                    sick = path == b"/health" and (RUN_DIR / "unhealthy").exists()
                    status = b"503 Service Unavailable" if sick else b"200 OK"
                    body = reply
                    sock.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                    return
                while data:
                    if data.startswith(b"SINK "):
                        head, _, rest = data.partition(b"\n")
                        want = int(head.split()[1])
                        got = len(rest)
                        while got < want:
                            chunk = sock.recv(min(1 << 20, want - got))
                            if not chunk:
                                break
                            got += len(chunk)
                        sock.sendall(f"{name} got {got}\n".encode())
                    elif data.startswith(b"SEND "):
                        n = int(data.split()[1])
                        block = b"x" * 65536
                        while n > 0:
                            sock.sendall(block[:n])
                            n -= len(block)
                    else:
                        sock.sendall(reply)
                    data = sock.recv(65536)
            except (OSError, ValueError):
                pass

    class UDPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            _, sock = self.request
            sock.sendto(reply, self.client_address)

    return TCPHandler, UDPHandler


class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256


class UDPServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    name = socket.gethostname()
    lab = load_lab(MODEL_PATH)
    tcp, udp = ports_for(lab, name)
    th, uh = make_handlers(name)
    from .render import node_plan
    plan = node_plan(lab, name)
    addrs = [cidr.split("/")[0] for _, cidr in plan.addresses] + [cidr.split("/")[0] for cidr in plan.loopback]
    servers = [TCPServer(("0.0.0.0", p), th) for p in sorted(tcp)]
    servers += [UDPServer((a, p), uh) for p in sorted(udp) for a in addrs]
    print(f"[vm-service {name}] tcp {sorted(tcp)} udp {sorted(udp)}", flush=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
