"""The host's Instance Metadata Service: HTTP on 169.254.169.254:80, on the host's bridge, for
its own VMs only, as Azure's hosts serve it (documents: muxlab.lb.metadata).

As Azure's:
- a request without the header `Metadata: true` gets 400, and so does one carrying
  `X-Forwarded-For` (IMDS refuses proxied requests);
- `api-version` is required (400 without it or with one it does not know, with the newest
  versions in the answer), except for /metadata/versions;
- the caller is known by its source address (a VM's DIP or second NIC address); any other
  source gets 403;
- a path below a document selects part of it (`/metadata/instance/compute/name`), and
  `format=text` gives a leaf as plain text.
Until the agent has compiled the load balancers once, /metadata/loadbalancer answers 503 (a
VM keeps what it had).
"""
from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from muxlab.datapath.conventions import IMDS_ADDRESS, IMDS_PORT
from muxlab.fabric.lab import Lab
from muxlab.lb import metadata
from muxlab.lb.facts import Facts

IP_FREEBIND = 15   # linux/in.h: bind before the address is on the bridge (the agent may start first)
NEWEST = list(reversed(metadata.API_VERSIONS[-3:]))


MAX_WAIT_S = 30.0   # the longest a request with `wait` is held


def etag(body: str) -> str:
    return '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'


class Metadata:
    """What the service answers, from the fabric and the latest facts.

    A muxlab extension Azure's IMDS does not have, so that an idle guest costs nothing: every
    document carries an ETag, and a request with `If-None-Match: <that tag>` and the query
    parameter `wait=<seconds>` (at most MAX_WAIT_S) is held until the document changes,
    then answered 200; unchanged when the wait is over, 304. A request without them is
    answered at once, as Azure's."""

    def __init__(self, fabric: Lab, host: str):
        self.fabric, self.host = fabric, host
        self.facts: Facts | None = None
        # per VM: (the facts its last load-balancer document came from, when it asked)
        self.fetched: dict[str, tuple[Facts, float]] = {}
        self.waiting: dict[str, int] = {}   # VMs with a request held, and how many
        self.changed = threading.Condition()

    def update(self, facts: Facts) -> None:
        with self.changed:
            self.facts = facts   # immutable: a request in flight keeps the one it read
            self.changed.notify_all()

    def behind(self, now: float, alive_s: float = 3.0) -> list[str]:
        """VMs that keep asking (within alive_s, or waiting in a held request) but have not
        read the current document yet: until they have, this host has not applied the
        configuration (as a guest agent's goal state in Azure). A VM whose application
        stopped asking holds nothing up."""
        return sorted(vm for vm, (facts, at) in self.fetched.items()
                      if facts is not self.facts and (now - at <= alive_s or self.waiting.get(vm)))

    def answer(self, method: str, target: str, headers: dict[str, str], source: str) -> tuple[int, str, str]:
        """(status, content type, body) for one request; headers with lower-case names."""
        status, ctype, body, _ = self.respond(method, target, headers, source)
        return status, ctype, body

    def respond(self, method: str, target: str, headers: dict[str, str],
                source: str) -> tuple[int, str, str, dict[str, str]]:
        """answer(), and the response headers (ETag); holds a request that asks to wait."""
        status, ctype, body = self._answer(method, target, headers, source)
        tag = etag(body) if status == 200 else None
        query = {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}
        vm = metadata.caller(self.fabric, self.host, source)
        try:
            wait = min(float(query.get("wait", 0)), MAX_WAIT_S)
        except ValueError:
            wait = 0.0
        if tag and vm is not None and wait > 0 and headers.get("if-none-match") == tag:
            deadline = time.monotonic() + wait
            with self.changed:
                self.waiting[vm.name] = self.waiting.get(vm.name, 0) + 1
                try:
                    while True:
                        facts = self.facts
                        self.changed.wait(max(0.0, deadline - time.monotonic()))
                        if self.facts is not facts:
                            break
                        if time.monotonic() >= deadline:
                            return 304, ctype, "", {"ETag": tag}
                finally:
                    self.waiting[vm.name] -= 1
            status, ctype, body = self._answer(method, target, headers, source)
            tag = etag(body) if status == 200 else None
            if tag == headers.get("if-none-match"):   # changed, but not for this VM
                return 304, ctype, "", {"ETag": tag}
        return status, ctype, body, ({"ETag": tag} if tag else {})

    def _answer(self, method: str, target: str, headers: dict[str, str], source: str) -> tuple[int, str, str]:
        def error(status: int, msg: str, **extra) -> tuple[int, str, str]:
            return status, "application/json; charset=utf-8", json.dumps({"error": msg, **extra})

        if method != "GET":
            return error(405, "Method not allowed")
        if headers.get("metadata", "").lower() != "true":
            return error(400, "Bad request. Required metadata header not specified")
        if "x-forwarded-for" in headers:
            return error(400, "Bad request. Request contains X-Forwarded-For header: IMDS does not accept proxied requests")
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] != ["metadata"] or len(parts) < 2:
            return error(404, "Not found")
        if parts[1] == "versions" and len(parts) == 2:
            return 200, "application/json; charset=utf-8", json.dumps({"apiVersions": list(metadata.API_VERSIONS)})
        if parts[1] not in ("instance", "loadbalancer"):
            return error(404, "Not found")
        version = query.get("api-version")
        minimum = metadata.INSTANCE_MIN_VERSION if parts[1] == "instance" else metadata.LOADBALANCER_MIN_VERSION
        if not version:
            return error(400, "Bad request. api-version was not specified in the request", **{"newest-versions": NEWEST})
        if not metadata.supported(version, minimum):
            return error(400, "Bad request. api-version is invalid or not supported", **{"newest-versions": NEWEST})
        vm = metadata.caller(self.fabric, self.host, source)
        if vm is None:
            return error(403, f"Forbidden. {source} is not a VM on {self.host}")
        facts = self.facts
        if parts[1] == "loadbalancer" and facts is None:
            return error(503, "Service unavailable. Load balancer metadata is not known yet")
        facts = facts or Facts()
        doc = (metadata.instance_document if parts[1] == "instance" else metadata.loadbalancer_document)(
            self.fabric, facts, vm.name)
        if parts[1] == "loadbalancer":
            self.fetched[vm.name] = (facts, time.monotonic())
        try:
            node = metadata.select(doc, parts[2:])
        except KeyError:
            return error(404, "Not found")
        if query.get("format") == "text":
            if isinstance(node, (dict, list)):
                return error(400, "Bad request. format=text is for leaf values only")
            return 200, "text/plain; charset=utf-8", node if isinstance(node, str) else json.dumps(node)
        return 200, "application/json; charset=utf-8", json.dumps(node)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        # not HTTPServer.server_bind: it asks DNS for the address's name (socket.getfqdn), and
        # with no resolver reachable that held a restarted host agent for 10 s, its VMs
        # leaving every MUX's tables meanwhile
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def handler_for(meta: Metadata):
    class Handler(BaseHTTPRequestHandler):
        server_version = "muxlab-imds"
        sys_version = ""

        def _serve(self):
            status, ctype, body, extra = meta.respond(self.command, self.path,
                                                      {k.lower(): v for k, v in self.headers.items()},
                                                      self.client_address[0])
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, *args):   # every VM asks every second: no log line per request
            pass

    return Handler


def serve(meta: Metadata, address: str = IMDS_ADDRESS, port: int = IMDS_PORT) -> Server:
    """Start the service in a daemon thread; returns the server (server.shutdown() stops it)."""
    return serve_in_thread(handler_for(meta), address, port, "imds")


def serve_in_thread(handler: type[BaseHTTPRequestHandler], address: str, port: int, name: str) -> Server:
    """A platform address's HTTP service (IMDS, the WireServer), in a daemon thread."""
    server = Server((address, port), handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
