"""MUX and host-agent kernel state computed from a snapshot (pure), and checked by nft."""
import shutil
import subprocess

import pytest

from hostagent import datapath as host_dp
from mux import datapath as mux_dp
from muxlab.model import load_lab
from muxlab.state import Snapshot
from tests.unit.conftest import DEFAULT_MODEL


def snap(**kw):
    return Snapshot(load_lab(DEFAULT_MODEL), **kw)


def test_every_mux_computes_the_same_tables():
    a, b = mux_dp.services(snap()), mux_dp.services(snap())
    assert [s.table for s in a] == [s.table for s in b]
    assert mux_dp.render_nft(snap()) == mux_dp.render_nft(snap())


def test_table_size_is_prime_and_fixed_by_pool_not_health():
    s = {x.chain: x for x in mux_dp.services(snap())}["svc_web_http"]
    assert s.size == 601 and None not in s.table
    sick = {x.chain: x for x in mux_dp.services(snap(health={"vm3": {"http-health": False}}))}["svc_web_http"]
    assert sick.size == 601 and "vm3" not in sick.table
    # only vm3's buckets (and Maglev's small slack) moved
    changed = sum(1 for x, y in zip(s.table, sick.table) if x != y)
    assert changed < s.table.count("vm3") * 1.2


def test_unhealthy_probe_only_affects_rules_using_it():
    s = {x.chain: x for x in mux_dp.services(snap(health={"vm3": {"http-health": False}}))}
    assert "vm3" not in s["svc_web_http"].table and "vm3" in s["svc_web_dns"].table


def test_announce_follows_health_and_drain():
    assert mux_dp.announceable_vips(snap(), "mux1") == ["203.0.113.10/32", "203.0.113.20/32", "203.0.113.30/32"]
    assert mux_dp.announceable_vips(snap(drained=frozenset({"mux1"})), "mux1") == []
    assert len(mux_dp.announceable_vips(snap(drained=frozenset({"mux1"})), "mux2")) == 3
    down = {vm: {"http-health": False, "tcp-dns": False} for vm in ("vm1", "vm2", "vm3", "vm4", "vm5", "vm6")}
    assert "203.0.113.10/32" not in mux_dp.announceable_vips(snap(health=down), "mux1")


def test_mux_ruleset_shape():
    text = mux_dp.render_nft(snap())
    assert "203.0.113.10 . tcp . 80 : goto svc_web_http" in text
    assert "jhash ip saddr . th sport . ip daddr . th dport mod 601 seed 0x4d55584c map @svc_web_http_table" in text
    assert "tcp flags & (syn | ack) == syn notrack" in text
    assert "ct mark != 0 meta mark set ct mark accept" in text
    assert text.count(": 0x0a01010b") > 50  # vm1's buckets


def test_dip_routes_carry_overlay_mac_and_host():
    r = {x.dip: x for x in mux_dp.dip_routes(load_lab(DEFAULT_MODEL))}
    assert r["10.1.2.14"].mac == "02:00:0a:01:02:0e" and r["10.1.2.14"].host_vtep == "10.0.2.3"
    assert r["10.1.2.14"].mark == 0x0A01020E


def test_host_ruleset_only_local_rules():
    lab = load_lab(DEFAULT_MODEL)
    text = host_dp.render_nft(lab, "host1")
    assert "0x0a01010b . 203.0.113.10 . tcp . 80 : 10.1.1.11 . 8080" in text
    assert "10.1.2.13" not in text
    assert "0x0a01010c . 203.0.113.20 . tcp . 7000" in text  # vm2 floating IP
    assert "udp dport 4789 ip saddr != @muxes counter name spoofed_vxlan drop" in text
    assert "elements = { 10.0.1.1, 10.0.1.3, 10.0.1.5 }" in text


needs_nft = pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare") or subprocess.run(
    ["unshare", "--net", "true"], capture_output=True).returncode != 0, reason="needs nft and root for a private netns")


@needs_nft
@pytest.mark.parametrize("which", ["mux", "host", "edge"])
def test_rulesets_load_in_the_kernel(which):
    """nft parses and the kernel accepts the rendered rulesets (in a throwaway network namespace)."""
    lab = load_lab(DEFAULT_MODEL)
    from muxlab.render import render_edge_nft
    text = {"mux": lambda: mux_dp.render_nft(snap()), "host": lambda: host_dp.render_nft(lab, "host1"),
            "edge": lambda: render_edge_nft(lab)}[which]()
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && nft -f /dev/stdin"],
                          input=text + text, text=True, capture_output=True)  # applied twice: idempotent replace
    assert proc.returncode == 0, proc.stderr
