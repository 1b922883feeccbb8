"""Which offloads a node switches on, from what `ethtool -k` shows (pure)."""
from muxlab.node.offloads import to_enable

CONTAINERLAB_VETH = """Features for eth1:
rx-checksumming: on
tx-checksumming: off
\ttx-checksum-ipv4: off [fixed]
\ttx-checksum-ip-generic: off
scatter-gather: on
\ttx-scatter-gather: on
tcp-segmentation-offload: off
\ttx-tcp-segmentation: off [requested on]
generic-segmentation-offload: on
generic-receive-offload: off
large-receive-offload: off [fixed]
rx-udp-gro-forwarding: off
"""


def test_what_containerlab_switched_off_comes_back_on():
    assert to_enable(CONTAINERLAB_VETH) == ["tx", "tso", "gro", "rx-udp-gro-forwarding"]


def test_fixed_features_are_left_alone_and_nothing_twice():
    fixed = CONTAINERLAB_VETH.replace("tx-checksumming: off", "tx-checksumming: off [fixed]")
    assert to_enable(fixed) == ["tso", "gro", "rx-udp-gro-forwarding"]
    everything_on = "\n".join(f"{n}: on" for n in ("tx-checksumming", "scatter-gather", "tcp-segmentation-offload",
                                                    "generic-segmentation-offload", "generic-receive-offload",
                                                    "rx-udp-gro-forwarding"))
    assert to_enable(everything_on) == []
