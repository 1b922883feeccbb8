"""Client of the managers' northbound API, for the CLI, tests and benchmarks. It tries each
manager in turn, so the API goes on while any manager answers.

The API is HTTPS with a bearer token. Managers are reached by management address while their
certificates name the manager: each URL's TLS handshake sends (SNI) and verifies (hostname
check against the certificate's SAN) the manager's name given in `names`, against the lab's
CA in `ca`. Verification is never turned off."""
from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from ..errors import MuxlabError


class ApiError(MuxlabError):
    """A 4xx/5xx answer: the message, then each detail as 'path: value: message'."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        err = body.get("error", {}) if isinstance(body, dict) else {}
        lines = [f"manager answered {status}: {err.get('message') or body}"]
        for d in err.get("details", []):
            lines.append(f"  {d['target']}: {d['value']!r}: {d['message']}")
        super().__init__("\n".join(lines))


def tls_context(ca: str | Path | None) -> ssl.SSLContext:
    """Verifies the server's certificate chain (against `ca`, else the system's CAs) and its
    name."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Api:
    def __init__(self, urls: list[str], timeout: float = 15.0, token: str | None = None, ca: str | Path | None = None,
                 names: Sequence[str] | None = None):
        """`urls`: the managers' API; `token`: the lab's bearer token; `ca`: the lab's CA
        certificate file; `names`: per URL, in order, the name its certificate must carry
        (default: the URL's host)."""
        if not urls:
            raise MuxlabError("no manager is running in this lab")
        if names is not None and len(names) != len(urls):
            raise ValueError(f"Api: {len(urls)} URLs but {len(names)} names")
        self.urls = list(urls)
        self.timeout = timeout
        self.names = dict(zip(urls, names)) if names is not None else {}
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.verify: ssl.SSLContext | bool = tls_context(ca) if ca or any(u.startswith("https:") for u in urls) else True

    def request(self, method: str, path: str, body: Any = None, ok_statuses=(200, 201)) -> Any:
        errors = []
        for url in list(self.urls):
            name = self.names.get(url)
            try:
                # a client per call, as httpx.request: no connection outlives the call
                with httpx.Client(verify=self.verify, timeout=httpx.Timeout(self.timeout, connect=1.0)) as client:
                    # the handshake's server name (SNI), and the name the certificate is checked against
                    r = client.request(method, url + path, json=body, headers=self.headers,
                                       extensions={"sni_hostname": name} if name else None)
            except httpx.ConnectError as exc:
                if isinstance(exc.__cause__ or exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE" in str(exc):
                    errors.append(f"{url}: TLS verification failed ({exc})")
                else:
                    errors.append(f"{url}: {type(exc).__name__}")
                continue
            except httpx.TransportError as exc:
                errors.append(f"{url}: {type(exc).__name__}")
                continue
            if r.status_code == 503:  # that manager has no quorum: another may
                errors.append(f"{url}: 503 {r.text[:200]}")
                continue
            # the manager that answered goes first next time
            self.urls.remove(url)
            self.urls.insert(0, url)
            try:
                data = r.json() if r.content else None
            except ValueError:   # not the API's JSON (a server error page): show its text
                data = r.text[:500]
            if r.status_code not in ok_statuses:
                raise ApiError(r.status_code, data)
            self.last_nb_cfg = int(r.headers.get("x-muxlab-nb-cfg", 0) or 0)
            return data
        raise MuxlabError("no manager answered: " + "; ".join(errors))

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def load_balancers(self) -> dict[str, dict]:
        return {lb["name"]: lb for lb in self.get("/loadBalancers")["value"]}

    def wait_synced(self, agents: list[str], timeout: float = 30.0, nb_cfg: int | None = None) -> float:
        """Until every named agent has applied configuration `nb_cfg` (default: the current
        one); returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            s = self.get("/sync")
            want = nb_cfg if nb_cfg is not None else s["nb_cfg"]
            if all(s["agents"].get(a, -1) >= want for a in agents):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                late = {a: s["agents"].get(a) for a in agents if s["agents"].get(a, -1) < want}
                raise MuxlabError(f"agents did not apply configuration {want} within {timeout:.0f} s: {late}")
            time.sleep(0.05)
