"""An example suite for your own lab: copy it, change the VIPs and expectations. Each test
leaves the lab as it found it, so the suite also runs against a lab you keep (--muxlab-reuse)."""


def test_the_vip_spreads_over_every_vm(muxlab_lab):
    r = muxlab_lab.flows("client1", "web", 80, 300)
    assert r["failures"] == 0
    assert len(r["by_dip"]) == len([vm for vm in muxlab_lab.ref.lab.vms])


def test_replies_bypass_the_muxes(muxlab_lab):
    walk = muxlab_lab.trace("client1", "web", 80)
    assert walk["answered"]
    assert not [h for h in walk["reply"] if h["node"].startswith("mux")]


def test_a_frozen_mux_breaks_no_connection(muxlab_lab):
    hold = muxlab_lab.hold(vip="203.0.113.10", conns=12, duration=6)
    muxlab_lab.fail("mux1", "pause")
    try:
        result = hold.result()
    finally:
        muxlab_lab.heal("mux1")
    assert all(c["broken_at"] is None for c in result["conns"])
    muxlab_lab.converged()
