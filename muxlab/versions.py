"""Every pinned version in one place: images, bootstrap and docs read them from here."""

CONTAINERLAB = "v0.79.0"
EXABGP = "5.0.15"   # the maintained line (4.2 stopped at 4.2.25)
PYROUTE2 = "0.7.12"
SCAPY = "2.6.1"
PYYAML = "6.0.2"
PYDANTIC = "2.14.3"
FASTAPI = "0.165.0"
UVICORN = "0.54.0"
DEFUSEDXML = "0.7.1"  # ServiceDefinitions and the guest agent's health reports are XML from users/tenants
OVS_PYTHON = "4.0.0"    # the OVSDB IDL; the server is Debian bookworm's openvswitch-common (3.1)
# FRR comes from Debian bookworm; the apt version glob pins the 8.4 series.
FRR_APT = "8.4.*"
DEBIAN_SUITE = "bookworm"
BASE_IMAGE = "debian:bookworm-slim"

ROUTER_IMAGE = "muxlab/router:latest"
NODE_IMAGE = "muxlab/node:latest"

NODE_PYTHON_REQUIREMENTS = [
    f"exabgp=={EXABGP}",
    f"pyroute2=={PYROUTE2}",
    f"scapy=={SCAPY}",
    f"PyYAML=={PYYAML}",
    f"pydantic=={PYDANTIC}",
    f"fastapi=={FASTAPI}",
    f"uvicorn=={UVICORN}",
    f"ovs=={OVS_PYTHON}",
    f"defusedxml=={DEFUSEDXML}",
    # builds the project wheel offline in the last image layer
    "wheel==0.45.1",
]
