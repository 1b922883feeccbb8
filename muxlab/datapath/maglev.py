"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), as a pure function.

Every MUX calls `lookup_table` with the same backends and size and gets the same table:
the permutations come from a keyed hash of the backend's name (never Python's salted
`hash()`), so the result is identical across processes, machines and restarts.

The kernel does the per-packet part: nftables computes jhash(5-tuple) mod size and looks
the bucket up in this table (see mux/datapath.py).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Mapping, Sequence


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def smallest_prime_at_least(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def _h(data: str, salt: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8, key=salt).digest(), "big")


def permutation(backend: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's preference list: slot j is (offset + j*skip) mod size."""
    offset = _h(backend, b"maglev-offset") % size
    skip = _h(backend, b"maglev-skip") % (size - 1) + 1
    return offset, skip


def lookup_table(backends: Sequence[str], size: int, weights: Mapping[str, int] | None = None) -> list[str | None]:
    """Fill a table of `size` buckets (a prime) with backend names.

    Backends take turns claiming their next preferred free bucket; a backend with weight w
    takes w turns per round, so it ends up with about w/sum(weights) of the buckets.
    An empty backend list gives a table of None (nothing to send to)."""
    if not is_prime(size):
        raise ValueError(f"Maglev table size must be prime, got {size}")
    names = sorted(set(backends))  # order-independent: the same set gives the same table
    if len(names) != len(backends):
        raise ValueError(f"duplicate backends in {list(backends)}")
    weights = dict(weights or {})
    for name, w in weights.items():
        if name not in names or not isinstance(w, int) or w < 0:
            raise ValueError(f"weight {name}={w!r}: must be a non-negative integer for a listed backend")
    names = [n for n in names if weights.get(n, 1) > 0]
    table: list[str | None] = [None] * size
    if not names:
        return table
    if len(names) > size:
        raise ValueError(f"table size {size} is smaller than the {len(names)} backends")
    perms = [permutation(n, size) for n in names]
    nxt = [0] * len(names)
    turns = [weights.get(n, 1) for n in names]
    filled = 0
    while True:
        for i, name in enumerate(names):
            offset, skip = perms[i]
            for _ in range(turns[i]):
                c = (offset + nxt[i] * skip) % size
                while table[c] is not None:
                    nxt[i] += 1
                    c = (offset + nxt[i] * skip) % size
                table[c] = name
                nxt[i] += 1
                filled += 1
                if filled == size:
                    return table


def shares(table: Sequence[str | None]) -> dict[str, float]:
    """Fraction of buckets each backend owns."""
    counts = Counter(b for b in table if b is not None)
    return {b: n / len(table) for b, n in sorted(counts.items())}


def moved(before: Sequence[str | None], after: Sequence[str | None]) -> float:
    """Fraction of buckets whose backend changed."""
    if len(before) != len(after):
        raise ValueError("tables differ in size")
    return sum(1 for a, b in zip(before, after) if a != b) / len(before)
