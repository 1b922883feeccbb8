"""How a Load_Balancer row of the managers' OVSDB is read, in one place: the managers'
store and every agent apply this rule, so they agree on which rows count. Pure.

The API only writes rows it validated, but a row can be written around it (ovsdb-client by
hand, an older manager). Such a row must not break readers: a row is *invalid*, skipped and
reported as {name, reason}, when

  - its name is not an Azure resource name (muxlab.lb.azure.NAME_RULE);
  - its spec is not JSON, has a key twice, or is not a LoadBalancer (pydantic);
  - its allocations are not a JSON object;
  - with a fabric: check.check refuses it among the valid rows (a clash between two rows
    is blamed on the one check reports, the later by name, as a write would have been).

Everything else is read as the API wrote it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydantic import ValidationError

from ..fabric.lab import Lab, ModelError
from .azure import NAME_RULE, LoadBalancer, errors_of, is_azure_name, loads_unique
from .check import check

MAX_REASON = 400   # characters of a reason (the first problems, then "...")


@dataclass(frozen=True)
class Rows:
    """The rows read: the valid load balancers with their allocations, and the invalid ones."""
    key: tuple = ()
    lbs: dict[str, LoadBalancer] = field(default_factory=dict)
    allocations: dict[str, dict] = field(default_factory=dict)
    invalid: list[dict] = field(default_factory=list)   # [{"name", "reason"}] by name

    def invalid_reason(self, name: str) -> str | None:
        return next((i["reason"] for i in self.invalid if i["name"] == name), None)


def _problems(problems: list[tuple[str, Any, str]]) -> str:
    text = "; ".join(f"{p}: {v!r}: {m}" if v is not None else f"{p}: {m}" for p, v, m in problems)
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def parse_row(name: Any, spec: Any, allocations: Any) -> tuple[LoadBalancer, dict]:
    """One row on its own: (load balancer, allocations), or ValueError saying why not."""
    if not is_azure_name(name):
        raise ValueError(f"name {name!r} {NAME_RULE}")
    try:
        raw = loads_unique(spec)
    except ModelError as exc:
        raise ValueError(f"spec: {_problems(exc.problems)}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spec is not JSON: {exc}") from None
    try:
        lb = LoadBalancer.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"spec is not a valid load balancer: {_problems(errors_of(exc))}") from None
    try:
        alloc = json.loads(allocations or "{}")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"allocations are not JSON: {exc}") from None
    if not isinstance(alloc, dict):
        raise ValueError(f"allocations are not a JSON object: {allocations!r}"[:MAX_REASON])
    return lb, alloc


def _owner(path: str, names: list[str]) -> str | None:
    """Which load balancer a check problem belongs to (paths start with its name; names may
    hold dots, so the longest match wins)."""
    for n in names:   # longest first
        if path == n or path.startswith(n + ".") or path.startswith(n + "["):
            return n
    return None


def row_key(rows: Iterable[tuple[Any, Any, Any]]) -> tuple:
    """The table's contents as one value, (name, spec, allocations) of every row by name:
    what a reader compares to know a row changed, and what the managers digest."""
    return tuple(sorted(rows, key=lambda r: str(r[0])))


def read_rows(rows: Iterable[tuple[Any, Any, Any]], fabric: Lab | None = None) -> Rows:
    """(name, spec, allocations) of every row -> Rows (see the module's rule)."""
    key = row_key(rows)
    lbs: dict[str, LoadBalancer] = {}
    allocations: dict[str, dict] = {}
    invalid: dict[str, str] = {}
    for name, spec, alloc in key:
        if name in lbs or name in invalid:
            invalid[name] = "another row has this name"
            lbs.pop(name, None)
            continue
        try:
            lbs[name], allocations[name] = parse_row(name, spec, alloc)
        except ValueError as exc:
            invalid[name] = str(exc)
    if fabric is not None:
        while lbs:   # until the rest passes: dropping a row can only remove problems
            names = sorted(lbs, key=len, reverse=True)
            blamed: dict[str, list] = {}
            for p in check(lbs, fabric):
                owner = _owner(p[0], names)
                if owner is not None:
                    blamed.setdefault(owner, []).append(p)
            if not blamed:
                break
            for n, problems in blamed.items():
                invalid[n] = f"refused by the checks against the fabric: {_problems(problems)}"
                del lbs[n]
    allocations = {n: a for n, a in allocations.items() if n in lbs}
    return Rows(key, lbs, allocations, [{"name": n, "reason": r} for n, r in sorted(invalid.items(), key=lambda kv: str(kv[0]))])


class RowReader:
    """read_rows over IDL rows (.name, .spec, .allocations), again only when a row changed."""

    def __init__(self, fabric: Lab | None = None):
        self.fabric = fabric
        self.last = Rows()

    def read(self, rows: Iterable[Any]) -> Rows:
        key = row_key((r.name, r.spec, r.allocations) for r in rows)
        if key != self.last.key:
            self.last = read_rows(key, self.fabric)
        return self.last
