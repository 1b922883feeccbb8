"""Fastpath's pieces without a lab: the NFLOG messages the MUX reads, the redirect's format,
what a MUX redirects (and withdraws), what each host installs of a redirect, and the nft
the two data paths declare for it (loaded in a real kernel)."""
import dataclasses
import ipaddress
import socket
import struct
import subprocess

import pytest

from hostagent import datapath as host_dp
from hostagent import fastpath as host_fp
from mux import datapath as mux_dp
from mux import fastpath as mux_fp
from muxlab.datapath.conventions import FASTPATH_NFLOG_GROUP, dip_mac, dip_mark
from muxlab.node import nflog
from muxlab.node.fastpath import REDIRECT, WITHDRAW, BadMessage, Redirect, decode
from tests.unit.conftest import default_facts, fabric
from tests.unit.test_datapath import needs_nft

OUT, WEB = "203.0.113.11", "203.0.113.10"


def snat_port(facts, vm):
    x = next(s for s in facts.snat if s.vm == vm)
    return x.lo + 3


def logged(src, sport, dst, dport, dip, proto=6):
    return nflog.Logged(src, dst, proto, sport, dport, dip_mark(dip) if dip else 0)


# ---------------------------------------------------------------- NFLOG


def test_an_nflog_packet_message_parses_to_its_addresses_ports_and_mark():
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]) + socket.inet_aton(OUT) + socket.inet_aton(WEB)
    tcp = struct.pack("!HH", 1234, 80) + b"\0" * 16
    attrs = nflog._attr(nflog.NFULA_MARK, struct.pack("!I", dip_mark("10.1.1.11"))) + nflog._attr(nflog.NFULA_PAYLOAD, ip + tcp)
    body = struct.pack("BBH", socket.AF_INET, 0, socket.htons(FASTPATH_NFLOG_GROUP)) + attrs
    msg = struct.pack("IHHII", 16 + len(body), nflog.NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body
    [(kind, payload)] = list(nflog.messages(msg))
    assert kind == nflog.NFNL_SUBSYS_ULOG << 8
    assert nflog.parse_packet(nflog.attributes(payload[4:])) == logged(OUT, 1234, WEB, 80, "10.1.1.11")


def test_a_truncated_or_non_ipv4_payload_is_no_packet():
    assert nflog.parse_packet({nflog.NFULA_PAYLOAD: b"\x60" + b"\0" * 39}) is None
    assert nflog.parse_packet({nflog.NFULA_PAYLOAD: b"\x45" + b"\0" * 10}) is None


# ---------------------------------------------------------------- the redirect's format


def test_a_redirect_round_trips_and_a_bad_field_is_named():
    r = Redirect(REDIRECT, OUT, 1030, WEB, 80, "10.1.2.13", "10.1.1.11", 240)
    assert decode(r.encode()) == r
    assert decode(r.withdrawal().encode()) == Redirect(WITHDRAW, OUT, 1030, WEB, 80)
    for field, value, named in (("sport", 70000, "sport"), ("dst_dip", "vm1", "dst_dip"), ("op", "drop", "op"),
                                ("idle_s", True, "idle_s")):
        raw = dataclasses.asdict(r) | {field: value}
        with pytest.raises(BadMessage, match=named):
            decode(__import__("json").dumps(raw).encode())
    with pytest.raises(BadMessage, match="not JSON"):
        decode(b"\xff")


# ---------------------------------------------------------------- what a MUX redirects


def test_a_vms_public_call_is_redirected_to_both_hosts():
    facts = default_facts()
    port = snat_port(facts, "vm3")
    r, src_host, dst_host = mux_fp.decide(fabric(), mux_fp.index(facts), logged(OUT, port, WEB, 80, "10.1.1.11"))
    assert (r.src_dip, r.dst_dip, src_host, dst_host) == ("10.1.2.13", "10.1.1.11", "host2", "host1")
    assert r.idle_s == next(x for x in facts.rules if x.key == "web/http").idle_s


def test_what_a_mux_does_not_redirect():
    facts, lab = default_facts(), fabric()
    idx = mux_fp.index(facts)
    port = snat_port(facts, "vm3")
    assert mux_fp.decide(lab, idx, logged(OUT, port, WEB, 80, "10.1.2.14")) == "both ends on one host"
    assert mux_fp.decide(lab, idx, logged("192.0.2.10", 5000, WEB, 80, "10.1.1.11")) == "192.0.2.10:5000 is no VM's"
    assert mux_fp.decide(lab, idx, logged(OUT, port, WEB, 53, "10.1.1.11")) == "no TCP rule for 203.0.113.10:53"
    assert mux_fp.decide(lab, idx, logged(OUT, port, WEB, 80, "10.1.1.11", proto=17)) == "not TCP"
    # a DIP the rule's pool no longer holds (the bench pool has vm1 only)
    assert mux_fp.decide(lab, idx, logged(OUT, port, "203.0.113.30", 5201, "10.1.3.15")) == "the backend is not in the rule's pool"


def test_a_redirect_is_withdrawn_once_its_backend_leaves_the_pool():
    facts, lab = default_facts(), fabric()
    r, _, _ = mux_fp.decide(lab, mux_fp.index(facts), logged(OUT, snat_port(facts, "vm3"), WEB, 80, "10.1.1.11"))
    assert mux_fp.still_valid(lab, mux_fp.index(facts), r)
    left = dataclasses.replace(facts, rules=tuple(dataclasses.replace(x, backends=tuple(b for b in x.backends if b.vm != "vm1"))
                                                  for x in facts.rules))
    assert not mux_fp.still_valid(lab, mux_fp.index(left), r)


# ---------------------------------------------------------------- what a host installs


def test_each_host_installs_its_own_end_only():
    facts, lab = default_facts(), fabric()
    r, _, _ = mux_fp.decide(lab, mux_fp.index(facts), logged(OUT, snat_port(facts, "vm3"), WEB, 80, "10.1.1.11"))
    name = host_dp.fastpath_map(r.idle_s)
    assert host_fp.entries(host_fp.view(lab, facts, "host2"), r) == {host_fp.source_key(r): (name, dip_mac("10.1.1.11"))}
    assert host_fp.entries(host_fp.view(lab, facts, "host1"), r) == {host_fp.reply_key(r): (name, dip_mac("10.1.2.13"))}
    assert host_fp.entries(host_fp.view(lab, facts, "host3"), r) == {}


def test_a_host_refuses_what_its_facts_do_not_confirm():
    facts, lab = default_facts(), fabric()
    r, _, _ = mux_fp.decide(lab, mux_fp.index(facts), logged(OUT, snat_port(facts, "vm3"), WEB, 80, "10.1.1.11"))
    # a source port outside vm3's range, a backend no longer in the pool, a timeout with no map
    outside = dataclasses.replace(r, sport=next(s for s in facts.snat if s.vm == "vm5").lo)
    assert host_fp.entries(host_fp.view(lab, facts, "host2"), outside) == {}
    left = dataclasses.replace(facts, rules=tuple(dataclasses.replace(x, backends=tuple(b for b in x.backends if b.vm != "vm1"))
                                                  for x in facts.rules))
    assert host_fp.entries(host_fp.view(lab, left, "host1"), r) == {}
    assert host_fp.entries(host_fp.view(lab, facts, "host2"), dataclasses.replace(r, idle_s=7)) == {}


def test_an_internal_call_is_keyed_by_the_callers_dip():
    lab = fabric()
    r = Redirect(REDIRECT, "10.1.2.13", 40000, WEB, 80, "10.1.2.13", "10.1.1.11", default_facts().rules[0].idle_s)
    assert host_fp.source_key(r) in host_fp.entries(host_fp.view(lab, default_facts(), "host2"), r)
    forged = dataclasses.replace(r, src="10.1.2.14")   # another VM's DIP named as vm3's
    assert host_fp.entries(host_fp.view(lab, default_facts(), "host2"), forged) == {}
    assert ipaddress.IPv4Address(r.src) in lab.vnet


# ---------------------------------------------------------------- the nft of it


def test_the_mux_logs_vms_handshakes_only_with_fastpath_on():
    lab, facts = fabric(), default_facts()
    on = mux_dp.ruleset(lab, facts, mux_dp.rule_tables(lab, facts, mux_dp.Health())).chains["forward"].rules
    off_lab = dataclasses.replace(lab, fastpath=False)
    off = mux_dp.ruleset(off_lab, facts, mux_dp.rule_tables(off_lab, facts, mux_dp.Health())).chains["forward"].rules
    logs = [r for r in on if f"log group {FASTPATH_NFLOG_GROUP}" in r]
    assert len(logs) == 2 and all("ct state new meta l4proto tcp" in r for r in logs)
    assert not any("log group" in r for r in off)


def test_the_hosts_fastpath_tables_with_and_without_it():
    lab, facts = fabric(), default_facts()
    overlay, host = host_dp.tables(lab, facts, "host1")
    classes = host_dp.fastpath_classes(facts)
    assert {host_dp.fastpath_map(c) for c in classes} <= overlay.sets.keys()
    assert all("fwd to" in r and "update @fastpath_" in r for r in overlay.chains["fastpath"].rules)
    assert host.sets["peer_hosts"].elements.keys() == {"10.0.2.3", "10.0.2.5"}
    overlay, host = host_dp.tables(dataclasses.replace(lab, fastpath=False), facts, "host1")
    assert "fastpath" not in overlay.chains and not host.sets["peer_hosts"].elements


@needs_nft
def test_the_fastpath_tables_load_and_take_a_redirect_in_the_kernel(tmp_path):
    lab, facts = fabric(), default_facts()
    overlay, host = host_dp.tables(lab, facts, "host2")
    r, _, _ = mux_fp.decide(lab, mux_fp.index(facts), logged(OUT, snat_port(facts, "vm3"), WEB, 80, "10.1.1.11"))
    [(key, (name, value))] = host_fp.entries(host_fp.view(lab, facts, "host2"), r).items()
    (tmp_path / "t").write_text(overlay.render() + host.render()
                                + f"add element netdev {overlay.name} {name} {{ {key} timeout {r.idle_s}s : {value} }}\n")
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add eth1 type veth peer name e0"
                           " && ip link add vxlan4242 type vxlan id 4242 dstport 4789 && nft -f t"
                           f" && nft list map netdev {overlay.name} {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{OUT} . {r.sport} . {WEB} . 80" in proc.stdout and dip_mac("10.1.1.11") in proc.stdout


def test_a_vm_with_no_outbound_identity_has_no_way_out_but_its_replies_are_tracked():
    """The drop is for new connections out of the VNet; nothing in raw leaves a VM's packets
    to a SNAT address (a VIP) untracked, so a backend that lost its identity still un-NATs
    the replies of the flows it serves."""
    host = host_dp.tables(fabric(), default_facts(), "host1")[1]
    drops = [r for r in host.chains["forward"].rules if host_dp.NO_OUTBOUND in r]
    assert len(drops) == 1 and "ct state new" in drops[0] and "!= @snat_sources" in drops[0]
    assert not any("snat_sources" in r for r in host.chains["raw"].rules)
