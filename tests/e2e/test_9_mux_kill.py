"""Last in the session: killing a MUX container removes its next hop and only its next hop.
(A killed container loses its containerlab links, so nothing after this may need it.)"""
import subprocess

from muxlab.cli import lab as labmod


def test_killed_mux_leaves_ecmp_others_remain(lab, L):
    subprocess.run(["docker", "kill", lab.container("mux3")], check=True, capture_output=True, timeout=60)
    want = {v: ["mux1", "mux2"] for v in ("203.0.113.10", "203.0.113.11", "203.0.113.20", "203.0.113.30")}
    L.wait_for("mux3's next hops to leave the edge's kernel", lambda: labmod.vip_nexthops(lab) == want, timeout=20)
    sessions = labmod.bgp_sessions(lab)
    assert sessions["mux1"] == sessions["mux2"] == "Established" and sessions["mux3"] != "Established"
    res = L.flows("client1", "web", 80, 200)
    assert res["failures"] == 0 and len(res["by_dip"]) == 6
