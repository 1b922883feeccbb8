"""A faster drop-in for the JSON parser of the OVS Python library (`ovs.json.Parser`).

Why: the `ovs` package from PyPI parses JSON-RPC in pure Python, one character at a time,
unless it was built against libopenvswitch (its C extension `ovs._json`), which Debian does
not package. Applying 2000 load balancers puts ~18000 southbound rows in one update, and
every agent and manager then spent about 16 s of CPU in that lexer (cProfile of the managers'
write: 16.3 of 30 s in ovs/json.py). This parser finds where a message ends with one regular
expression (only quotes, backslashes and brackets matter for that) and decodes it with the
standard library's C-accelerated `json`. Same interface: feed() returns how many characters
it consumed, is_done(), finish() returns the value or an error string.
"""
from __future__ import annotations

import json
import re

import ovs.json

_STRUCTURE = re.compile(r'["\\{}\[\]]')
_OPEN, _CLOSE = "{[", "}]"


class Parser:
    def __init__(self, check_trailer: bool = False):
        self.check_trailer = check_trailer
        self.parts: list[str] = []
        self.depth = 0
        self.in_string = False
        self.escaped_next = False    # a backslash ended the last chunk inside a string
        self.started = False
        self.scalar = False          # a top-level value that is not an object or array
        self.done = False
        self.value = None
        self.error: str | None = None

    def feed(self, s: str) -> int:
        if self.done:
            return 0
        start = 0
        if not self.started:
            stripped = s.lstrip()
            if not stripped:
                return len(s)
            start = len(s) - len(stripped)
            self.started = True
            self.scalar = stripped[0] not in _OPEN
        if self.scalar:   # not a JSON-RPC message: take everything, decode at finish()
            self.parts.append(s[start:])
            return len(s)
        skip = start if self.escaped_next else -1
        self.escaped_next = False
        depth, in_string = self.depth, self.in_string
        for m in _STRUCTURE.finditer(s, start):
            i = m.start()
            if i == skip:
                continue
            c = s[i]
            if in_string:
                if c == "\\":
                    skip = i + 1
                    if skip == len(s):
                        self.escaped_next = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in _OPEN:
                depth += 1
            elif c in _CLOSE:
                depth -= 1
                if depth == 0:
                    self.parts.append(s[start:i + 1])
                    self._decode()
                    return i + 1
        self.depth, self.in_string = depth, in_string
        self.parts.append(s[start:])
        return len(s)

    def _decode(self) -> None:
        self.done = True
        try:
            self.value = json.loads("".join(self.parts))
        except ValueError as exc:
            self.error = f"syntax error: {exc}"
        self.parts = []

    def is_done(self) -> bool:
        return self.done

    def finish(self):
        if not self.done:
            if not self.started:
                return "empty input stream"
            if not self.scalar:
                return "unexpected end of input"
            self._decode()
        return self.error if self.error is not None else self.value


def install() -> None:
    """Make the OVS library (IDL, JSON-RPC, schema files) parse with this Parser, unless it
    has its own C parser."""
    if ovs.json.PARSER != ovs.json.PARSER_C:
        ovs.json.Parser = Parser
