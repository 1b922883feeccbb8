"""Seed 004: encapsulation costs bytes. On a lab whose underlay is 1500 bytes, a client's
full-size packets with DF set cannot cross the MUX; with no ICMP "fragmentation needed"
reaching the client the upload stalls. Each remedy alone makes it work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from muxlab.cli import lab as labmod

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "containerlab" / "mtu1500" / "muxlab.clab.yml"
NAME = "muxlab-e2e-mtu"
UPLOAD = """
import socket, sys
s = socket.create_connection(("203.0.113.10", 80), timeout=5)
s.settimeout(6)
n = 300000
try:
    s.sendall(b"SINK %d\\n" % n + b"x" * n)
    print(s.recv(100).decode().strip())
except OSError as exc:
    print("stalled: " + type(exc).__name__)
"""


def muxlab(*args, check=True, timeout=600):
    p = subprocess.run([sys.executable, "-m", "muxlab", *args, "-t", str(TOPOLOGY), "--name", NAME],
                       capture_output=True, text=True, timeout=timeout)
    assert not check or p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def mtu_lab(lab):   # after the main lab is up: one deployment at a time
    muxlab("down", check=False)
    try:
        muxlab("up", "--wait", "240")
        ref = labmod.resolve(TOPOLOGY, NAME)
        labmod.docker_exec(ref, "client1", ["sh", "-c", f"cat > /tmp/upload.py <<'EOF'\n{UPLOAD}\nEOF"])
        yield ref
    finally:
        muxlab("down", check=False)


def upload(ref):
    # a fresh route cache each time: an ICMP learnt earlier would hide the next case
    labmod.docker_exec(ref, "client1", ["sh", "-c", "ip route flush cache"], check=False)
    return labmod.docker_exec(ref, "client1", ["python", "/tmp/upload.py"], timeout=60).stdout.strip()


def counter(ref, name):
    """The counter summed over the MUXes: the edge hashes the upload to either (ECMP on the 5-tuple)."""
    total = 0
    for m in ref.lab.muxes:
        out = labmod.docker_exec(ref, m.name, ["nft", "-j", "list", "counter", "ip", "muxlab_mux", name]).stdout
        total += json.loads(out)["nftables"][1]["counter"]["packets"]
    return total


def test_black_hole_then_each_remedy(mtu_lab):
    ref = mtu_lab
    assert "1450" in labmod.docker_exec(ref, "mux1", ["cat", "/sys/class/net/vxlan4242/mtu"]).stdout
    suppressed = counter(ref, "icmp_frag_needed_suppressed")
    stalled = upload(ref)
    assert stalled.startswith("stalled"), stalled
    # the MUX did say "fragmentation needed"; the black hole is that nobody heard it
    assert counter(ref, "icmp_frag_needed_suppressed") > suppressed
    print(f"no remedy: {stalled}")
    muxlab("mtu", "mss-clamp")
    clamped = upload(ref)
    assert clamped == "vm1 got 300000", clamped
    muxlab("mtu", "icmp")
    with_icmp = upload(ref)
    assert with_icmp == "vm1 got 300000", with_icmp
    # the client learnt the path's MTU from the MUX's ICMP
    learnt = labmod.docker_exec(ref, "client1", ["ip", "route", "get", "203.0.113.10"]).stdout
    assert "mtu 1450" in learnt, learnt
    print(f"mss-clamp: {clamped}; icmp: {with_icmp}")
