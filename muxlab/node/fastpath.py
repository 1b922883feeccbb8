"""Fastpath's redirect: what a MUX tells the two hosts of a VM-to-VIP TCP connection once
its handshake completed (Ananta, SIGCOMM'13 §3.2.4; docs/development/fastpath.md argues the
mechanism). Shared by the MUX (mux/fastpath.py, which sends it) and the host agent
(hostagent/fastpath.py, which installs it): one format, one validation.

A redirect names the flow as the MUX saw it (source address and port, after any SNAT at
the source; the VIP and port), the source VM's DIP, the backend's DIP the MUX chose, and
the idle timeout of the rule. A withdrawal names the flow only. JSON in one UDP datagram
from the MUX's underlay address to each host's, port FASTPATH_PORT.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass

REDIRECT, WITHDRAW = "redirect", "withdraw"


class BadMessage(ValueError):
    pass


@dataclass(frozen=True)
class Redirect:
    op: str
    src: str          # the connection's source as the MUX saw it: a DIP (internal frontend) or a SNAT address
    sport: int
    vip: str
    port: int
    src_dip: str = ""  # the VM that opened it
    dst_dip: str = ""  # the backend the MUX chose
    idle_s: int = 0

    @property
    def flow(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.vip, self.port)

    def withdrawal(self) -> "Redirect":
        return Redirect(WITHDRAW, *self.flow)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


def snat_holders(snats) -> dict[str, list[tuple[int, int, str]]]:
    """TCP SNAT ranges by address: VIP -> [(lo, hi, the DIP of the VM that holds it)]."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    for x in snats:
        if "tcp" in x.protocols:
            out.setdefault(str(x.vip), []).append((x.lo, x.hi, str(x.ip)))
    return out


def source_dip(vnet: ipaddress.IPv4Network, holders: dict, src: str, sport: int) -> str | None:
    """The DIP behind a connection's source as the MUX saw it: the source itself when in the
    VNet (a call to an internal frontend), else whose SNAT range holds the port (a public one).
    The MUX uses it to find a redirect's source VM, the source's host to confirm it."""
    if ipaddress.IPv4Address(src) in vnet:
        return src
    return next((dip for lo, hi, dip in holders.get(src, ()) if lo <= sport <= hi), None)


def decode(data: bytes) -> Redirect:
    """A datagram as a Redirect, every field checked: BadMessage names the one that is not."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise BadMessage(f"not JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("op") not in (REDIRECT, WITHDRAW):
        raise BadMessage(f"op: {raw.get('op') if isinstance(raw, dict) else raw!r} is neither {REDIRECT} nor {WITHDRAW}")
    fields = ("src", "sport", "vip", "port") + (("src_dip", "dst_dip", "idle_s") if raw["op"] == REDIRECT else ())
    for f in fields:
        v = raw.get(f)
        if f in ("sport", "port", "idle_s"):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < (1 << 31 if f == "idle_s" else 65536):
                raise BadMessage(f"{f}: {v!r} is not a port or a timeout")
        else:
            try:
                ipaddress.IPv4Address(v)
            except (ValueError, TypeError):
                raise BadMessage(f"{f}: {v!r} is not an IPv4 address") from None
    return Redirect(**{k: raw[k] for k in ("op",) + fields})
