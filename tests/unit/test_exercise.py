"""Workshop exercises: every folder loads, names real nodes and files, and the judging of a
measurement says what missed."""
import shlex
from pathlib import Path

import pytest

from muxlab.fabric.lab import load_lab
from muxlab.workshop.exercise import Exercise, ExerciseError, judge, load_exercises

REPO = Path(__file__).resolve().parents[2]
EXERCISES = load_exercises(REPO / "workshops")


def test_at_least_twelve_exercises_numbered_in_order():
    assert len(EXERCISES) >= 12
    assert [e.number for e in EXERCISES] == sorted(e.number for e in EXERCISES)


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.slug)
def test_exercise_names_real_nodes_and_files(ex):
    lab = load_lab(REPO / "containerlab" / (ex.lab or "") / "lab.yml")
    nodes = set(lab.node_names())
    steps = ex.start + ex.solution + ex.reset + [s for c in ex.checks for s in c.before + c.during]
    for step in steps:
        if step.exec:
            assert step.exec["node"] in nodes, step
        if step.muxlab:
            argv = shlex.split(step.muxlab)
            if argv[0] == "apply":
                assert (ex.folder / argv[1]).is_file(), step
            if argv[0] in ("fail", "heal", "drain", "undrain"):
                assert argv[1] in nodes, step
    for c in ex.checks:
        if "node" in c.args:
            assert c.args["node"] in nodes, c.name
    readme = (ex.folder / "README.md").read_text()
    for heading in ("**Goal:**", "**Seed:**", "## Steps", "## What to observe", "## Questions"):
        assert heading in readme, f"{ex.slug}/README.md lacks {heading}"


def test_the_parser_accepts_every_muxlab_step():
    from muxlab.cli.main import build_parser
    for ex in EXERCISES:
        for step in ex.start + ex.solution + ex.reset + [s for c in ex.checks for s in c.before + c.during]:
            if step.muxlab:
                build_parser().parse_args([*shlex.split(step.muxlab), "-t", "x", "--name", "y"])


def test_judge_names_each_miss():
    result = {"failures": 2, "dips": ["vm1", "vm3"], "by_vm": {"vm3": {"ports": 8}}}
    assert judge(result, {"failures": 0}) == ["failures: have 2, want eq 0"]
    assert judge(result, {"dips": {"excludes": "vm3"}}) == ["dips: have ['vm1', 'vm3'], want excludes 'vm3'"]
    assert judge(result, {"by_vm.vm3.ports": {"min": 8, "max": 64}, "dips": {"subset": ["vm1", "vm3", "vm5"]}}) == []
    assert judge(result, {"nothing": 1}) == ["nothing: not measured"]


def test_a_malformed_exercise_names_file_and_field(tmp_path):
    (tmp_path / "01-bad").mkdir()
    (tmp_path / "01-bad" / "README.md").write_text("x")
    (tmp_path / "01-bad" / "exercise.yml").write_text(
        "title: t\nseed: s\nminutes: 1\nhints: [h]\nchecks:\n  - {name: c, kind: traffic, expect: {x: {around: 1}}, pass: p, fail: f}\n")
    with pytest.raises(ExerciseError, match=r"01-bad/exercise.yml: checks.0: .*unknown matcher \['around'\]"):
        load_exercises(tmp_path)
    (tmp_path / "01-bad" / "exercise.yml").write_text("title: t\nseed: s\nminutes: 1\nhints: [h]\nchecks: []\n")
    with pytest.raises(ExerciseError, match="checks"):
        load_exercises(tmp_path)


def test_an_exercise_that_is_not_yaml_or_has_a_key_twice_names_file_and_line(tmp_path):
    (tmp_path / "01-bad").mkdir()
    (tmp_path / "01-bad" / "README.md").write_text("x")
    (tmp_path / "01-bad" / "exercise.yml").write_text("title: t\nseed: [s\nminutes: 1\n")
    with pytest.raises(ExerciseError, match=r"01-bad/exercise.yml: line \d+: not valid YAML"):
        load_exercises(tmp_path)
    (tmp_path / "01-bad" / "exercise.yml").write_text("title: t\nseed: s\ntitle: u\nminutes: 1\n")
    with pytest.raises(ExerciseError, match=r"01-bad/exercise.yml: \(document\): duplicate key 'title' \(line 3; first at line 1\)"):
        load_exercises(tmp_path)


def test_a_step_is_exactly_one_action():
    with pytest.raises(ValueError, match="exactly one"):
        Exercise.model_validate({"title": "t", "seed": "s", "minutes": 1, "hints": ["h"], "start": [{"wait": 1, "muxlab": "x"}],
                                 "checks": [{"name": "c", "kind": "bgp", "expect": {}, "pass": "p", "fail": "f"}]})
