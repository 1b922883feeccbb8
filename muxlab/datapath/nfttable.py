"""One nftables table as data: its named objects, its sets and maps with their elements, and
its chains. Pure: it only writes nft scripts.

An agent's first load replaces the whole table in one transaction (`render`). After that,
`update` writes the difference from what the kernel already holds, again as one
transaction: a probe flap becomes a few `delete element` / `add element` lines for the
Maglev buckets that moved, not a re-load of every VIP, map and chain (see
docs/datapath.md, "Updates").
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Set:
    """A set (values all None) or a map: `spec` is its declaration ("type ipv4_addr;"),
    `elements` key -> value as nft writes them."""
    kind: str                                   # "set" | "map"
    spec: str
    elements: dict[str, str | None] = field(default_factory=dict, hash=False)

    @property
    def interval(self) -> bool:
        return "interval" in self.spec

    def element_list(self, keys=None) -> str:
        keys = self.elements if keys is None else keys
        return ", ".join(k if self.elements[k] is None else f"{k} : {self.elements[k]}" for k in keys)


@dataclass(frozen=True)
class Chain:
    """`hook` is a base chain's "type ... hook ... priority ...; policy ...;" ("" for a chain
    reached by jump or goto)."""
    hook: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    family: str
    name: str
    objects: dict[str, str] = field(default_factory=dict, hash=False)   # "counter x" -> its declaration
    sets: dict[str, Set] = field(default_factory=dict, hash=False)
    chains: dict[str, Chain] = field(default_factory=dict, hash=False)

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"

    def render(self) -> str:
        """The whole table, replacing whatever the kernel holds under its name: create, then
        delete, then define, in one transaction, so there is never a moment without rules
        (and conntrack keeps its marks)."""
        return f"table {self.ref}\ndelete table {self.ref}\n" + self._block(self.objects, self.sets, self.chains)

    def _block(self, objects: dict[str, str], sets: dict[str, Set], chains: dict[str, Chain]) -> str:
        lines = [f"table {self.ref} {{"]
        lines += [f"  {decl}" for decl in objects.values()]
        for name, s in sets.items():
            elements = f" elements = {{ {s.element_list()} }};" if s.elements else ""
            lines.append(f"  {s.kind} {name} {{ {s.spec}{elements} }}")
        for name, chain in chains.items():
            lines.append(f"  chain {name} {{")
            lines += [f"    {chain.hook}"] if chain.hook else []
            lines += [f"    {r}" for r in chain.rules]
            lines.append("  }")
        return "\n".join(lines + ["}"]) + "\n"


def update(old: Table, new: Table) -> str | None:
    """An nft script turning `old` (what the kernel holds) into `new` in one transaction,
    touching only what differs: "" when nothing does; None when only `new.render()` can do
    it (a set's type or a chain's hook changed: nft cannot alter those in place).

    The order matters inside the transaction: elements are deleted before they are re-added
    with a new value, new chains exist before a verdict map points at them, and a chain or
    set is deleted only after whatever referred to it is gone."""
    if old.ref != new.ref:
        return None
    both_sets = old.sets.keys() & new.sets.keys()
    both_chains = old.chains.keys() & new.chains.keys()
    if any(old.objects[k] != new.objects[k] for k in old.objects.keys() & new.objects.keys()) \
            or any((old.sets[n].kind, old.sets[n].spec) != (new.sets[n].kind, new.sets[n].spec) for n in both_sets) \
            or any(old.chains[n].hook != new.chains[n].hook for n in both_chains):
        return None
    t = new.ref
    head, adds = [], []
    for name in sorted(both_sets):
        o, n = old.sets[name], new.sets[name]
        if o.elements == n.elements:
            continue
        if n.interval:
            # deleting one range of a concatenated interval map is fragile in nft 1.0.x:
            # re-fill the whole (small, rarely changing) map instead
            head.append(f"flush {n.kind} {t} {name}")
            changed = list(n.elements)
        else:
            gone = [k for k in o.elements if k not in n.elements or o.elements[k] != n.elements[k]]
            if gone:
                head.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
            changed = [k for k in n.elements if k not in o.elements or o.elements[k] != n.elements[k]]
        if changed:
            adds.append(f"add element {t} {name} {{ {n.element_list(changed)} }}")
    rewritten = {n: new.chains[n] for n in sorted(both_chains) if old.chains[n].rules != new.chains[n].rules}
    head += [f"flush chain {t} {n}" for n in rewritten]
    created = {n: c for n, c in new.chains.items() if n not in old.chains}
    objects = {k: v for k, v in new.objects.items() if k not in old.objects}
    sets = {n: s for n, s in new.sets.items() if n not in old.sets}
    if objects or sets or created or rewritten:
        head.append(new._block(objects, sets, {**created, **rewritten}).rstrip("\n"))
    tail = [f"delete chain {t} {n}" for n in old.chains if n not in new.chains]
    tail += [f"delete {s.kind} {t} {n}" for n, s in old.sets.items() if n not in new.sets]
    tail += [f"delete {k.rsplit(' ', 1)[0]} {t} {k.rsplit(' ', 1)[1]}" for k in old.objects if k not in new.objects]
    script = head + adds + tail
    return "\n".join(script) + "\n" if script else ""
