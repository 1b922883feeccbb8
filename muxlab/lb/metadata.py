"""The Instance Metadata Service's documents (IMDS, 169.254.169.254 on every host), in
Azure's shape, and what a VM's guest makes of them. Pure: fabric and facts in,
JSON-ready dicts out.

A host answers for its own VMs only and knows them by the source address of the request
(`caller`): a VM's DIP or its second NIC's address. Two documents:

- `/metadata/instance`: `compute` (name, vmId, resourceId, ...) and `network.interface[]`
  (one per NIC: `ipv4.ipAddress[].privateIpAddress`, `ipv4.subnet[]`, `macAddress`), as
  Azure's. muxlab has no instance-level public IPs: `publicIpAddress` is ""; a NIC's
  `macAddress` is its address's overlay MAC (muxlab.datapath.conventions.dip_mac).
- `/metadata/loadbalancer` (api-version 2020-10-01 or later): `loadbalancer.publicIpAddresses`
  (frontend, private IP), `inboundRules` (every load-balancing rule and inbound NAT port that
  sends traffic to this VM: frontendIpAddress, protocol, frontendPort, backendPort,
  privateIpAddress, and backendIpAddress: the address the VM sees the traffic arrive on, its
  DIP, or the frontend itself with floating IP) and `outboundRules` (frontendIpAddress,
  privateIpAddress). muxlab's extensions, fields Azure does not have, so a guest can serve
  what it is sent: per inbound rule `internal` (true: an internal frontend, a VNet address;
  Azure lists internal frontends the same way), `enableFloatingIP`, `loadBalancer`, `name`
  and `probe` (null, or its protocol, port and requestPath); per outbound rule `protocols`
  and `frontendPortRange` (the VM's SNAT ports); and `internalEndpoints`, a classic cloud
  service instance's own internal endpoints (service, role, name, protocol, port: what its
  RoleEnvironment would list), which only the service's instances may open.

`guest_config` turns a loadbalancer document into what the VM application serves, exactly
what muxlab.lb.facts.guest_config computes from the facts themselves.
"""
from __future__ import annotations

import ipaddress
import uuid

from ..datapath.conventions import dip_mac
from ..fabric.lab import VM, Lab
from .facts import GUEST_PROTOCOL, Facts

LOADBALANCER_MIN_VERSION = "2020-10-01"
INSTANCE_MIN_VERSION = "2017-03-01"
API_VERSIONS = ("2017-03-01", "2017-04-02", "2017-08-01", "2017-12-01", "2018-02-01", "2018-04-02", "2018-10-01",
                "2019-02-01", "2019-03-11", "2019-04-30", "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15",
                "2019-11-01", "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01", "2020-12-01", "2021-01-01",
                "2021-02-01", "2021-03-01", "2021-05-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
                "2023-07-01", "2023-11-15", "2024-03-15")
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def caller(fabric: Lab, host: str, source: str) -> VM | None:
    """The VM on `host` that a request from `source` comes from (its DIP or second NIC), or None."""
    try:
        addr = ipaddress.IPv4Address(source)
    except ValueError:
        return None
    return next((vm for vm in fabric.vms_on(host) if addr in (vm.ip, vm.nic2)), None)


def _mac(ip) -> str:
    """Azure writes a NIC's MAC as 12 upper-case hex digits; a lab NIC's is its overlay MAC."""
    return dip_mac(ip).replace(":", "").upper()


def instance_document(fabric: Lab, facts: Facts, vm_name: str) -> dict:
    """/metadata/instance for `vm_name`: Azure's compute and network sections."""
    vm = fabric.vm(vm_name)
    host = fabric.host(vm.host)
    rg = fabric.name

    def nic(ip) -> dict:
        subnet = host.subnet_of(ip)
        return {"ipv4": {"ipAddress": [{"privateIpAddress": str(ip), "publicIpAddress": ""}],
                         "subnet": [{"address": str(subnet.network_address), "prefix": str(subnet.prefixlen)}]},
                "ipv6": {"ipAddress": []},
                "macAddress": _mac(ip)}

    return {
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": "muxlab",
            "name": vm.name,
            "osType": "Linux",
            "provider": "Microsoft.Compute",
            "resourceGroupName": rg,
            "resourceId": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Compute/"
                          f"virtualMachines/{vm.name}",
            "subscriptionId": SUBSCRIPTION,
            "tags": "",
            "tagsList": [],
            "vmId": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{vm.name}.{rg}.muxlab")),
            "vmSize": "Standard_muxlab",
            "zone": "",
            "osProfile": {"computerName": vm.name},
        },
        "network": {"interface": [nic(ip) for ip in (vm.ip, vm.nic2) if ip is not None]},
    }


def loadbalancer_document(fabric: Lab, facts: Facts, vm_name: str) -> dict:
    """/metadata/loadbalancer for `vm_name`: every rule, NAT port and outbound rule that
    concerns it (a pool member counts whatever its adminState or health: it serves the flows
    pinned to it), with muxlab's extension fields (module docstring)."""
    def internal(vip) -> bool:
        return ipaddress.IPv4Address(vip) in fabric.vnet

    inbound, frontends = [], set()

    def add(x, ip, name, probe) -> None:
        """One inbound entry: `x` a rule or NAT port (vip, protocol, port, backend_port,
        floating_ip, lb), `ip` the VM's address it reaches."""
        inbound.append({
            "frontendIpAddress": str(x.vip), "protocol": x.protocol, "frontendPort": x.port,
            "backendIpAddress": str(x.vip) if x.floating_ip else ip, "backendPort": x.backend_port,
            "privateIpAddress": ip,
            "loadBalancer": x.lb, "name": name, "internal": internal(x.vip), "enableFloatingIP": x.floating_ip,
            "probe": probe})
        frontends.add((str(x.vip), ip))

    for r in facts.rules:
        for b in r.backends:
            if b.vm == vm_name:
                add(r, b.ip, r.name,
                    {"protocol": r.probe.protocol, "port": r.probe.port,
                     "requestPath": r.probe.path if r.probe.protocol == "http" else None} if r.probe else None)
    for n in facts.nat_ports:
        if n.vm == vm_name:
            add(n, n.ip, n.rule, None)
    internal_eps = [{"service": e.service, "role": e.role, "name": e.name, "protocol": e.protocol, "port": e.port,
                     "privateIpAddress": e.ip} for e in facts.internal if e.vm == vm_name]
    outbound = []
    for s in facts.snat:
        if s.vm != vm_name:
            continue
        outbound.append({"frontendIpAddress": str(s.vip), "privateIpAddress": s.ip,
                         "loadBalancer": s.lb, "name": s.rule, "protocols": list(s.protocols),
                         "frontendPortRange": f"{s.lo}-{s.hi}"})
        frontends.add((str(s.vip), s.ip))
    inbound.sort(key=lambda x: (ipaddress.IPv4Address(x["frontendIpAddress"]), x["protocol"], x["frontendPort"]))
    public = [{"frontendIpAddress": f, "privateIpAddress": p}
              for f, p in sorted(frontends, key=lambda x: (ipaddress.IPv4Address(x[0]), x[1])) if not internal(f)]
    lb = {"publicIpAddresses": public, "inboundRules": inbound, "outboundRules": outbound}
    if internal_eps:
        lb["internalEndpoints"] = internal_eps
    return {"loadbalancer": lb}


def guest_config(document: dict) -> tuple[set[int], set[int], list[str]]:
    """What a VM serves, from its loadbalancer document: TCP ports (backend and probe ports),
    UDP ports, and the floating-IP frontends it holds on its loopback."""
    tcp, udp, fips = set(), set(), set()
    lb = document.get("loadbalancer", {})
    for r in lb.get("inboundRules", []):
        (tcp if r["protocol"] == "tcp" else udp).add(int(r["backendPort"]))
        if r.get("probe") and r["probe"]["protocol"] != GUEST_PROTOCOL:
            tcp.add(int(r["probe"]["port"]))
        if r.get("enableFloatingIP"):
            fips.add(r["frontendIpAddress"])
    for e in lb.get("internalEndpoints", []):
        (tcp if e["protocol"] == "tcp" else udp).add(int(e["port"]))
    return tcp, udp, sorted(fips, key=ipaddress.IPv4Address)


def supported(version: str | None, minimum: str) -> bool:
    """Azure answers 400 without an api-version, or with one it does not know."""
    return version in API_VERSIONS and version >= minimum


def select(document, path: list[str]):
    """A sub-document by path (`/metadata/instance/compute/name`); KeyError when absent.
    Lists are indexed by number, as Azure's (`network/interface/0/ipv4/ipAddress/0`)."""
    node = document
    for part in path:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KeyError(part)
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(part)
    return node
