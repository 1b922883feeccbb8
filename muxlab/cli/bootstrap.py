"""Prerequisites, idempotently: a running Docker engine and containerlab (plus mmdebstrap,
which builds the base image where no registry is reachable, and ovsdb-server, which the unit
tests of the control plane's TLS and RBAC run for real). Prints what it did."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import versions
from ..errors import MuxlabError

CLAB_INSTALL_DOC = ("install containerlab as its docs say: "
                    'bash -c "$(curl -sL https://get.containerlab.dev)" -- -v ' + versions.CONTAINERLAB.lstrip("v")
                    + "  (https://containerlab.dev/install/)")


def say(msg: str) -> None:
    print(f"muxlab bootstrap: {msg}", flush=True)


def is_debian() -> bool:
    return Path("/etc/debian_version").exists()


def apt_install(*pkgs: str) -> None:
    say(f"installing {' '.join(pkgs)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *pkgs]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise MuxlabError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")


def docker_running() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


def ensure_docker() -> None:
    if docker_running():
        say("docker engine running")
        return
    if not shutil.which("dockerd"):
        if not is_debian():
            raise MuxlabError("no Docker engine: install Docker (https://docs.docker.com/engine/install/) and start it")
        apt_install("docker.io")
    if Path("/run/systemd/system").exists() and shutil.which("systemctl"):
        say("starting docker with systemctl")
        subprocess.run(["systemctl", "start", "docker"], capture_output=True)
    if not docker_running():
        say("starting dockerd in the background (log: /var/log/muxlab-dockerd.log)")
        log = open("/var/log/muxlab-dockerd.log", "ab")
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if docker_running():
            say("docker engine running")
            return
        time.sleep(1)
    raise MuxlabError("dockerd did not come up within 90 s: see /var/log/muxlab-dockerd.log")


def ensure_mmdebstrap() -> None:
    if shutil.which("mmdebstrap"):
        return
    if is_debian():
        apt_install("mmdebstrap")
    else:
        say("mmdebstrap not available: the base image must be pullable")


def ensure_ovsdb_server() -> None:
    """For the tests: tests/unit/test_ovsdb_security.py runs a real ovsdb-server (TLS, RBAC)."""
    if shutil.which("ovsdb-server") or Path("/usr/sbin/ovsdb-server").exists():
        return
    if is_debian():
        apt_install("openvswitch-common")
    else:
        say("ovsdb-server not available: the OVSDB security tests will be skipped")


# Kernels built without loadable-module support have no /proc/modules; containerlab
# v0.79.0 fails to deploy there ("open /proc/modules: no such file or directory") even
# though everything it needs is built in. On such kernels only, muxlab builds the pinned
# release with a one-line fix: a missing /proc/modules means "built in".
NO_MODULES_MARK = "muxlab-nomodules"
_MODULES_PATCH = (
    'f, err := os.Open("/proc/modules")\n\tif err != nil {\n\t\treturn false, err\n\t}',
    'f, err := os.Open("/proc/modules")\n\tif os.IsNotExist(err) {\n\t\treturn true, nil // no loadable-module support: all is built in\n\t}\n\tif err != nil {\n\t\treturn false, err\n\t}',
)


def kernel_has_modules() -> bool:
    return Path("/proc/modules").exists()


def _go(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _go_build_containerlab(dest: Path) -> None:
    """Build the pinned containerlab as the dependency of a throwaway module. (`go install
    pkg@version` also asks the module proxy for the version list, to check deprecation;
    some proxies refuse that list while serving the version itself.)"""
    version = versions.CONTAINERLAB
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    work = Path(tempfile.mkdtemp(prefix="muxlab-clab-build-"))
    gomod = f"module muxlab.local/clabbuild\n\ngo 1.26\n\nrequire github.com/srl-labs/containerlab {version}\n"
    label = version.lstrip("v")
    if not kernel_has_modules():
        proc = _go(["mod", "download", "-json", f"github.com/srl-labs/containerlab@{version}"], work, env)
        if proc.returncode != 0:
            raise MuxlabError(f"could not download containerlab {version}:\n{proc.stderr[-3000:]}\n{CLAB_INSTALL_DOC}")
        src = Path(json.loads(proc.stdout)["Dir"])
        patched = work / "containerlab-src"
        shutil.copytree(src, patched)
        subprocess.run(["chmod", "-R", "u+w", str(patched)], check=True)
        kmod = patched / "utils" / "kernel_module.go"
        text = kmod.read_text()
        if _MODULES_PATCH[0] not in text:
            raise MuxlabError(f"containerlab {version}: the /proc/modules fix no longer applies; see muxlab/bootstrap.py")
        kmod.write_text(text.replace(_MODULES_PATCH[0], _MODULES_PATCH[1], 1))
        gomod += "\nreplace github.com/srl-labs/containerlab => ./containerlab-src\n"
        label += "+" + NO_MODULES_MARK
        say("this kernel has no /proc/modules (no loadable-module support): building containerlab "
            f"{version} with the one-line fix that treats that as 'built in'")
    (work / "go.mod").write_text(gomod)
    ldflags = f"-X github.com/srl-labs/containerlab/cmd.Version={label}"
    proc = _go(["build", "-ldflags", ldflags, "-o", str(dest), "github.com/srl-labs/containerlab"], work, env)
    if proc.returncode != 0:
        raise MuxlabError(f"could not build containerlab {version}:\n{proc.stderr[-3000:]}\n{CLAB_INSTALL_DOC}")
    shutil.rmtree(work, ignore_errors=True)


def containerlab_version(path: str) -> str:
    proc = subprocess.run([path, "version"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.strip().startswith("version:"):
            return line.split(":", 1)[1].strip()
    return ""


def ensure_containerlab() -> None:
    found = shutil.which("containerlab")
    if found:
        have = containerlab_version(found)
        if kernel_has_modules() or NO_MODULES_MARK in have:
            say(f"containerlab present: {found} ({have or 'unknown version'})")
            return
        say(f"containerlab {have or '?'} at {found} cannot deploy on this kernel (no /proc/modules); rebuilding it")
    if not shutil.which("go"):
        raise MuxlabError(f"containerlab is missing and Go is not installed: {CLAB_INSTALL_DOC}")
    dest = Path(found or "/usr/local/bin/containerlab")
    say(f"installing containerlab {versions.CONTAINERLAB} with go (about a minute)")
    _go_build_containerlab(dest)
    say(f"installed {dest} ({containerlab_version(str(dest))})")


def run() -> None:
    if os.geteuid() != 0:
        raise MuxlabError("muxlab needs root (containerlab and Docker networking): run it with sudo")
    ensure_docker()
    ensure_mmdebstrap()
    ensure_ovsdb_server()
    ensure_containerlab()
