"""The control plane: time from an API call until traffic is served per the new state, and
what a MUX agent costs when nothing changes.

- add a VIP:     PUT a new load balancer -> first new connection to its VIP answered
- add a backend: PUT its pool with one more backend -> first new connection answered by it
- swap:          POST /swapFrontends -> first new connection to VIP A answered by B's pool
Each is timed from just before the API call to the first answered connection, seen by a
prober already running inside client1 (muxlab.node.firstserved; the containers share the
operator's clock), with the API's own answer time and the time until every agent reported
the new configuration beside it. Ananta's reference: VIP configuration median 75 ms.

Idle cost: CPU of each agent (MUX, host, VM service) and of the managers' ovsdb-server and API
over one quiet window (from /proc/PID/stat), and their resident memory: what the SSL
connections cost at rest shows in the agents and ovsdb-server. Run: `python -m bench.manager_bench` (deploys its own lab, muxlab-bench).
"""
from __future__ import annotations

import json
import subprocess
import time

from .common import deployed, save, sh, summary

RUNS = 7
IDLE_WINDOW_S = 30.0
TRIAL_PORT = 8081


def lb(vip: str, ips: list[str]) -> dict:
    return {"properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"publicIPAddress": {"properties": {"ipAddress": vip}}}}],
        "backendAddressPools": [{"name": "pool", "properties": {"loadBalancerBackendAddresses": [
            {"name": ip, "properties": {"ipAddress": ip}} for ip in ips]}}],
        "loadBalancingRules": [{"name": "r", "properties": {
            "frontendIPConfiguration": {"id": "frontendIPConfigurations/fe"}, "backendAddressPool": {"id": "backendAddressPools/pool"},
            "protocol": "Tcp", "frontendPort": TRIAL_PORT, "backendPort": 8080}}]}}


class Prober:
    """muxlab.node.firstserved in client1, started before the change."""

    def __init__(self, ref, vip: str, dip: str | None = None):
        argv = ["docker", "exec", ref.container("client1"), "python", "-m", "muxlab.node.firstserved",
                "--vip", vip, "--port", str(TRIAL_PORT), "--timeout", "30"] + (["--dip", dip] if dip else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr.readline().startswith("READY")

    def served_at(self) -> float:
        out, err = self.proc.communicate(timeout=60)
        t = json.loads(out)["t"]
        if t is None:
            raise RuntimeError(f"never served: {err}")
        return t


def timed(ref, api, agents, change, vip, dip=None) -> dict:
    prober = Prober(ref, vip, dip)
    time.sleep(0.3)  # it is trying before the call
    t0 = time.time()
    change()
    t_api = time.time()
    synced = api.wait_synced(agents, timeout=30)
    return {"served_s": prober.served_at() - t0, "api_s": t_api - t0, "agents_s": t_api - t0 + synced}


# (node role, process) pairs measured at rest: every agent, and the managers' side of the
# SSL connections (ovsdb-server) and the API
AT_REST = (("mux", "python -m mux.agent"), ("host", "python -m hostagent.agent"),
           ("manager", "ovsdb-server"), ("manager", "python -m manager.api"), ("vm", "python -m muxlab.node.vmservice"))


def usage_at_rest(ref) -> dict:
    """Per node and process: CPU share of one core and RSS over IDLE_WINDOW_S, all processes
    over the same window."""
    nodes = {"mux": [m.name for m in ref.lab.muxes], "host": [h.name for h in ref.lab.hosts],
             "manager": list(ref.lab.managers), "vm": [v.name for v in ref.lab.vms]}

    def sample(node, pattern):
        out = sh(ref, node, f"pid=$(pgrep -of '{pattern}'); cat /proc/$pid/stat; getconf CLK_TCK; "
                            f"grep VmRSS /proc/$pid/status").split("\n")
        fields = out[0].rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]), int(out[1]), int(out[2].split()[1])
    procs = [(node, pattern) for role, pattern in AT_REST for node in nodes[role]]
    first = {p: sample(*p) for p in procs}
    t0 = time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    elapsed = time.monotonic() - t0
    out: dict = {}
    for p in procs:
        ticks1, hz, rss_kb = sample(*p)
        out.setdefault(p[0], {})[p[1].split()[-1]] = {
            "cpu_percent_of_a_core": round(100 * (ticks1 - first[p][0]) / hz / elapsed, 2), "rss_mib": round(rss_kb / 1024, 1)}
    return out


def main() -> None:
    with deployed() as ref:
        api = ref.api()
        agents = ref.lab.agents
        time.sleep(5)  # let start-up settle before measuring idle
        at_rest = usage_at_rest(ref)
        idle = {m.name: at_rest[m.name]["mux.agent"] for m in ref.lab.muxes}

        add_vip, add_backend, swap = [], [], []
        for i in range(RUNS):
            vip = f"203.0.113.{150 + i}"
            add_vip.append(timed(ref, api, agents, lambda: api.put(f"/loadBalancers/trial{i}", lb(vip, ["10.1.3.15"])), vip))
            add_backend.append(timed(ref, api, agents, lambda: api.put(
                f"/loadBalancers/trial{i}/backendAddressPools/pool",
                {"properties": {"loadBalancerBackendAddresses": [{"name": "a", "properties": {"ipAddress": "10.1.3.15"}},
                                                                 {"name": "b", "properties": {"ipAddress": "10.1.3.16"}}]}}),
                vip, dip="vm6"))
            other = f"203.0.113.{170 + i}"
            api.put(f"/loadBalancers/other{i}", lb(other, ["10.1.2.13"]))
            api.wait_synced(agents)
            swap.append(timed(ref, api, agents, lambda: api.post("/swapFrontends", {"loadBalancers": [f"trial{i}", f"other{i}"]}),
                              vip, dip="vm3"))
            for name in (f"trial{i}", f"other{i}"):
                api.delete(f"/loadBalancers/{name}")
            api.wait_synced(agents)

        def summarise(runs):
            return {k: summary([r[k] for r in runs]) for k in ("served_s", "api_s", "agents_s")}
        save("manager", {
            "runs": RUNS, "ananta_reference_vip_config_median_s": 0.075,
            "add_vip": summarise(add_vip), "add_backend": summarise(add_backend), "swap": summarise(swap),
            "idle_window_s": IDLE_WINDOW_S, "mux_agent_idle": idle, "at_rest": at_rest,
            "before_reference": "the last run with plain TCP to OVSDB and HTTP (2026-11-22T17:56:30Z): MUX agents "
                                "0.33-0.37 % of a core and 47.2-47.3 MiB RSS at rest; add a VIP served 0.318 s, "
                                "a backend 0.162 s, a swap 0.326 s (medians)",
        })


if __name__ == "__main__":
    main()
