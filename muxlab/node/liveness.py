"""Host liveness from the data plane, without the managers (docs/development/liveness.md).

Each host agent sends a small UDP beacon from its VTEP address to every MUX's underlay
address every LIVENESS_INTERVAL_S: the path a MUX's encapsulated packets take to the host,
the other way round. A MUX that hears none from a host for LIVENESS_DEAD_AFTER_S takes the
host's DIPs out of its tables. Nothing goes through OVSDB, so a host dies out of every MUX
while every manager is down as well, and a healthy fabric costs the database no write.

A beacon is the magic, then the host's name; a MUX believes it only from the address the
fabric gives that host. A host never heard counts as alive for LIVENESS_DEAD_AFTER_S after
the listener starts (a restarted MUX agent must not empty its tables in the meantime).
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

from muxlab.datapath.conventions import LIVENESS_DEAD_AFTER_S, LIVENESS_INTERVAL_S, LIVENESS_PORT

MAGIC = b"muxlab-alive\0"


class Beacon:
    """A host's side: a daemon thread sending its beacon to every MUX."""

    def __init__(self, name: str, source: str, muxes: list[str], interval: float = LIVENESS_INTERVAL_S,
                 port: int = LIVENESS_PORT):
        self.payload = MAGIC + name.encode()
        self.source, self.muxes, self.interval, self.port = source, muxes, interval, port
        self.sent = 0
        self.stopped = threading.Event()

    def start(self) -> "Beacon":
        threading.Thread(target=self._run, name="liveness-beacon", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((self.source, 0))   # from the VTEP address, as the overlay's packets
        except OSError:
            pass   # not configured yet: the kernel picks the source, and the MUX ignores it until it is
        return s

    def _run(self) -> None:
        sock = self._socket()
        bound = sock.getsockname()[0] == self.source
        while not self.stopped.is_set():
            for mux in self.muxes:
                try:
                    sock.sendto(self.payload, (mux, self.port))
                    self.sent += 1
                except OSError:
                    pass   # no route yet: the next round tries again
            if not bound:
                sock.close()
                sock = self._socket()
                bound = sock.getsockname()[0] == self.source
            self.stopped.wait(self.interval)
        sock.close()


class Listener:
    """A MUX's side: hears beacons on its underlay address in a daemon thread and keeps the
    set of dead hosts; `fileno()` becomes readable when that set changes (for the agent's
    poller), `dead()` says which hosts are dead now."""

    def __init__(self, address: str, hosts: dict[str, str], dead_after: float = LIVENESS_DEAD_AFTER_S,
                 log: Callable[[str], None] | None = None, port: int = LIVENESS_PORT):
        self.address, self.dead_after, self.port = address, dead_after, port
        self.by_address = {a: h for h, a in hosts.items()}          # VTEP address -> host
        started = time.monotonic()
        self.heard: dict[str, float] = {h: started for h in hosts}  # never heard: alive for dead_after
        self._dead: frozenset[str] = frozenset()
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.log = log or (lambda line: print(line, flush=True))

    def start(self) -> "Listener":
        threading.Thread(target=self._run, name="liveness-listener", daemon=True).start()
        return self

    def fileno(self) -> int:
        return self.wake_r

    def dead(self) -> frozenset[str]:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        with self.lock:
            return self._dead

    def _bind(self) -> socket.socket:
        while True:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((self.address, self.port))
                s.settimeout(self.dead_after / 6)
                return s
            except OSError as exc:   # the underlay address not there yet
                s.close()
                self.log(f"[liveness] cannot listen on {self.address}:{self.port} yet ({exc}); retrying")
                time.sleep(1)

    def _run(self) -> None:
        sock = self._bind()
        judged, every = 0.0, self.dead_after / 12   # judging is per host: not per datagram
        while True:
            try:
                data, (src, _) = sock.recvfrom(256)
                host = self.by_address.get(src)
                if host is not None and data == MAGIC + host.encode():
                    self.heard[host] = time.monotonic()
            except socket.timeout:
                pass
            now = time.monotonic()
            if now - judged >= every:
                judged = now
                self._judge(now)

    def _judge(self, now: float) -> None:
        dead = frozenset(h for h, t in self.heard.items() if now - t > self.dead_after)
        with self.lock:
            if dead == self._dead:
                return
            gone, back = sorted(dead - self._dead), sorted(self._dead - dead)
            self._dead = dead
        self.log(f"[liveness] {'dead: ' + ', '.join(gone) if gone else ''}{'; ' if gone and back else ''}"
                 f"{'alive again: ' + ', '.join(back) if back else ''}")
        os.write(self.wake_w, b"x")
