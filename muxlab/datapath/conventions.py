"""Conventions the MUXes, host agents, managers, the renderer and the operator's tools must
agree on, in one place: every kernel name, port and file name two of them share is defined
here and nowhere else in the code (docs and workshops write them out, for people). Pure.

- A DIP travels as a 32-bit packet mark equal to the DIP itself (MUX: chosen backend;
  host: which local VM the MUX meant), and `ip rule fwmark DIP lookup DIP` routes it.
- On the overlay every DIP has a fixed MAC, 02:00 + the DIP's four bytes: the MUX puts it
  in the inner Ethernet header and the host reads the MUX's choice from it.
- One VXLAN device per node, vxlan<VNI>, UDP 4789.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json

RULE_PRIORITY = 100  # `ip rule` preference of the fwmark rules, on MUXes and hosts

# nft tables, by node: written by their agent (the edge's by the renderer), read by the operator's tools
MUX_TABLE = "muxlab_mux"            # a MUX's data path (mux/datapath.py)
HOST_TABLE = "muxlab_host"          # a host's NAT, DSR, SNAT and filters (hostagent/datapath.py)
OVERLAY_TABLE = "muxlab_overlay"    # a host's VXLAN ingress filter, netdev family (hostagent/datapath.py)
EDGE_TABLE = "muxlab_edge"          # the edge router's filters (muxlab/fabric/render.py, render_edge_nft)

# Interfaces, as the topology names them (muxlab/fabric/render.py)
MGMT_IF = "eth0"       # every node's, Docker's, on the management network: never on a packet's path through the lab
UPLINK_IF = "eth1"     # a MUX's, host's or client's link to the edge; a VM's to its host
HOST_BRIDGE = "br0"    # a host's bridge to its VMs (it serves IMDS and the platform address on it)

# Ports
VXLAN_PORT = 4789
OVSDB_PORT = 6641    # managers' OVSDB, for agents (and the managers' API) over the management network
RAFT_PORT = 6643     # managers' OVSDB cluster among themselves
API_PORT = 8080      # managers' northbound HTTPS API
# Host liveness on the underlay (muxlab/node/liveness.py): every host sends a beacon from its
# VTEP address to every MUX's each LIVENESS_INTERVAL_S; a MUX that hears none from a host for
# LIVENESS_DEAD_AFTER_S (BFD's detect multiplier, 3) takes its DIPs out of its tables.
LIVENESS_PORT = 3799
LIVENESS_INTERVAL_S = 0.2
LIVENESS_DEAD_AFTER_S = 0.6
# Fastpath (docs/datapath.md, muxlab/node/fastpath.py): the MUX that sees a VM's TCP handshake
# complete logs the packet to NFLOG group FASTPATH_NFLOG_GROUP; its agent sends a redirect to
# the two hosts' FASTPATH_PORT, from its underlay address (hosts take redirects from MUXes only).
FASTPATH_PORT = 3800
FASTPATH_NFLOG_GROUP = 38

# Files in a node. CONFIG_DIR holds what the topology binds in read-only; RUN_DIR the node's own
# runtime state (MUXLAB_RUN_DIR moves it in a node: muxlab.node.runtime.run_path).
CONFIG_DIR = "/etc/muxlab"
FABRIC_FILE = f"{CONFIG_DIR}/lab.yml"            # the fabric, in every node
SEED_FILE = f"{CONFIG_DIR}/loadbalancers.yml"    # managers: the load balancers of a first start
EDGE_NFT_FILE = f"{CONFIG_DIR}/edge.nft"         # the edge: router/entrypoint.sh loads it (a shell script: written out there)
RUN_DIR = "/run/muxlab"
MAGLEV_TABLES_FILE = f"{RUN_DIR}/tables.json"    # on every MUX: the Maglev tables it programmed
ANNOUNCE_FILE = f"{RUN_DIR}/announce.json"       # on every MUX: the VIPs its agent tells the BGP helper to announce
BUSY_FILE = f"{RUN_DIR}/busy"                     # a VM reports itself busy while it exists (`muxlab instance`)
STOPPED_DIR = f"{RUN_DIR}/stopped"               # a process named by a file here is held down by the supervisor

# The lab's PKI (muxlab.pki creates it at deploy, in the lab folder's PKI_FOLDER): one CA, and
# per infrastructure node a certificate whose common name is the node's name, bound read-only
# into that node at PKI_DIR. Managers also get the API's bearer token there.
PKI_FOLDER = "pki"                  # in the lab folder, beside lab.yml (never committed)
PKI_DIR = f"{CONFIG_DIR}/pki"       # in a node
CA_CERT = "ca.crt"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
API_TOKEN = "api-token"             # the bearer token every API call but the OpenAPI document needs
OPERATOR = "operator"               # the operator's own certificate (CN), for ovsdb-client by hand
# Platform addresses a host serves its VMs on its bridge, as Azure's hosts do
IMDS_ADDRESS = "169.254.169.254"    # Instance Metadata Service (HTTP, header Metadata: true)
IMDS_PORT = 80
PLATFORM_ADDRESS = "168.63.129.16"  # Azure's AzureLoadBalancer / WireServer: health probes come from it
# The WireServer on the platform address: a guest reports its role instance's health there
# (Azure's wire protocol, `POST /machine?comp=health`), and a classic service's guest agent
# probe follows it (hostagent/wireserver.py).
WIRESERVER_PORT = 80
HEALTH_REPORT_PATH = "/machine?comp=health"
GUEST_HEARTBEAT_S = 1.0             # how often a VM reports (Azure's guest agent: seconds to a minute)
# A MUX's PROXY protocol rules (proxyProtocol V2): HAProxy listens on the MUX's own address,
# one port per rule from this base, and the kernel sends the rule's clients there (mux/proxy.py)
PROXY_PORT_BASE = 40000
# The PROXY protocol v2 signature (haproxy.org/download/2.6/doc/proxy-protocol.txt, 2.2)
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def dip_mark(ip: ipaddress.IPv4Address | str) -> int:
    return int(ipaddress.IPv4Address(ip))


def dip_mac(ip: ipaddress.IPv4Address | str) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def vxlan_ifname(vni: int) -> str:
    return f"vxlan{vni}"


def ct_timeout_object(proto: str, idle_s: int) -> str:
    """An nftables conntrack timeout policy named idle_<proto>_<seconds>: an idle flow's
    state lives idle_s seconds (Azure's idleTimeoutInMinutes), in whichever state the
    tracking node (a MUX sees one direction only) puts it."""
    if proto == "tcp":
        states = ", ".join(f"{st}: {idle_s}" for st in ("established", "unack", "retrans", "close_wait"))
    else:
        states = f"unreplied: {idle_s}, replied: {idle_s}"
    return f"  ct timeout idle_{proto}_{idle_s} {{ protocol {proto}; l3proto ip; policy = {{ {states} }}; }}"


def maglev_report(rule_maps: dict[str, str], maps: dict[str, list], changed_at: dict[str, float], at: float) -> dict:
    """What a MUX writes to MAGLEV_TABLES_FILE: each rule's map name, each map's buckets (VM
    names) once however many rules share it, when each map's contents last changed in the
    kernel, and a digest of rules and maps (equal digests: identical tables)."""
    digest = hashlib.sha256(json.dumps([rule_maps, maps], sort_keys=True).encode()).hexdigest()[:16]
    return {"digest": digest, "rules": rule_maps, "maps": maps, "changed_at": changed_at, "at": at}


def rule_tables(report: dict) -> dict[str, list]:
    """Rule key ("LB/rule") -> its Maglev table, from a MUX's MAGLEV_TABLES_FILE."""
    return {rule: report["maps"][name] for rule, name in report["rules"].items()}
