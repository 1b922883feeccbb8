"""A workshop exercise: what `workshops/NN-name/exercise.yml` may say, and how a check's
measured result is judged against what it expects. Pure logic; the runner is muxlab/cli/workshop.py.

In the spirit of netlab's `validate:` blocks: each check names a built-in measurement (or a
command), what it should find, text for the learner on pass and on fail, and how long to
retry before failing. Steps (start, solution, reset, and a check's `before`/`during`) are
the commands a learner would type: `muxlab ...` on the operator's machine, or a shell
command inside a node.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..fabric.lab import NAME_RE, NAME_RULE
from ..fabric.yamldoc import load_unique


class ExerciseError(ValueError):
    pass


class Step(BaseModel):
    """One of: `muxlab: "fail mux2 --mode kill"`, `exec: {node, cmd}`, `wait: 2`."""
    model_config = ConfigDict(extra="forbid")
    muxlab: str | None = None
    exec: dict[str, str] | None = None
    wait: float | None = None
    check: bool = True  # False: a failing step does not stop the sequence (reset steps)

    @model_validator(mode="after")
    def one_action(self):
        given = [k for k in ("muxlab", "exec", "wait") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step is exactly one of muxlab, exec, wait (got {given or 'none'})")
        if self.exec is not None and set(self.exec) != {"node", "cmd"}:
            raise ValueError(f"exec: needs node and cmd (got {sorted(self.exec)})")
        return self

    def describe(self) -> str:
        if self.muxlab is not None:
            return f"muxlab {self.muxlab}"
        if self.exec is not None:
            return f"{self.exec['node']}$ {self.exec['cmd']}"
        return f"wait {self.wait:g} s"


KINDS = ("traffic", "nexthops", "bgp", "health", "tables", "dsr", "hold", "snat", "nat", "status", "managers", "command")


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal[KINDS]  # type: ignore[valid-type]
    args: dict[str, Any] = Field(default_factory=dict)
    expect: dict[str, Any]
    # learner-facing text: what passing means, and what to look at when it fails
    pass_: str = Field(alias="pass")
    fail: str
    timeout: float = 20.0   # retry the measurement until it passes or this many seconds pass
    interval: float = 1.0
    before: list[Step] = Field(default_factory=list)  # run once before measuring
    during: list[Step] = Field(default_factory=list)  # hold only: steps run while connections are held

    @model_validator(mode="after")
    def matchers_known(self):
        for field, m in self.expect.items():
            if isinstance(m, dict):
                bad = set(m) - set(MATCHERS)
                if bad:
                    raise ValueError(f"expect.{field}: unknown matcher {sorted(bad)} (known: {', '.join(MATCHERS)})")
        if self.during and self.kind != "hold":
            raise ValueError(f"during: only a hold check runs steps while it measures (this is {self.kind})")
        return self


class Exercise(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    seed: str                      # which source article (and section) it comes from
    minutes: int                   # instructor's time budget
    lab: str | None = None         # another lab folder under containerlab/ (default: the default lab)

    @field_validator("lab")
    @classmethod
    def _lab_is_a_name(cls, v: str | None) -> str | None:
        # it becomes a folder and a lab name: the fabric's own name rule, so never '../x'
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"{v!r}: {NAME_RULE}")
        return v
    hints: list[str] = Field(min_length=1)
    start: list[Step] = Field(default_factory=list)
    solution: list[Step] = Field(default_factory=list)
    reset: list[Step] = Field(default_factory=list)
    checks: list[Check] = Field(min_length=1)
    folder: Path = Path(".")       # set by the loader: workshops/NN-name

    @property
    def slug(self) -> str:
        return self.folder.name

    @property
    def number(self) -> int:
        return int(self.slug[:2])


def load_exercises(root: Path) -> list[Exercise]:
    """Every `NN-name/exercise.yml` under `root`, in order; a malformed one is an error naming
    its file and field (no exercise half-loaded)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and re.match(r"^\d\d-", p.name)):
        path = folder / "exercise.yml"
        if not path.is_file():
            raise ExerciseError(f"{folder}: no exercise.yml")
        if not (folder / "README.md").is_file():
            raise ExerciseError(f"{folder}: no README.md")
        try:
            raw, problems = load_unique(path.read_text())
        except yaml.YAMLError as exc:   # the file, the line and what is wrong; no traceback
            mark = getattr(exc, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark else ""
            raise ExerciseError(f"{path}: {line}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        if problems:
            where, key, msg = problems[0]
            raise ExerciseError(f"{path}: {where}: {msg}")
        try:
            ex = Exercise.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ExerciseError(f"{path}: {where}: {err['msg']}") from None
        ex.folder = folder
        out.append(ex)
    numbers = [e.number for e in out]
    if len(set(numbers)) != len(numbers):
        raise ExerciseError(f"{root}: two exercises share a number ({numbers})")
    return out


def find(exercises: list[Exercise], which: str) -> Exercise:
    for e in exercises:
        if which in (str(e.number), f"{e.number:02d}", e.slug, e.slug[3:]):
            return e
    raise ExerciseError(f"exercise {which!r}: no such exercise (have {', '.join(e.slug for e in exercises)})")


# --- judging a measurement ------------------------------------------------------------

def _lookup(result: dict, field: str) -> Any:
    value: Any = result
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(field)
        value = value[part]
    return value


def _as_set(v: Any) -> set:
    return set(v) if isinstance(v, (list, tuple, set, dict)) else {v}


MATCHERS = {
    "eq": lambda have, want: have == want,
    "ne": lambda have, want: have != want,
    "min": lambda have, want: have >= want,
    "max": lambda have, want: have <= want,
    "contains": lambda have, want: all(w in have for w in (want if isinstance(want, list) else [want])),
    "excludes": lambda have, want: not any(w in have for w in (want if isinstance(want, list) else [want])),
    "subset": lambda have, want: _as_set(have) <= _as_set(want),
    "matches": lambda have, want: re.search(want, str(have)) is not None,
}


def judge(result: dict, expect: dict[str, Any]) -> list[str]:
    """The expectations a result misses, each as 'field: have X, want OP Y'; empty: passed."""
    misses = []
    for field, want in expect.items():
        try:
            have = _lookup(result, field)
        except KeyError:
            misses.append(f"{field}: not measured")
            continue
        ops = want if isinstance(want, dict) else {"eq": want}
        for op, value in ops.items():
            try:
                ok = MATCHERS[op](have, value)
            except TypeError:
                ok = False
            if not ok:
                misses.append(f"{field}: have {have!r}, want {op} {value!r}")
    return misses
