"""The backend "application" on every VM: answers with the VM's name so people and tests
see which DIP served them.

TCP, on every backend and probe port the model gives this VM:
  - an HTTP request gets `200 <name>` (a probe's path, anything but `/`, gets 503 while
    RUN_DIR/unhealthy exists);
  - `SINK <n>\\n` then n bytes: answers `<name> got <n>` (full-size transfers towards the VM);
  - `SEND <n>\\n`: answers with n bytes (full-size transfers towards the client);
  - anything else: each chunk is answered with `<name>\\n` (long-lived flows ping through it).
UDP, on the UDP backend ports: each datagram is answered with `<name>\\n`.

It is the lab's stand-in for the tenant's application and guest configuration. A VM has no
management interface: like a guest in Azure it learns its load balancers from the Instance
Metadata Service its host serves (GET http://169.254.169.254/metadata/loadbalancer, header
Metadata: true; held by the host until the document changes: hostagent/imds.py's `wait`
extension, WAIT_S at a time), and opens and closes ports and adds or removes
floating-IP VIPs on lo as the answer changes (muxlab.lb.metadata.guest_config). While
IMDS does not answer, the VM keeps serving what it last learnt.

It is the VM's guest agent too: every GUEST_HEARTBEAT_S it reports its role instance's health
to the WireServer on its host's platform address (hostagent/wireserver.py): Ready, or NotReady
(Busy) while RUN_DIR/busy exists, as a classic role's StatusCheck handler sets it busy (seed 003).

UDP sockets are bound per address (the DIP and every floating-IP VIP on lo), never to
0.0.0.0: an unconnected wildcard socket answers from the primary address, so a floating-IP
(DSR) reply would leave from the DIP instead of the VIP and the client would drop it.
"""
from __future__ import annotations

import http.client
import json
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from muxlab.datapath.conventions import (BUSY_FILE, GUEST_HEARTBEAT_S, HEALTH_REPORT_PATH, IMDS_ADDRESS, IMDS_PORT, PLATFORM_ADDRESS,
                                         PROXY_V2_SIGNATURE, WIRESERVER_PORT)
from muxlab.fabric.lab import load_lab
from muxlab.lb.metadata import LOADBALANCER_MIN_VERSION, guest_config

from .runtime import FABRIC_PATH, RUN_DIR

IPERF_PORT = 5201  # iperf3 owns it
IMDS_URL = f"http://{IMDS_ADDRESS}:{IMDS_PORT}/metadata/loadbalancer?api-version={LOADBALANCER_MIN_VERSION}"
WAIT_S = 20.0   # how long the host may hold a request for a change (at most its MAX_WAIT_S)
RETRY_S = 0.25  # after a failed request
IMDS_TIMEOUT_S = 2.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # built once
HEALTH_URL = f"http://{PLATFORM_ADDRESS}:{WIRESERVER_PORT}{HEALTH_REPORT_PATH}"
WIRE_VERSION = "2012-11-30"   # the wire protocol version Azure's guest agents send


def health_report(name: str, busy: bool) -> bytes:
    """Azure's wire protocol Health document for one role instance."""
    state, sub = ("NotReady", "<Details><SubStatus>Busy</SubStatus><Description>StatusCheck: busy</Description></Details>"
                  ) if busy else ("Ready", "")
    return (f'<?xml version="1.0" encoding="utf-8"?><Health><GoalStateIncarnation>1</GoalStateIncarnation>'
            f"<Container><ContainerId>{name}</ContainerId><RoleInstanceList><Role><InstanceId>{name}</InstanceId>"
            f"<Health><State>{state}</State>{sub}</Health></Role></RoleInstanceList></Container></Health>").encode()


def report_health(name: str) -> None:
    """The guest agent's heartbeat, for ever; a report that fails is simply the next one's to make."""
    while True:
        body = health_report(name, Path(BUSY_FILE).exists())
        req = urllib.request.Request(HEALTH_URL, data=body, method="POST", headers={
            "Content-Type": "text/xml; charset=utf-8", "x-ms-version": WIRE_VERSION})
        try:
            NO_PROXY.open(req, timeout=GUEST_HEARTBEAT_S).close()
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(GUEST_HEARTBEAT_S)


def fetch_loadbalancer(url: str = IMDS_URL, timeout: float = IMDS_TIMEOUT_S, tag: str | None = None,
                       wait: float = 0.0) -> tuple[dict | None, str | None]:
    """The loadbalancer document IMDS has for this VM and its ETag; (None, tag) when it is
    still the one tagged `tag` after `wait` seconds. OSError (urllib's errors are OSErrors),
    ValueError or HTTPException when it cannot tell.
    No proxy, ever: IMDS refuses proxied requests, and a guest must bypass proxies for it."""
    headers = {"Metadata": "true", **({"If-None-Match": tag} if tag else {})}
    req = urllib.request.Request(f"{url}&wait={wait:g}" if wait else url, headers=headers)
    try:
        with NO_PROXY.open(req, timeout=timeout + wait) as resp:
            doc, tag = json.loads(resp.read()), resp.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None, tag
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("loadbalancer"), dict):
        raise ValueError("not a loadbalancer document")
    return doc, tag


def proxy_v2(data: bytes) -> tuple[tuple[str, int] | None, int]:
    """(the client a PROXY protocol v2 header names, or None for LOCAL or another family;
    the header's length). ValueError: not a whole v2 header."""
    if len(data) < 16 or not data.startswith(PROXY_V2_SIGNATURE) or data[12] >> 4 != 2:
        raise ValueError("not a PROXY protocol v2 header")
    length = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        raise ValueError("a PROXY protocol v2 header cut short")
    if data[12] & 0x0F == 1 and data[13] >> 4 == 1 and length >= 28:   # PROXY, AF_INET: src, dst, sport, dport
        return (socket.inet_ntoa(data[16:20]), int.from_bytes(data[24:26], "big")), length
    return None, length


class Untrusted:
    """PROXY headers that came from something other than a MUX: counted, for people and tests."""
    lock = threading.Lock()
    count = 0

    @classmethod
    def add(cls) -> None:
        with cls.lock:
            cls.count += 1
            (RUN_DIR / "proxy-untrusted").write_text(f"{cls.count}\n")


def make_handlers(name: str, trusted: frozenset[str] = frozenset()):
    """`trusted`: the addresses whose PROXY headers count (the MUXes')."""
    reply = f"{name}\n".encode()

    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(600)
            client = self.client_address[:2]
            try:
                data = sock.recv(65536)
                if data.startswith(PROXY_V2_SIGNATURE):
                    named, length = proxy_v2(data)
                    if self.client_address[0] in trusted:
                        client = named or client
                    else:
                        Untrusted.add()   # anyone can write a header: only a MUX's is believed
                    data = data[length:] or sock.recv(65536)
                if data[:4] in (b"GET ", b"HEAD"):
                    path = data.split(b" ", 2)[1] if b" " in data else b"/"
                    sick = path != b"/" and (RUN_DIR / "unhealthy").exists()
                    status = b"503 Service Unavailable" if sick else b"200 OK"
                    body = reply
                    sock.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                                 + str(len(body)).encode() + f"\r\nX-Client: {client[0]}:{client[1]}".encode()
                                 + b"\r\nConnection: close\r\n\r\n" + body)
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

    def __init__(self, name: str, dip: str, trusted: frozenset[str] = frozenset()):
        self.name, self.dip = name, dip
        self.tcp_handler, self.udp_handler = make_handlers(name, trusted)
        self.servers: dict[tuple[str, int, str], socketserver.BaseServer] = {}
        self.loopback: set[str] = set()

    def converge(self, tcp: set[int], udp: set[int], fips: list[str]) -> None:
        self.set_loopback(set(fips))
        want = {("tcp", p, "0.0.0.0") for p in tcp - {IPERF_PORT}}
        want |= {("udp", p, a) for p in udp - {IPERF_PORT} for a in [self.dip, *fips]}
        # an application does not stop listening because a load balancer stopped sending to it
        # (scale-in, drain): only sockets bound to a floating IP that went away close
        for key in sorted(k for k in set(self.servers) - want if k[2] not in ("0.0.0.0", self.dip)):
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
    guest = Guest(name, str(fabric.vm(name).ip), frozenset(str(m.address) for m in fabric.muxes))
    threading.Thread(target=report_health, args=(name,), name="guest-agent", daemon=True).start()
    applied, failing, tag = None, "", None
    while True:
        try:
            doc, tag = fetch_loadbalancer(tag=tag, wait=WAIT_S if tag else 0.0)
            want = guest_config(doc) if doc is not None else applied
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:   # keep the last good answer
            err = f"{type(exc).__name__}: {exc}"
            if err != failing:
                print(f"[vm-service {name}] IMDS: {err}; serving what it last said", flush=True)
                failing = err
            tag = None
            time.sleep(RETRY_S)
        else:
            if failing:
                print(f"[vm-service {name}] IMDS answers again", flush=True)
                failing = ""
            if want != applied:
                guest.converge(*want)
                applied = want


if __name__ == "__main__":
    main()
