"""`muxlab generate`: any size within the addressing plan, valid for the lab model, the load
balancer checks and containerlab's own schema checks where containerlab is installed."""
import shutil
import subprocess

import pytest

from muxlab.cli.lab import render_folder
from muxlab.fabric.generate import GenerateError, generate
from muxlab.fabric.lab import load_lab
from muxlab.lb.azure import load_document
from muxlab.lb.check import check


def write(tmp_path, **kw):
    args = dict(muxes=3, hosts=3, vms_per_host=2, clients=1, lbs=1) | kw
    for rel, text in generate("gen", **args).items():
        (tmp_path / rel).write_text(text)
    render_folder(tmp_path)
    return load_lab(tmp_path / "lab.yml"), load_document(tmp_path / "loadbalancers.yml")


@pytest.mark.parametrize("size", [dict(), dict(muxes=8, hosts=20, vms_per_host=4, clients=4, lbs=300),
                                  dict(muxes=1, hosts=1, vms_per_host=1, lbs=2000)])
def test_generated_labs_are_valid(tmp_path, size):
    fabric, lbs = write(tmp_path, **size)
    args = dict(muxes=3, hosts=3, vms_per_host=2, clients=1, lbs=1) | size
    assert (len(fabric.muxes), len(fabric.hosts), len(fabric.vms)) == (args["muxes"], args["hosts"],
                                                                       args["hosts"] * args["vms_per_host"])
    assert len(lbs) == args["lbs"] and check(lbs, fabric) == []
    assert (tmp_path / "muxlab.clab.yml").exists()


@pytest.mark.skipif(not shutil.which("containerlab"), reason="containerlab not installed")
def test_containerlab_validates_the_generated_topology(tmp_path):
    write(tmp_path, muxes=4, hosts=5, vms_per_host=2, clients=2, lbs=10)
    proc = subprocess.run(["containerlab", "validate", "-t", str(tmp_path / "muxlab.clab.yml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Topology is valid" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_beyond_the_plan_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(GenerateError, match="--muxes 200"):
        generate("x", 200, 1, 1, 1, 1)
    with pytest.raises(GenerateError, match="--lab-name 'My_Lab'"):
        generate("My_Lab", 3, 3, 2, 1, 1)


def test_split_places_every_node_once_and_stitches_both_ends(tmp_path):
    import yaml

    from muxlab.fabric.generate import split_topology
    write(tmp_path, muxes=3, hosts=5, vms_per_host=2, clients=2, lbs=3)
    topo = yaml.safe_load((tmp_path / "muxlab.clab.yml").read_text())
    parts = split_topology(topo, ["192.168.100.1", "192.168.100.2", "192.168.100.3"])
    placed = [n for p in parts for n in p["topology"]["nodes"]]
    assert sorted(placed) == sorted(topo["topology"]["nodes"])
    stitched = [(p["name"], link["vni"], link["remote"]) for p in parts for link in p["topology"]["links"]
                if link.get("type") == "vxlan-stitch"]
    by_vni = {}
    for name, vni, remote in stitched:
        by_vni.setdefault(vni, []).append(name)
    assert by_vni and all(len(ends) == 2 and ends[0] != ends[1] for ends in by_vni.values())
    # a VM stays on its host's machine: only edge<->host links cross
    assert len(by_vni) == 3     # hosts 2, 3 and 5 left machine 1 (round-robin over 3)
    if shutil.which("containerlab"):
        for i, part in enumerate(parts, start=1):
            path = tmp_path / f"muxlab.m{i}.clab.yml"
            path.write_text(yaml.safe_dump(part, sort_keys=False))
            proc = subprocess.run(["containerlab", "validate", "-t", str(path)], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
