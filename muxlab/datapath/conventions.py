"""Conventions the MUXes and host agents must agree on, in one place. Pure.

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

# The lab's PKI (muxlab.pki creates it at deploy, in the lab folder's PKI_FOLDER): one CA, and
# per infrastructure node a certificate whose common name is the node's name, bound read-only
# into that node at PKI_DIR. Managers also get the API's bearer token there.
PKI_FOLDER = "pki"                  # in the lab folder, beside lab.yml (never committed)
PKI_DIR = "/etc/muxlab/pki"         # in a node
CA_CERT = "ca.crt"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"
API_TOKEN = "api-token"             # the bearer token every API call but the OpenAPI document needs
OPERATOR = "operator"               # the operator's own certificate (CN), for ovsdb-client by hand
# Platform addresses a host serves its VMs on its bridge, as Azure's hosts do
IMDS_ADDRESS = "169.254.169.254"    # Instance Metadata Service (HTTP, header Metadata: true)
IMDS_PORT = 80
PLATFORM_ADDRESS = "168.63.129.16"  # Azure's AzureLoadBalancer / WireServer: health probes come from it


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


MAGLEV_TABLES_FILE = "/run/muxlab/tables.json"   # on every MUX: the Maglev tables it programmed


def maglev_report(rule_maps: dict[str, str], maps: dict[str, list], changed_at: dict[str, float], at: float) -> dict:
    """What a MUX writes to MAGLEV_TABLES_FILE: each rule's map name, each map's buckets (VM
    names) once however many rules share it, when each map's contents last changed in the
    kernel, and a digest of rules and maps (equal digests: identical tables)."""
    digest = hashlib.sha256(json.dumps([rule_maps, maps], sort_keys=True).encode()).hexdigest()[:16]
    return {"digest": digest, "rules": rule_maps, "maps": maps, "changed_at": changed_at, "at": at}


def rule_tables(report: dict) -> dict[str, list]:
    """Rule key ("LB/rule") -> its Maglev table, from a MUX's MAGLEV_TABLES_FILE."""
    return {rule: report["maps"][name] for rule, name in report["rules"].items()}
