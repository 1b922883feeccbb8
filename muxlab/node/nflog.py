"""A subscriber to one NFLOG group (nfnetlink_log): the packets an nft `log group N` rule
hands to userspace, with their mark.

Hand-written, and why: pyroute2 (the lab's netlink library) has no NFLOG family, and the
Python bindings that do (python-nflog, nflog-bindings) wrap libnetfilter_log in C and are
unmaintained. What is needed is small: bind a group, ask for the first bytes of each packet,
read TLVs from the messages (linux/netfilter/nfnetlink_log.h).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_MARK, NFULA_PAYLOAD = 2, 9
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 64   # an IPv4 header and the ports are all a subscriber reads


@dataclass(frozen=True)
class Logged:
    """One logged IPv4 packet: its addresses, protocol, ports (TCP/UDP) and mark."""
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    mark: int


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _config(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return struct.pack("IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def attributes(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, i)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[i + 4:i + length]   # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        i += (length + 3) & ~3
    return out


def parse_packet(attrs: dict[int, bytes]) -> Logged | None:
    """The packet of one NFULNL_MSG_PACKET, or None when it is not IPv4 with ports."""
    ip = attrs.get(NFULA_PAYLOAD, b"")
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    if len(ip) < ihl + 4:
        return None
    sport, dport = struct.unpack_from("!HH", ip, ihl)
    mark = struct.unpack("!I", attrs[NFULA_MARK])[0] if len(attrs.get(NFULA_MARK, b"")) == 4 else 0
    return Logged(str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])), ip[9], sport, dport, mark)


def messages(data: bytes):
    """(type, what follows the netlink header) of each message in one datagram."""
    i = 0
    while i + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, i)
        if length < 16:
            break
        yield kind, data[i + 16:i + length]
        i += (length + 3) & ~3


class Subscriber:
    """Bound to one NFLOG group; `read()` blocks for the next datagram's packets."""

    def __init__(self, group: int):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._ask(_config(group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), 1))
        self._ask(_config(group, _attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)), 2))
        # each packet at once: the kernel's default batches 100 packets or a second
        self._ask(_config(group, _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)) + _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", 1)), 3))

    def _ask(self, request: bytes) -> None:
        self.sock.send(request)
        for kind, payload in messages(self.sock.recv(65536)):
            # an acknowledgement is an nlmsgerr: its error code first (0: done)
            if kind == NLMSG_ERROR and len(payload) >= 4 and (code := struct.unpack_from("i", payload)[0]) != 0:
                raise OSError(-code, "the kernel refused the NFLOG configuration (is nfnetlink_log there?)")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Logged]:
        data = self.sock.recv(1 << 16)
        out = []
        for kind, payload in messages(data):
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                got = parse_packet(attributes(payload[4:]))
                if got:
                    out.append(got)
        return out

