"""Client of the managers' northbound API, for the CLI, tests and benchmarks. It tries each
manager in turn, so the API goes on while any manager answers."""
from __future__ import annotations

import time
from typing import Any

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


class Api:
    def __init__(self, urls: list[str], timeout: float = 15.0):
        if not urls:
            raise MuxlabError("no manager is running in this lab")
        self.urls = list(urls)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, ok_statuses=(200, 201)) -> Any:
        errors = []
        for url in list(self.urls):
            try:
                r = httpx.request(method, url + path, json=body, timeout=httpx.Timeout(self.timeout, connect=1.0))
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
