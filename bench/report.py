"""Write bench/RESULTS.md from the JSON results under bench/results/."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict | None:
    p = HERE / "results" / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def s(x: dict | None, unit: str = "s") -> str:
    return "-" if not x else f"{x['median']} {unit} (max {x['max']}, n={x['n']})"


def heading(title: str, module: str, result: dict) -> list[str]:
    return [f"## {title} (`bench.{module}`)", f"_{result['machine']['when']}_", ""]


def this_machine() -> str:
    """"N cores, M GiB": what the machine writing the report has (each result also records its own)."""
    import os
    kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    return f"{os.cpu_count()} cores, {round(kib / 2**20)} GiB"


def main() -> None:
    out = ["# Benchmark results", "",
           f"Measured on the project's machine ({this_machine()}) by the scripts in this folder; the raw JSON is in",
           "`results/`. Regenerate with `python -m bench.<name>` then `python -m bench.report`.", ""]
    lab = load("lab")
    if lab:
        out += [*heading("Lab", "lab_bench", lab),
                "| what | result |", "|---|---|"]
        if "cold" in lab:
            c = lab["cold"]
            out.append(f"| deploy, cold images (router + node built with `--no-cache`, base present) | {c['total_s']} s (build {c['build_s']} s + deploy {c['deploy_s']} s) |")
        out.append(f"| deploy, warm images (`muxlab up` until BGP + ECMP converged) | {s(lab['warm_deploy_s'])} |")
        out.append(f"| `docker kill` of a MUX until its next hop leaves the edge's kernel (polled every {lab['kill_poll_interval_ms']} ms) | {s(lab['kill_nexthop_removal_s'])} |")
        out.append("")
    dp = load("datapath")
    if dp:
        out += [*heading("Data path", "datapath_bench", dp),
                "client1 to vm1 through the load balancer (VIP 203.0.113.30: edge, MUX, VXLAN, host NAT, DSR reply)",
                "against the direct routed path (edge, host) to vm1's DIP, and a bare veth pair between two",
                "namespaces (the machine's own reference), all in the same run. Medians.", "",
                "| metric | load-balanced | direct | bare veth | LB / direct | LB / bare veth |", "|---|---|---|---|---|---|"]
        names = {"tcp_gbit_s": "iperf3 TCP, Gbit/s", "udp64_pps": "iperf3 UDP 64-byte payload, packets/s received",
                 "new_conns_per_s": "new TCP connections/s (16 workers; LB to all six DIPs)"}
        for k, label in names.items():
            r = dp[k]
            veth = r.get("bare_veth", {}).get("median", "-")
            out.append(f"| {label} | {r['load_balanced']['median']} | {r['direct']['median']} | {veth} | "
                       f"**{r['ratio_lb_over_direct']}** | {r.get('ratio_lb_over_bare_veth', '-')} |")
        if "targets" in dp:
            out += ["", "Targets (issue 10): " + "; ".join(
                f"{k.replace('_', ' ')} {t['measured']} against {t['target']}: {'met' if t['met'] else '**missed**'}"
                for k, t in dp["targets"].items()) + "."]
        if "offloads" in dp:
            out += ["", "Offloads on each node's eth1 during the run: " + "; ".join(
                f"{n} " + ", ".join(f"{f} {v}" for f, v in feats.items()) for n, feats in dp["offloads"].items()) + "."]
        if "profile" in dp:
            p = dp["profile"]
            paths = (("load-balanced", p["load_balanced"]), ("direct", p["direct"]))
            out += ["", "Where the time goes: one more TCP run per path under `perf record -a`, in the same run. One TCP flow",
                    "is bound by its sender's core, which also forwards its packets through every hop, inline; so throughput",
                    "follows the CPU time each path spends per GB moved.", "",
                    "| path | Gbit/s | busy CPU per GB | machine CPU | avg packet into vm1 | interface drops |",
                    "|---|---|---|---|---|---|"]
            for label, r in paths:
                out.append(f"| {label} | {r['gbit_s']} | {r['busy_cpu_ms_per_gb']} ms | "
                           + ", ".join(f"{k} {v} %" for k, v in r["cpu_percent"].items() if v)
                           + f" | {r['vm1_avg_packet_bytes']} B | "
                           + (", ".join(f"{n} {d}" for n, d in r["drops"].items()) or "none") + " |")
            out += ["", "Kernel functions whose CPU time per GB grows most from the direct path to the load-balanced one",
                    "(self time, ms per GB):", "", "| function | load-balanced | direct | extra |", "|---|---|---|---|"]
            out += [f"| `{x['symbol']}` | {x['load_balanced']} | {x['direct']} | {x['extra']} |"
                    for x in p["extra_cpu_ms_per_gb"]]
        out.append("")
    fo = load("failover")
    if fo:
        out += [*heading("Failover", "failover_bench", fo),
                f"Client: {fo['client']}. Recovery = time from the fault until new connections are all served again.", "",
                "| MUX failure | next hop leaves the edge's kernel | recovery | established connections broken | unserved attempts |",
                "|---|---|---|---|---|"]
        for mode in ("kill", "pause", "link-down", "drain"):
            r = fo[mode]
            never = f", {r['never_recovered']} never recovered" if r["never_recovered"] else ""
            out.append(f"| {mode} | {s(r.get('nexthop_removed_s'))} | {s(r['recovery_s'])}{never} | {r['broken_share']['max'] * 100:.0f} % (worst run) | {s(r['unserved_attempts'], '')} |")
        p = fo["probe"]
        out += ["", f"VM service stopped until it leaves mux1's tables: {s(fo['vm_service_stop_to_removal_s'])}; "
                f"started again until it returns: {s(fo['vm_service_start_to_return_s'])} "
                f"(probe every {p['interval_s']} s, timeout {p['timeout_s']} s, out after {p['unhealthy_threshold']}, back after {p['healthy_threshold']}).", ""]
    mg = load("manager")
    if mg:
        out += [*heading("Control plane", "manager_bench", mg),
                "From just before the API call until the first new connection is answered per the new state (seen by a",
                "prober already running in client1), beside the API's own answer and every agent reporting the change.",
                f"Ananta's reference for VIP configuration: median {mg['ananta_reference_vip_config_median_s'] * 1000:.0f} ms.", "",
                "| change | served | API answered | every agent applied |", "|---|---|---|---|"]
        for k, label in (("add_vip", "add a VIP (PUT a load balancer; includes the BGP announcement)"),
                         ("add_backend", "add a backend (PUT its pool; first connection to it)"),
                         ("swap", "VIP swap (first connection to the other pool)")):
            r = mg[k]
            out.append(f"| {label} | {s(r['served_s'])} | {s(r['api_s'])} | {s(r['agents_s'])} |")
        out += ["", f"MUX agent at rest, over {mg['idle_window_s']:.0f} s: " + ", ".join(
            f"{m} {u['cpu_percent_of_a_core']} % of a core, {u['rss_mib']} MiB RSS" for m, u in mg["mux_agent_idle"].items())
            + f". Before: {mg['before_reference']}.", ""]
        if "at_rest" in mg:   # every agent and the managers' processes, over the same window
            out += ["| node | process at rest | CPU, % of a core | RSS, MiB |", "|---|---|---|---|"]
            out += [f"| {n} | {proc} | {u['cpu_percent_of_a_core']} | {u['rss_mib']} |"
                    for n, procs in mg["at_rest"].items() for proc, u in procs.items()]
            out.append("")
    sd = load("seeds")
    if sd:
        h, o, x = sd["hairpin"], sd["outbound"], sd["exhaustion"]
        out += [*heading("The seeds' behaviours", "seeds_bench", sd),
                f"Hairpin: vm1 calls the internal load balancer 10.1.0.100, whose pool includes vm1; vm1 owns "
                f"{h['share_of_vm1'] * 100:.1f} % of its Maglev table. Failed flows per run:", "",
                "| case | failed / flows, each run | failure rate | flows served by vm1 |", "|---|---|---|---|"]
        for k, label in (("before", "no fix"), ("second_nic", "fix 1: second NIC + static route"),
                         ("hairpin_snat", "fix 2: `hairpinSnat` on the host")):
            runs = h[k]
            total = sum(r["failed"] for r in runs) / sum(r["flows"] for r in runs)
            each = ", ".join("%d/%d" % (r["failed"], r["flows"]) for r in runs)
            out.append(f"| {label} | {each} | {total * 100:.1f} % | "
                       f"{sum(r['served_by_vm1'] for r in runs)} |")
        ranges = ", ".join("%s %d-%d" % (vm, *v["range"]) for vm, v in o["per_vm"].items())
        returns = ", ".join("%s %d" % mn for mn in o["return_packets_per_mux"].items())
        out += ["", f"Outbound SNAT: {o['connections']} connections from {len(o['per_vm'])} VMs to client1:9000, "
                f"{o['from_vip_in_range']} seen with source {o['vip']} and a port inside their VM's range "
                f"({ranges}); return packets per MUX: {returns}.", "",
                f"Exhaustion: with {x['allocated_ports']} ports, {x['held']} connections held ({x['held_broken']} broke), "
                f"{x['attempts_refused']} further attempts refused ({', '.join(x['refusal_errors'])}); the manager reports "
                f"ports in use {x['reported']['portsInUse']}, failures {x['reported']['failures']}.", ""]
    mu = load("mux_update")
    if mu:
        out += [*heading("A MUX's cost per change", "mux_update_bench", mu),
                "One backend's host fails (vm3 and vm4 leave): the MUX recomputes its Maglev tables, then the kernel takes",
                "the change, measured both ways in one throwaway namespace: the whole table loaded again (what every change",
                "cost before) and the incremental update the agent applies (only the moved buckets, one transaction). One",
                "rule per VIP, every pool the same six VMs, so all rules share one Maglev map. \"Same result\": the table",
                "listed after the update equals the one listed after the whole load.", "",
                "\"tables\": the Maglev tables and the wanted nft table as data, which both ways need.", "",
                "| VIPs | table size | maps | tables | whole: render + nft | **whole total** | update: diff + nft | **update total** | "
                "update script | element ops | kernel memory (slab) | same result |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mu["rows"]:
            w, u = r["whole"], r["update"]
            out.append(f"| {r['vips']} | {r['table_size']} | {r['maps']} | {r['compute_tables_s']} s | "
                       f"{w['render_s']} + {w['nft_s']} s | **{w['total_s']} s** | {u['diff_s']} + {u['nft_s']} s | "
                       f"**{u['total_s']} s** | {u['script_bytes'] // 1024} KiB (whole: {w['script_bytes'] // 1024} KiB) | "
                       f"{u['element_operations']} | {r['kernel_slab_kib']} KiB | {r['update_ends_like_whole_load']} |")
        out.append("")
    pc = load("probe_convergence")
    if pc:
        out += [*heading("A probe flap at scale, end to end in a lab", "probe_convergence_bench", pc),
                f"vm3's application stopped, then healed; probe {pc['probe']}. The other VIPs are load balancers without",
                "probes on the same six VMs. Fault → verdict: until the managers' API reports vm3 Down (Up) on web/http",
                f"(polled). Verdict → every MUX: until every MUX's kernel holds web/http's table without (with) vm3 ({pc['note']}).",
                "Two labs, the default table size and one whose fabric sets 65537. \"How mux1 applied\": its agent's log",
                "for the last changes.", "",
                "| table size | VIPs | apply | fault → verdict | verdict → every MUX excludes | heal → verdict | "
                "verdict → every MUX includes | MUX agent RSS | ruleset text | how mux1 applied |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in pc["sizes"]:
            if "apply_failed" in r:
                out.append(f"| {r['table_size']} | {r['vips']} | apply failed: {r['apply_failed'][-160:].splitlines()[-1]} | | | | | | | |")
                continue
            m = next(iter(r["mux_memory"].values()))
            out.append(f"| {r['table_size']} | {r['vips']} | {r['apply_s']} s | {r['fault_to_verdict_s']} s | "
                       f"**{r['verdict_to_every_mux_excludes_s']} s** | {r['heal_to_verdict_s']} s | "
                       f"**{r['verdict_to_every_mux_includes_s']} s** | {m['agent_rss_mib']} MiB | {m['ruleset_text_kib']} KiB | "
                       f"{'; '.join(r['mux_updates'][-2:])} |")
        out.append("")
    bg = load("bgp_scale")
    if bg:
        out += [*heading("Many VIPs through BGP", "bgp_scale_bench", bg),
                f"{bg['vips']} load balancers (one VIP each) applied to the default lab in one `muxlab apply`: it returned after "
                f"{bg['apply_returned_s']} s (validated, stored, applied by every agent); the edge held every VIP with all "
                f"{bg['muxes']} MUXes as next hops {bg['every_vip_via_every_mux_s']} s after the call. After `docker kill` of a MUX, "
                f"its {bg['vips']} next hops left the edge's kernel in {bg['killed_mux_nexthops_gone_s']} s.", ""]
    lv = load("liveness")
    if lv:
        idle = lv["idle_cpu_percent_of_a_core"]
        out += [*heading("Host liveness and idle cost", "liveness_bench", lv),
                "A host frozen (`docker pause`) until its DIPs are out of every MUX's kernel Maglev maps (each MUX polls its",
                f"own `nft` every 10 ms; beacons every {lv['beacon_interval_s']} s, dead after {lv['dead_after_s']} s of silence):", "",
                "| managers | host paused → DIPs out of every MUX |", "|---|---|",
                f"| running | {s(lv['host_paused_dips_out_of_every_mux_s'])} |",
                f"| all three stopped | {s(lv['host_paused_dips_out_of_every_mux_managers_stopped_s'])} |", "",
                f"The default lab at rest: each container's CPU (its cgroup's CPU time over {idle['all']['seconds']:.0f} s), "
                "in % of one core:", "",
                "| role | containers | mean | busiest |", "|---|---|---|---|"]
        out += [f"| {role} | {r['containers']} | {r['mean']} | {r['max']} |" for role, r in idle.items() if role != "all"]
        out += [f"| **every container** | {idle['all']['containers']} | **{idle['all']['mean']}** | {idle['all']['max']} |", ""]
    fp = load("fastpath")
    if fp:
        on, off = fp["fastpath_on"], fp["fastpath_off"]
        out += [*heading("Fastpath: a VM's traffic to a VIP", "fastpath_bench", fp),
                "From vm3 (host2), medians of the runs: TCP throughput to the bench VIP (pool: vm1, host1) and to vm1's DIP",
                "directly; new connections per second to web (six backends) and to vm1's DIP; packets the MUX tier carried",
                "per connection, both directions, counted on every MUX. Two labs in one run: `fastpath: true` (default), false.", "",
                "| | Fastpath on | Fastpath off | direct to the DIP (on / off lab) |", "|---|---|---|---|",
                f"| TCP throughput | {on['vip_gbit_s']['median']} Gbit/s | {off['vip_gbit_s']['median']} Gbit/s | "
                f"{on['dip_gbit_s']['median']} / {off['dip_gbit_s']['median']} Gbit/s |",
                f"| new connections | {on['vip_conns_per_s']['median']}/s | {off['vip_conns_per_s']['median']}/s | "
                f"{on['dip_conns_per_s']['median']} / {off['dip_conns_per_s']['median']}/s |",
                f"| MUX packets per iperf3 connection ({fp['params']['seconds']} s) | {on['vip_mux_packets_per_iperf_flow']['median']} | "
                f"{off['vip_mux_packets_per_iperf_flow']['median']} | {on['dip_mux_packets']['median']} |",
                f"| MUX packets per short connection | {on['vip_mux_packets_per_conn']['median']} | "
                f"{off['vip_mux_packets_per_conn']['median']} | 0 |", ""]
    sc = load("scale")
    if sc:
        out += [*heading("Scale curve", "scale_bench", sc),
                "Labs written by `muxlab generate` (1 client, 3 load balancers whose pools hold every VM), deployed one",
                "after the other on this machine. ![scale curve](results/scale.png)", "",
                "| MUXes | hosts | VMs | containers | deploy | memory, all nodes | per MUX / host / VM | idle CPU (of 2 cores) "
                "| idle, % of a core: MUX / host / manager / VM / every container | converge after a change "
                "| MUX kill: next hop gone | held connections broken |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in sc["points"]:
            m = p["mem_per_node_mib"]
            roles = p.get("idle_cpu_percent_of_a_core")
            per = (" / ".join(str(roles[r]["mean"]) for r in ("mux", "host", "manager", "vm", "all")) if roles else "-")
            held = p.get("mux_kill_held")
            broken = f"{held['broken']} of {held['conns']}" if held else "-"
            out.append(f"| {p['muxes']} | {p['hosts']} | {p['vms']} | {p['nodes']} | {p['deploy_s']} s | "
                       f"{p['mem_total_mib']:.0f} MiB | {m['mux']:.0f} / {m['host']:.0f} / {m['vm']:.0f} MiB | "
                       f"{p['idle_cpu_percent_of_machine']} % | {per} | {p['converge_after_change_s']} s | "
                       f"{p['mux_kill_nexthop_removed_s']} s | {broken} |")
        if sc.get("stopped_at"):
            st = sc["stopped_at"]
            out += ["", f"Stopped at {st['size'][0]} MUXes, {st['size'][1]} hosts, {st['size'][1] * st['size'][2]} VMs: "
                    f"{st['error'][:200]}"]
        out.append("")
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
