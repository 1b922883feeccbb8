"""The packet walk's pure parts: the kernel's jhash, parsing `nft monitor trace`, assembling
hops from records, the topology picture, the merged capture and the dashboard's events."""
import xml.etree.ElementTree as ET

from muxlab.fabric.drawing import topology_svg
from muxlab.fabric.render import links
from muxlab.observe import pathwalk
from tests.unit.conftest import fabric


def test_jhash_is_lookup3_hashlittle():
    # Bob Jenkins' lookup3.c test vectors; Linux's jhash() is hashlittle() on little-endian CPUs
    assert pathwalk.jhash(b"", 0) == 0xDEADBEEF
    assert pathwalk.jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert pathwalk.jhash(b"Four score and seven years ago", 1) == 0xCD628161


def test_maglev_bucket_pads_each_field_to_a_register():
    a = pathwalk.maglev_bucket([bytes([192, 0, 2, 10]), (40000).to_bytes(2, "big")], 601, 0x4D55584C)
    b = pathwalk.maglev_bucket([bytes([192, 0, 2, 10]), (40000).to_bytes(2, "big") + b"\0\0"], 601, 0x4D55584C)
    assert a == b and 0 <= a < 601


def test_trace_ruleset_marks_both_directions_bare_and_inside_vxlan():
    text = pathwalk.trace_ruleset(40000, "muxlab_trace")
    assert "th sport 40000 meta nftrace set 1" in text and "th dport 40000 meta nftrace set 1" in text
    assert "udp dport 4789 @th,400,16 40000" in text and "udp dport 4789 @th,416,16 40000" in text
    assert text.count("priority -350") == 2


TRACE = """\
trace id 11 ip muxlab_trace pre packet: iif "eth1" ip saddr 192.0.2.10 ip daddr 203.0.113.10 tcp sport 40000 tcp dport 80 tcp flags == syn tcp window 64240
trace id 11 ip muxlab_trace pre rule th sport 40000 meta nftrace set 1 (verdict continue)
trace id 11 ip nat DOCKER_OUTPUT rule ip daddr 127.0.0.11 jump DOCKER (verdict jump DOCKER)
trace id 11 ip muxlab_mux prerouting rule ip daddr . meta l4proto . th dport vmap @services (verdict goto pick_default_ab)
trace id 11 ip muxlab_mux pick_default_ab rule meta mark set jhash ip saddr . th sport . ip daddr . th dport mod 601 seed 0x4d55584c map @maglev_ab accept (verdict accept)
trace id 11 ip muxlab_mux pick_default_ab verdict accept meta mark 0x0a01020d
trace id 12 ip muxlab_trace pre packet: iif "eth1" ip saddr 192.0.2.10 tcp sport 40000 tcp dport 80 tcp flags == ack tcp window 1
trace id 12 ip muxlab_mux prerouting rule ct mark != 0x00000000 meta mark set ct mark accept (verdict accept)
"""


def test_parse_trace_keeps_muxlab_rules_with_verdicts_and_marks():
    passes = pathwalk.parse_trace(TRACE.splitlines(), "muxlab_trace")
    assert [p["id"] for p in passes] == ["11", "12"]
    rules = passes[0]["rules"]
    assert [r["chain"] for r in rules] == ["prerouting", "pick_default_ab"]   # Docker's and the tracer's left out
    assert rules[0]["verdict"] == "goto pick_default_ab" and rules[1]["mark"] == "0x0a01020d"


def test_assemble_follows_the_first_packet_each_way_and_splits_revisits():
    def rec(t, iface, out, src, dst, sp, dp, flags, **kw):
        return {"time": t, "iface": iface, "out": out, "src": src, "dst": dst, "sport": sp, "dport": dp, "flags": flags, **kw}
    vx = {"time": 4, "iface": "eth1", "out": False, "src": "10.0.1.1", "dst": "10.0.2.3", "vni": 4242, "inner_dmac": "02:00",
          "inner": {"src": "192.0.2.10", "dst": "203.0.113.10", "sport": 40000, "dport": 80, "flags": "S"}}
    records = {
        "client1": [rec(1, "eth1", True, "192.0.2.10", "203.0.113.10", 40000, 80, "S"),
                    rec(9, "eth1", False, "203.0.113.10", "192.0.2.10", 80, 40000, "SA"),
                    rec(10, "eth1", True, "192.0.2.10", "203.0.113.10", 40000, 80, "A")],
        "edge": [rec(2, "eth7", False, "192.0.2.10", "203.0.113.10", 40000, 80, "S"),
                 rec(2, "eth1", True, "192.0.2.10", "203.0.113.10", 40000, 80, "S"), {**vx, "time": 4, "iface": "eth1"},
                 {**vx, "time": 4.5, "iface": "eth5", "out": True},
                 rec(8, "eth5", False, "203.0.113.10", "192.0.2.10", 80, 40000, "SA")],
        "mux1": [rec(3, "eth1", False, "192.0.2.10", "203.0.113.10", 40000, 80, "S"), {**vx, "time": 3.5, "out": True}],
        "host2": [{**vx, "time": 5}, rec(7, "eth1", True, "203.0.113.10", "192.0.2.10", 80, 40000, "SA"),
                  rec(5, "eth0", False, "192.0.2.10", "203.0.113.10", 40000, 80, "S")],
    }
    walk = pathwalk.assemble(records, {"mux1": pathwalk.parse_trace(TRACE.splitlines(), "muxlab_trace")}, 40000)
    assert [h["node"] for h in walk["request"]] == ["client1", "edge", "mux1", "edge", "host2"]
    assert [h["node"] for h in walk["reply"]] == ["host2", "edge", "client1"]
    edge = walk["request"][1]
    assert (edge["in"], edge["out"]) == ("eth7", "eth1")
    assert "VNI 4242" in walk["request"][3]["events"][0]["headers"]
    mux_rules = walk["request"][2]["rules"]
    assert any("jhash" in r["rule"] for r in mux_rules) and not any("ct mark" in r["rule"] for r in mux_rules)


def test_topology_picture_draws_every_node_and_both_paths():
    lab = fabric()
    svg = topology_svg(lab, links(lab), {"request": ["client1", "edge", "mux1", "edge", "host2", "vm3"],
                                         "reply": ["vm3", "host2", "edge", "client1"]}, "t")
    root = ET.fromstring(svg)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert set(lab.node_names()) <= texts
    assert "#1f6fd1" in svg and "#d9480f" in svg


def test_merged_capture_names_node_and_interface_in_time_order(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import CookedLinuxV2, Ether
    from scapy.utils import PcapNgReader, wrpcap

    from muxlab.cli.capture import Spec, merge
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    pa = Ether() / IP(dst="203.0.113.10") / UDP(dport=53)
    pa.time = 2.0
    pb1 = CookedLinuxV2(ifindex=7, pkttype=4, lladdrlen=6, src=b"\x02" * 6 + b"\0\0") / IP(dst="203.0.113.10") / UDP(dport=53)
    pb1.time = 1.0
    pb2 = CookedLinuxV2(ifindex=1, pkttype=0) / IP() / UDP()
    pb2.time = 3.0
    wrpcap(str(a), [pa])
    wrpcap(str(b), [pb1, pb2])
    out = tmp_path / "m.pcapng"
    counts = merge([(Spec("vm1", "eth1"), a, {}), (Spec("edge", "any"), b, {7: "eth3", 1: "eth0"})], out)
    assert counts == {"edge:eth3": 1, "vm1:eth1": 1}      # the management interface is dropped
    with PcapNgReader(str(out)) as r:
        assert [p.sniffed_on for p in r] == ["edge:eth3", "vm1:eth1"]


def test_dashboard_events_say_what_changed():
    from muxlab.cli.watch import events
    base = {"nodes": [{"node": "mux2", "state": "running"}], "faults": [], "bgp": {"mux2": "Established"},
            "bfd": {"mux2": "up"}, "vips": {"203.0.113.10": ["mux1", "mux2"]}, "drained": [], "managers": {},
            "probes": {"vm3": {"probes": {"web/http": {"up": True, "last_error": None}}}}}
    cur = {**base, "nodes": [{"node": "mux2", "state": "paused"}], "faults": ["mux2"], "bfd": {"mux2": "down"},
           "vips": {"203.0.113.10": ["mux1"]}, "probes": {"vm3": {"probes": {"web/http": {"up": False, "last_error": "timeout"}}}}}
    said = events(base, cur)
    assert "mux2: container running → paused" in said and "fault injected on mux2" in said
    assert "BFD mux2: up → down" in said and "VIP 203.0.113.10: mux2 withdrawn" in said
    assert "vm3 out of rotation (web/http: timeout)" in said
