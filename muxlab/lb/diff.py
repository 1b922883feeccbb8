"""What `muxlab apply` would change: a readable difference between two sets of load
balancers. Pure. Only `properties` count (the envelope of a REST body or an ARM resource,
`id`, `location`, `sku`, ..., changes nothing). Lists of named children (pools, rules, ...)
are compared by name, so a reordered list is no change and a renamed rule is one removal
and one addition."""
from __future__ import annotations

from typing import Any

from .azure import LoadBalancer, canonical


def _keyed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _keyed(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return {f"[{v['name']}]": _keyed({k: x for k, x in v.items() if k != "name"}) for v in value}
    return value


def _walk(path: str, old: Any, new: Any, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{path}{k}" if k.startswith("[") else f"{path}.{k}"
            if k not in old:
                out.append(f"+ {sub}: {_short(new[k])}")
            elif k not in new:
                out.append(f"- {sub}")
            else:
                _walk(sub, old[k], new[k], out)
    elif old != new:
        out.append(f"~ {path}: {_short(old)} -> {_short(new)}")


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(k for k in v) + "}" if v else "{}"
    return repr(v) if isinstance(v, str) else str(v)


def diff(old: dict[str, LoadBalancer], new: dict[str, LoadBalancer], prune: bool = False) -> list[str]:
    """Lines '+ path: value', '- path', '~ path: old -> new' for the load balancers in `new`
    (and, with prune, the removal of those only in `old`)."""
    out: list[str] = []
    for name in sorted(set(new) | (set(old) if prune else set())):
        if name not in new:
            out.append(f"- load balancer {name}")
        elif name not in old:
            out.append(f"+ load balancer {name}")
        else:
            _walk(f"{name}.properties", _keyed(canonical(old[name])["properties"]),
                  _keyed(canonical(new[name])["properties"]), out)
    return out
