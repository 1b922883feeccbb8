"""CLI errors that need no containers: a bad model is refused before anything is deployed."""
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.unit.conftest import REPO


def muxlab(*args):
    return subprocess.run([sys.executable, "-m", "muxlab", *args], capture_output=True, text=True, timeout=60)


def lab_folder(tmp_path, mutate):
    shutil.copy(REPO / "containerlab" / "muxlab.clab.yml", tmp_path / "muxlab.clab.yml")
    raw = yaml.safe_load((REPO / "containerlab" / "lab.yml").read_text())
    mutate(raw)
    (tmp_path / "lab.yml").write_text(yaml.safe_dump(raw))
    return tmp_path / "muxlab.clab.yml"


def test_up_with_bad_fabric_names_field_and_deploys_nothing(tmp_path):
    topo = lab_folder(tmp_path, lambda raw: raw["muxes"]["mux2"].update(underlay="10.0.1.0/31"))
    p = muxlab("up", "--topology", str(topo), "--name", "muxlab-never")
    assert p.returncode == 2
    assert "muxes.mux2.underlay: '10.0.1.0/31': overlaps 10.0.1.0/31 used at muxes.mux1.underlay" in p.stderr
    assert not (tmp_path / "clab-muxlab-never").exists() and not (tmp_path / ".labs").exists()


def test_apply_refuses_a_malformed_file_before_talking_to_anybody(tmp_path):
    bad = tmp_path / "lbs.yml"
    bad.write_text("loadBalancers:\n  web:\n    properties:\n      frontendIPConfigurations: []\n      bogus: 1\n")
    p = muxlab("apply", str(bad), "--yes", "--name", "muxlab-never")
    assert p.returncode == 2
    assert "loadBalancers.web.properties.bogus: 1: unknown field" in p.stderr
    assert "loadBalancers.web.properties.frontendIPConfigurations: []: List should have at least 1 item" in p.stderr


def test_render_refuses_bad_model_and_writes_nothing(tmp_path):
    topo = lab_folder(tmp_path, lambda raw: raw["vms"]["vm1"].update(ip="300.1.1.1"))
    before = topo.read_text()
    p = muxlab("render", "--topology", str(topo))
    assert p.returncode == 2 and "vms.vm1.ip: '300.1.1.1'" in p.stderr
    assert topo.read_text() == before and not (tmp_path / "configs").exists()


def test_missing_topology_and_model(tmp_path):
    p = muxlab("status", "--topology", str(tmp_path / "nope.clab.yml"))
    assert p.returncode == 1 and "no such file" in p.stderr
    (tmp_path / "x.clab.yml").write_text("name: x\n")
    p = muxlab("status", "--topology", str(tmp_path / "x.clab.yml"))
    assert p.returncode == 1 and "lab.yml is missing" in p.stderr


def test_fail_refuses_unknown_mode():
    p = muxlab("fail", "mux1", "--mode", "explode")
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_mtu_without_an_argument_shows_and_a_bad_remedy_is_named():
    """`muxlab mtu` as the README shows it parses (it used to fail: invalid choice: []), and
    a remedy that does not exist is refused by name before anything is asked of a lab."""
    from muxlab.cli.main import build_parser, cmd_mtu
    from muxlab.errors import MuxlabError
    assert build_parser().parse_args(["mtu"]).remedies == []
    for args, bad in ((["mtu", "bogus"], "'bogus'"), (["mtu", "none", "icmp"], "'none'")):
        with pytest.raises(MuxlabError, match=bad):
            cmd_mtu(build_parser().parse_args(args))
