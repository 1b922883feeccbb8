"""The host's WireServer on the platform address (168.63.129.16:80): where a VM's guest agent
reports its role instance's health, in Azure's wire protocol (`POST /machine?comp=health`,
header `x-ms-version`, an XML `Health` document whose `State` is Ready or NotReady; a
SubStatus such as Busy says why). This is how a classic cloud service's instance takes itself
out of rotation (seed 003: the StatusCheck event): the load balancer's guest agent probe
follows the last report (hostagent/probes.py, protocol `guest`).

As Azure's, the caller is known by its source address (a VM of this host; anything else gets
403), and the report names the instance (`InstanceId`: the VM's name here). Only the health
report is served; Azure's goal state and extensions are not the lab's business.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from muxlab.datapath.conventions import HEALTH_REPORT_PATH, PLATFORM_ADDRESS, WIRESERVER_PORT
from muxlab.fabric.lab import Lab
from muxlab.lb import metadata
from muxlab.lb.facts import Probe

from .imds import Server, serve_in_thread

MAX_BODY = 64 * 1024
STATES = ("Ready", "NotReady")


@dataclass(frozen=True)
class Report:
    state: str
    substatus: str
    at: float   # time.monotonic() when it arrived


def parse_health(body: bytes) -> tuple[str, str, str]:
    """(instance id, state, substatus) of a health report; ValueError names what is wrong."""
    try:
        root = fromstring(body)
    except (ParseError, DefusedXmlException) as exc:
        raise ValueError(f"the body is not a Health document: {type(exc).__name__}: {exc}") from None
    if root.tag.rsplit("}", 1)[-1] != "Health":
        raise ValueError(f"root element {root.tag!r}: must be Health")
    ns = {"": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {}
    roles = root.findall("Container/RoleInstanceList/Role", ns)
    if len(roles) != 1:
        raise ValueError(f"Container/RoleInstanceList has {len(roles)} Role elements: one per report")
    role = roles[0]
    instance = (role.findtext("InstanceId", "", ns) or "").strip()
    state = (role.findtext("Health/State", "", ns) or "").strip()
    if state not in STATES:
        raise ValueError(f"Role/Health/State {state!r}: one of {', '.join(STATES)}")
    return instance, state, (role.findtext("Health/Details/SubStatus", "", ns) or "").strip()


class Reports:
    """The latest health report of each VM of this host."""

    def __init__(self, fabric: Lab, host: str):
        self.fabric, self.host = fabric, host
        self.latest: dict[str, Report] = {}
        self.lock = threading.Lock()

    def receive(self, source: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """One request's (status, message)."""
        if not headers.get("x-ms-version"):
            return 400, "the x-ms-version header is required"
        vm = metadata.caller(self.fabric, self.host, source)
        if vm is None:
            return 403, f"{source} is not a VM on {self.host}"
        try:
            instance, state, substatus = parse_health(body)
        except ValueError as exc:
            return 400, str(exc)
        if instance != vm.name:
            return 400, f"InstanceId {instance!r}: this caller is {vm.name}"
        with self.lock:
            self.latest[vm.name] = Report(state, substatus, time.monotonic())
        return 200, ""

    def answer(self, vm: str, probe: Probe) -> tuple[bool, str, bool]:
        """The guest agent probe's answer for `vm`: (ok, error, definite). Ready and at most
        probe.timeout old is positive; NotReady is a refusal; silence is no answer."""
        with self.lock:
            r = self.latest.get(vm)
        if r is None:
            return False, "no health report yet", False
        age = time.monotonic() - r.at
        if age > probe.timeout:
            return False, f"no health report for {age:.1f} s", False
        if r.state != "Ready":
            return False, f"the guest reports {r.state}" + (f" ({r.substatus})" if r.substatus else ""), True
        return True, "", False


def handler_for(reports: Reports) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "muxlab-wireserver"
        sys_version = ""

        def _answer(self, status: int, message: str) -> None:
            data = message.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if self.path != HEALTH_REPORT_PATH:
                return self._answer(404, f"not found: the WireServer here serves POST {HEALTH_REPORT_PATH}")
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                return self._answer(400, f"Content-Length must be 1..{MAX_BODY}")
            body = self.rfile.read(length)
            self._answer(*reports.receive(self.client_address[0], {k.lower(): v for k, v in self.headers.items()}, body))

        def do_GET(self):
            self._answer(405, f"POST {HEALTH_REPORT_PATH}")

        def log_message(self, *args):   # every VM reports every heartbeat
            pass

    return Handler


def serve(reports: Reports, address: str = PLATFORM_ADDRESS, port: int = WIRESERVER_PORT) -> Server:
    """Start the WireServer in a daemon thread; returns the server."""
    return serve_in_thread(handler_for(reports), address, port, "wireserver")
