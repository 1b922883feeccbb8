"""Issue 8 figures, measured on a lab of its own: the internal load balancer hairpin (failure
rate against the sender's share of the Maglev table, then with each fix), outbound SNAT
(connections from every VM, each seen on the client as VIP:port inside its VM's range, and
the return packets per MUX) and SNAT port exhaustion (held, refused, counted).
`python -m bench.seeds_bench [--repeat 3]`."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from muxlab.cli.traffic import run_flows
from muxlab.datapath.conventions import MAGLEV_TABLES_FILE, MUX_TABLE, rule_tables
from muxlab.lb.azure import canonical, load_document

from .common import deployed, save, sh

EXAMPLES = Path(__file__).resolve().parents[1] / "containerlab" / "examples"
ILB_VIP, PEER, PEER_PORT, OUT_VIP = "10.1.0.100", "192.0.2.10", 9000, "203.0.113.11"


def put(ref, name, lb) -> None:
    api = ref.api()
    api.put(f"/loadBalancers/{name}", lb)
    api.wait_synced(ref.lab.agents)


def vm1_share(ref) -> float:
    table = rule_tables(json.loads(sh(ref, "mux1", f"cat {MAGLEV_TABLES_FILE}")))["ilb/app"]
    return table.count("vm1") / len(table)


def rate(ref, source: str, flows: int) -> dict:
    r = run_flows(ref, source, ILB_VIP, 80, flows)
    return {"flows": r["flows"], "failed": r["failures"], "rate": round(r["failures"] / r["flows"], 4),
            "served_by_vm1": r["by_dip"].get("vm1", 0)}


def hairpin(ref, repeat: int, flows: int) -> dict:
    ilb = canonical(load_document(EXAMPLES / "ilb-hairpin.yml")["ilb"])
    put(ref, "ilb", ilb)
    out = {"share_of_vm1": round(vm1_share(ref), 4), "before": [], "second_nic": [], "hairpin_snat": []}
    for _ in range(repeat):
        out["before"].append(rate(ref, "vm1", flows))
        sh(ref, "vm1", f"ip route add {ILB_VIP}/32 via 10.1.1.1 dev eth2 onlink src 10.1.1.21")
        out["second_nic"].append(rate(ref, "vm1", flows))
        sh(ref, "vm1", f"ip route del {ILB_VIP}/32")
    put(ref, "ilb", {**ilb, "properties": {**ilb["properties"], "hairpinSnat": True}})
    for _ in range(repeat):
        out["hairpin_snat"].append(rate(ref, "vm1", flows))
    ref.api().delete("/loadBalancers/ilb")
    return out


def outbound(ref, flows_per_vm: int) -> dict:
    api = ref.api()
    snat = {b["name"]: b for b in api.get("/loadBalancers/web/outboundSnat")["value"]}
    counters = lambda: {m: json.loads(sh(ref, m, f"nft -j list counter ip {MUX_TABLE} snat_return_packets"))["nftables"][1]
                        ["counter"]["packets"] for m in ("mux1", "mux2", "mux3")}
    before = counters()
    per_vm = {}
    for vm in sorted(snat):
        (lo, hi), = snat[vm]["ranges"]
        res = json.loads(sh(ref, vm, f"python -m muxlab.node.flows --vip {PEER} --port {PEER_PORT} --flows {flows_per_vm}"))
        seen = [r["dip"].split() for r in res["results"]]
        per_vm[vm] = {"range": [lo, hi], "connections": res["flows"], "failed": res["failures"],
                      "from_vip_in_range": sum(1 for ip, port in seen if ip == OUT_VIP and lo <= int(port) <= hi)}
    after = counters()
    return {"vip": OUT_VIP, "per_vm": per_vm, "connections": sum(v["connections"] for v in per_vm.values()),
            "from_vip_in_range": sum(v["from_vip_in_range"] for v in per_vm.values()),
            "return_packets_per_mux": {m: after[m] - before[m] for m in after}}


def exhaustion(ref, ports: int = 8) -> dict:
    api = ref.api()
    web = api.get("/loadBalancers/web")
    web["properties"]["outboundRules"][0]["properties"]["allocatedOutboundPorts"] = ports
    put(ref, "web", web)
    try:
        held = json.loads(sh(ref, "vm3", f"python -m muxlab.node.holdclient --vip {PEER} --port {PEER_PORT} --conns {ports} "
                                          "--duration 3 --every 0.25 2>/dev/null"))
        time.sleep(3.5)   # the host looks at its SNAT counters every 3 s (hostagent.agent.USAGE_EVERY_S)
        row = next(b for b in api.get("/loadBalancers/web/outboundSnat")["value"] if b["name"] == "vm3")
    finally:
        web["properties"]["outboundRules"][0]["properties"]["allocatedOutboundPorts"] = 0
        put(ref, "web", web)
    refused = [a for a in held["attempts"] if not a[1]]
    return {"allocated_ports": ports, "held": len(held["conns"]),
            "held_broken": sum(1 for c in held["conns"] if c["broken_at"]),
            "attempts_refused": len(refused), "refusal_errors": sorted({a[3] for a in refused}),
            "reported": {k: row[k] for k in ("ranges", "allocatedPorts", "portsInUse", "failures")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flows", type=int, default=300)
    a = ap.parse_args()
    with deployed() as ref:
        result = {"hairpin": hairpin(ref, a.repeat, a.flows), "outbound": outbound(ref, 180),
                  "exhaustion": exhaustion(ref)}
    save("seeds", result)


if __name__ == "__main__":
    main()
