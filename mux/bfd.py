"""A minimal single-hop BFD speaker (RFC 5880 asynchronous mode, RFC 5881 IPv4 single hop)
that runs beside ExaBGP on each MUX, since ExaBGP has none.

The edge (FRR bfdd, `neighbor ... bfd`) peers with it. A MUX that freezes (`docker pause`)
or loses its path stops answering, the edge declares the session down after
detect-multiplier x interval, tears the BGP session down, and the MUX's next hop leaves
ECMP in about a second instead of the 3 s BGP hold time.

`Session` is the pure protocol (packet codec + state machine, unit-tested); `main()` is
the socket loop. It is control plane, not data path: a few packets per second.
"""
from __future__ import annotations

import os
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass

ADMIN_DOWN, DOWN, INIT, UP = 0, 1, 2, 3
STATE_NAMES = {ADMIN_DOWN: "AdminDown", DOWN: "Down", INIT: "Init", UP: "Up"}
DIAG_NONE, DIAG_DETECT_EXPIRED, DIAG_NEIGHBOR_DOWN = 0, 1, 3
PORT = 3784
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # Linux value; Python < 3.12 does not name it
FMT = "!BBBBIIIII"
LEN = struct.calcsize(FMT)  # 24


@dataclass
class Packet:
    state: int
    my_disc: int
    your_disc: int
    detect_mult: int = 3
    desired_min_tx_us: int = 300_000
    required_min_rx_us: int = 300_000
    diag: int = DIAG_NONE
    poll: bool = False
    final: bool = False

    def encode(self) -> bytes:
        flags = (self.state << 6) | (0x20 if self.poll else 0) | (0x10 if self.final else 0)
        return struct.pack(FMT, (1 << 5) | self.diag, flags, self.detect_mult, LEN, self.my_disc, self.your_disc,
                           self.desired_min_tx_us, self.required_min_rx_us, 0)

    @classmethod
    def decode(cls, data: bytes) -> "Packet":
        if len(data) < LEN:
            raise ValueError("short BFD packet")
        vd, flags, mult, length, my, your, tx, rx, _echo = struct.unpack(FMT, data[:LEN])
        if vd >> 5 != 1 or length < LEN or mult == 0 or my == 0 or flags & 0x01:  # version, M bit
            raise ValueError("invalid BFD packet")
        return cls(flags >> 6, my, your, mult, tx, rx, vd & 0x1F, bool(flags & 0x20), bool(flags & 0x10))


class Session:
    """One BFD session with one peer: RFC 5880 section 6.8.6 reception, 6.8.4 detection."""

    def __init__(self, my_disc: int, tx_us: int = 300_000, rx_us: int = 300_000, mult: int = 3):
        self.my_disc = my_disc
        self.tx_us, self.rx_us, self.mult = tx_us, rx_us, mult
        self.state = DOWN
        self.diag = DIAG_NONE
        self.remote_disc = 0
        self.remote_state = DOWN
        self.remote_min_rx_us = 1
        self.remote_tx_us = 1_000_000
        self.remote_mult = 3
        self.last_rx = 0.0
        self.send_final = False

    def receive(self, pkt: Packet, now: float) -> bool:
        """Apply a received packet; True when our state changed."""
        if pkt.your_disc and pkt.your_disc != self.my_disc:
            return False
        if pkt.your_disc == 0 and pkt.state not in (DOWN, ADMIN_DOWN):
            return False
        self.remote_disc = pkt.my_disc
        self.remote_state = pkt.state
        self.remote_min_rx_us = pkt.required_min_rx_us
        self.remote_tx_us = pkt.desired_min_tx_us
        self.remote_mult = pkt.detect_mult
        self.last_rx = now
        if pkt.poll:
            self.send_final = True  # answer a Poll with a Final (the peer is changing timers)
        before = self.state
        if pkt.state == ADMIN_DOWN:
            if self.state != DOWN:
                self.state, self.diag = DOWN, DIAG_NEIGHBOR_DOWN
        elif self.state == DOWN:
            if pkt.state == DOWN:
                self.state = INIT
            elif pkt.state == INIT:
                self.state = UP
        elif self.state == INIT:
            if pkt.state in (INIT, UP):
                self.state = UP
        elif self.state == UP and pkt.state == DOWN:
            self.state, self.diag = DOWN, DIAG_NEIGHBOR_DOWN
        if self.state == UP:
            self.diag = DIAG_NONE
        return self.state != before

    def detection_time(self) -> float:
        return self.remote_mult * max(self.rx_us, self.remote_tx_us) / 1e6

    def expire(self, now: float) -> bool:
        """Declare the session down when nothing arrived for the detection time."""
        if self.state in (INIT, UP) and now - self.last_rx > self.detection_time():
            self.state, self.diag, self.remote_disc = DOWN, DIAG_DETECT_EXPIRED, 0
            return True
        return False

    def tx_interval(self) -> float:
        """Seconds to the next packet: the slower of our wish and the peer's limit, jittered
        to 75-100 % (RFC 5880 6.8.7)."""
        base = max(self.tx_us, self.remote_min_rx_us) / 1e6
        return base * random.uniform(0.75, 1.0)

    def packet(self) -> Packet:
        pkt = Packet(self.state, self.my_disc, self.remote_disc, self.mult, self.tx_us, self.rx_us, self.diag,
                     final=self.send_final)
        self.send_final = False
        return pkt


def main() -> None:
    """Serve one session per peer address given on the command line."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-us", type=int, default=300_000)
    ap.add_argument("--multiplier", type=int, default=3)
    ap.add_argument("peers", nargs="+")
    a = ap.parse_args()
    peers = a.peers
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rx.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    rx.bind(("0.0.0.0", PORT))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)  # RFC 5881: single hop sends TTL 255
    tx.bind(("0.0.0.0", 49152 + os.getpid() % 16000))
    sessions = {p: Session(random.randint(1, 2**32 - 1), a.interval_us, a.interval_us, a.multiplier) for p in peers}
    next_tx = {p: 0.0 for p in peers}
    name = socket.gethostname()
    while True:
        now = time.monotonic()
        timeout = max(0.0, min(next_tx.values()) - now)
        ready, _, _ = select.select([rx], [], [], min(timeout, 0.05))
        now = time.monotonic()
        if ready:
            data, anc, _flags, (src, _port) = rx.recvmsg(64, socket.CMSG_SPACE(4))
            ttl = next((int.from_bytes(d[:4], sys.byteorder) for lvl, typ, d in anc
                        if lvl == socket.IPPROTO_IP and typ == socket.IP_TTL), 255)
            s = sessions.get(src)
            if s is not None and ttl == 255:
                try:
                    pkt = Packet.decode(data)
                except ValueError:
                    pkt = None
                if pkt and s.receive(pkt, now):
                    print(f"[bfd {name}] {src}: {STATE_NAMES[s.state]}", flush=True)
                    next_tx[src] = now  # tell the peer at once
        for peer, s in sessions.items():
            if s.expire(now):
                print(f"[bfd {name}] {peer}: Down (detection time expired)", flush=True)
            if now >= next_tx[peer]:
                try:
                    tx.sendto(s.packet().encode(), (peer, PORT))
                except OSError:
                    pass  # link down: keep trying
                next_tx[peer] = now + s.tx_interval()


if __name__ == "__main__":
    main()
