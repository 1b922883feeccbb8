"""The backend "application" on every VM: answers with the VM's name so people and tests
see which DIP served them.

TCP, on every backend and probe port the model gives this VM:
  - an HTTP request gets `200 <name>` (`GET /health` gets 503 while RUN_DIR/unhealthy exists);
  - `SINK <n>\\n` then n bytes: answers `<name> got <n>` (full-size transfers towards the VM);
  - `SEND <n>\\n`: answers with n bytes (full-size transfers towards the client);
  - anything else: each chunk is answered with `<name>\\n` (long-lived flows ping through it).
UDP, on the UDP backend ports: each datagram is answered with `<name>\\n`.

It is the lab's stand-in for the tenant's application and guest configuration: it follows
the load balancers in the managers' OVSDB (read-only), opening and closing ports and adding
or removing floating-IP VIPs on lo as they change.

UDP sockets are bound per address (the DIP and every floating-IP VIP on lo), never to
0.0.0.0: an unconnected wildcard socket answers from the primary address, so a floating-IP
(DSR) reply would leave from the DIP instead of the VIP and the client would drop it.
"""
from __future__ import annotations

import socket
import socketserver
import threading

from muxlab.model.compiled import guest_config
from muxlab.model.fabric import load_lab

from .desired import LB_COLUMNS, ServicesCache
from .ovsdb import Db, managers_remote
from .runtime import FABRIC_PATH, RUN_DIR

IPERF_PORT = 5201  # iperf3 owns it


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

    def server_bind(self):
        # a burst of datagrams can arrive at once (lab links forward UDP with GRO) while this
        # server starts a thread per datagram: room for a burst, as a DNS server would ask for
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        super().server_bind()


class Guest:
    """Keeps one server per (protocol, port, address) the current state asks for."""

    def __init__(self, name: str, dip: str):
        self.name, self.dip = name, dip
        self.tcp_handler, self.udp_handler = make_handlers(name)
        self.servers: dict[tuple[str, int, str], socketserver.BaseServer] = {}
        self.loopback: set[str] = set()

    def converge(self, tcp: set[int], udp: set[int], fips: list[str]) -> None:
        self.set_loopback(set(fips))
        want = {("tcp", p, "0.0.0.0") for p in tcp - {IPERF_PORT}}
        want |= {("udp", p, a) for p in udp - {IPERF_PORT} for a in [self.dip, *fips]}
        for key in sorted(set(self.servers) - want):
            server = self.servers.pop(key)
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()
        for key in sorted(want - set(self.servers)):
            proto, port, addr = key
            try:
                server = (TCPServer((addr, port), self.tcp_handler) if proto == "tcp"
                          else UDPServer((addr, port), self.udp_handler))
            except OSError as exc:
                print(f"[vm-service {self.name}] cannot serve {proto}/{port} on {addr}: {exc}", flush=True)
                continue
            self.servers[key] = server
            threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"[vm-service {self.name}] tcp {sorted(tcp)} udp {sorted(udp)} floating IPs {fips}", flush=True)

    def set_loopback(self, want: set[str]) -> None:
        """Floating-IP VIPs live on lo (the guest configuration Azure asks for)."""
        from pyroute2 import IPRoute
        if want == self.loopback:
            return
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=lo, family=socket.AF_INET)} - {"127.0.0.1"}
            for addr in sorted(want - have):
                ipr.addr("add", index=lo, address=addr, prefixlen=32)
            for addr in sorted(have - want):
                ipr.addr("del", index=lo, address=addr, prefixlen=32)
        self.loopback = want


def main() -> None:
    name = socket.gethostname()
    fabric = load_lab(FABRIC_PATH)
    guest = Guest(name, str(fabric.vm(name).ip))
    db = Db(managers_remote(len(fabric.managers)), LB_COLUMNS)
    compiled = ServicesCache(fabric)
    applied = None
    while True:
        db.wait(None)
        if db.run():
            want = guest_config(compiled.read(db), name)
            if want != applied:
                guest.converge(*want)
                applied = want


if __name__ == "__main__":
    main()
