"""Build the lab images: base (bootstrapped locally when it cannot be pulled), router, node."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .. import versions
from ..errors import MuxlabError

REPO = Path(__file__).resolve().parents[2]
HOST_CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]


def say(msg: str) -> None:
    print(f"muxlab images: {msg}", flush=True)


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def ensure_base() -> None:
    """The base image is a bootstrap, not a layer to refresh: `--no-cache` leaves it alone."""
    ref = versions.BASE_IMAGE
    if image_exists(ref):
        say(f"base {ref} present")
        return
    pull = subprocess.run(["docker", "pull", ref], capture_output=True, text=True)
    if pull.returncode == 0:
        say(f"pulled {ref}")
        return
    say(f"cannot pull {ref} ({pull.stderr.strip().splitlines()[-1] if pull.stderr.strip() else 'no registry'}); "
        "bootstrapping it with mmdebstrap")
    if not shutil.which("mmdebstrap"):
        raise MuxlabError("mmdebstrap is missing: run `muxlab bootstrap` (it installs it on Debian/Ubuntu)")
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=tar",
           "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
           "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
           "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias",
           versions.DEBIAN_SUITE, "-"]
    mm = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run(["docker", "import", "-c", 'CMD ["bash"]', "-", ref], stdin=mm.stdout, capture_output=True, text=True)
    mm.stdout.close()
    err = mm.stderr.read().decode(errors="replace")
    if mm.wait() != 0 or imp.returncode != 0:
        raise MuxlabError(f"bootstrapping {ref} failed:\n{err[-2000:]}\n{imp.stderr[-2000:]}")
    say(f"built {ref} with mmdebstrap")


def host_ca_bundle() -> bytes:
    for p in HOST_CA_BUNDLES:
        if Path(p).is_file():
            return Path(p).read_bytes()
    return b""


def _context(kind: str) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory(prefix=f"muxlab-{kind}-")
    ctx = Path(tmp.name)
    shutil.copy(REPO / "images" / kind / "Dockerfile", ctx / "Dockerfile")
    if kind == "router":
        shutil.copytree(REPO / "router", ctx / "router")
    else:
        (ctx / "host-ca.crt").write_bytes(host_ca_bundle())
        (ctx / "requirements.txt").write_text("\n".join(versions.NODE_PYTHON_REQUIREMENTS) + "\n")
        src = ctx / "src"
        src.mkdir()
        shutil.copy(REPO / "pyproject.toml", src)
        for pkg in ("muxlab", "mux", "hostagent", "manager"):
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp


def build(kind: str, no_cache: bool = False) -> None:
    ref = versions.ROUTER_IMAGE if kind == "router" else versions.NODE_IMAGE
    with _context(kind) as ctx:
        cmd = ["docker", "build", "-t", ref, "--label", f"muxlab.image={kind}"]
        cmd += ["--build-arg", f"FRR_APT={versions.FRR_APT}"]   # the edge's FRR, and the MUXes' bfdd
        if no_cache:
            cmd.append("--no-cache")
        say(f"building {ref}")
        proc = subprocess.run(cmd + [ctx], capture_output=True, text=True)
        if proc.returncode != 0:
            raise MuxlabError(f"building {ref} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    say(f"built {ref}")


def build_all(no_cache: bool = False) -> None:
    ensure_base()
    build("router", no_cache)
    build("node", no_cache)
