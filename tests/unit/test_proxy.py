"""Seed 004's second design and its fix: a MUX that source-NATs the client (sourceNat), or
proxies the connection with a PROXY protocol v2 header (proxyProtocol V2), and the VM that
trusts such a header only from a MUX."""
import socket
import subprocess

import pytest

from mux import datapath as mux_dp
from mux import proxy
from muxlab.datapath.conventions import PROXY_PORT_BASE, PROXY_V2_SIGNATURE
from muxlab.fabric.lab import ModelError
from muxlab.lb.azure import load_document, parse_lb
from muxlab.lb.compiler import compile_facts
from muxlab.node.vmservice import proxy_v2
from tests.unit.conftest import default_lbs, fabric
from tests.unit.test_datapath import needs_nft

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "containerlab" / "examples" / "source-nat.yml"


def lbs(proxy_protocol=False):
    out = {**default_lbs(), **load_document(EXAMPLE)}
    if proxy_protocol:
        rule = out["proxied"].properties.loadBalancingRules[0].properties
        rule.proxyProtocol, rule.sourceNat = "V2", False
    return out


def ruleset(proxy_protocol=False, address="10.0.1.3"):
    facts = compile_facts(lbs(proxy_protocol), fabric())
    return mux_dp.ruleset(fabric(), facts, mux_dp.rule_tables(fabric(), facts, mux_dp.Health()), None, address).render()


def header(src="192.0.2.10", sport=40001, dst="203.0.113.50", dport=80) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body


def test_source_nat_rules_are_tracked_from_the_syn_and_natted_to_this_mux():
    text = ruleset(address="10.0.1.3")
    assert "203.0.113.50 . tcp . 80" in text.split("set source_nat_rules")[1].split("}")[0]
    assert "snat ip to 10.0.1.3" in text
    facts = compile_facts(lbs(), fabric())
    raw = mux_dp.ruleset(fabric(), facts, mux_dp.rule_tables(fabric(), facts, mux_dp.Health())).chains["raw"]
    rules = [r for r in raw.rules]
    # before the bare SYN's notrack: NAT binds at a flow's first packet
    assert rules.index("ip daddr . meta l4proto . th dport @source_nat_rules return") < len(rules) - 1
    assert rules[-1] == "tcp flags & (syn | ack) == syn notrack return"


def test_a_proxied_rule_goes_to_haproxy_on_this_mux():
    text = ruleset(proxy_protocol=True, address="10.0.1.5")
    assert f"203.0.113.50 . tcp . 80 : 10.0.1.5 . {PROXY_PORT_BASE}" in text
    facts = compile_facts(lbs(True), fabric())
    cfg = proxy.config(facts, "10.0.1.5")
    assert f"bind 10.0.1.5:{PROXY_PORT_BASE}" in cfg
    assert "server vip 203.0.113.50:80 send-proxy-v2 source 10.0.1.5" in cfg
    assert proxy.config(compile_facts(default_lbs(), fabric()), "10.0.1.5") == ""   # none: HAProxy stops


@needs_nft
@pytest.mark.parametrize("proxy_protocol", [False, True])
def test_the_rulesets_load_in_the_kernel(proxy_protocol):
    proc = subprocess.run(["unshare", "--net", "sh", "-c", "ip link add vxlan4242 type vxlan id 4242 dstport 4789 && "
                           "nft -f /dev/stdin"], input=ruleset(proxy_protocol), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_proxy_protocol_needs_a_tcp_rule_without_floating_ip():
    raw = lbs()["proxied"].model_dump(mode="json", exclude_none=True)
    raw["properties"]["loadBalancingRules"][0]["properties"].update(proxyProtocol="V2", protocol="Udp")
    with pytest.raises(ModelError) as exc:
        parse_lb(raw)
    assert "needs protocol Tcp" in str(exc.value.problems)


def test_the_vm_reads_a_proxy_v2_header():
    data = header() + b"GET / HTTP/1.0\r\n\r\n"
    client, length = proxy_v2(data)
    assert client == ("192.0.2.10", 40001) and data[length:].startswith(b"GET /")
    local = PROXY_V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])   # LOCAL: a health check, no address
    assert proxy_v2(local) == (None, 16)


@pytest.mark.parametrize("data", [header()[:20], b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + b"x" * 20,
                                  PROXY_V2_SIGNATURE + bytes([0x11, 0x11, 0, 0])])
def test_a_broken_or_foreign_header_is_not_read_as_one(data):
    with pytest.raises(ValueError):
        proxy_v2(data)
