"""The whole suite on the newest Python Balcão supports: `make test` in a Debian 13 container.

Debian 13 (trixie) ships Python 3.13 and Node.js 20: the Python stand-in (a
Debian 13 root made with debootstrap and imported with podman) with make,
Node.js, npm and openssl added is all it takes; the suite then installs itself
there as on any fresh machine (make test), from PyPI and npm. With the 3.11 run
of `make test` on the host, "3.11 and newer" is tested at both ends.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.containers.podman import Podman, Timings
from tests.containers.standins import PYTHON_STANDIN, make_python_standin

IMAGE = "localhost/balcao-python313-suite:latest"
# What `make test` needs beyond Python: make, Node.js and npm (the Bruno CLI) and
# openssl (test certificates), from Debian 13's packages.
SUITE_IMAGE = f"""\
FROM {PYTHON_STANDIN}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends make nodejs npm openssl \\
    && rm -rf /var/lib/apt/lists/*
"""
# Where the host's trust store is mounted: PyPI and npm through a proxy that intercepts TLS.
CA_IN_CONTAINER = "/etc/balcao-host-ca.pem"


def test_the_whole_suite_passes_on_python_313(
    podman: Podman, work: Path, project: Path, ca_bundle: Path | None, timings: Timings
) -> None:
    make_python_standin(podman, work, timings)
    with timings.phase("build of the Python 3.13 suite image (make, Node.js, npm)"):
        context = work / "suite-context"  # the Containerfile copies nothing
        context.mkdir()
        podman.run("build", "--tag", IMAGE, "--file", "-", str(context), input=SUITE_IMAGE, timeout=1200)

    trust: list[str] = []
    if ca_bundle is not None:
        trust = ["--volume", f"{ca_bundle}:{CA_IN_CONTAINER}:ro"]
        trust += [f"--env={name}={CA_IN_CONTAINER}" for name in ("PIP_CERT", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")]
    with timings.phase("make test in the Python 3.13 container (install, lint, suite)"):
        run = podman.run(
            "run", "--rm", "--volume", f"{project}:/src", "--workdir", "/src", *trust,
            IMAGE, "make", "test", timeout=3600, check=False,
        )  # fmt: skip
    output = run.stdout + run.stderr
    # What a failure needs to be understood: pytest's FAILURES section whole, and the end.
    failures = output.find("= FAILURES =")
    if failures >= 0:
        print(output[failures : output.find("short test summary info", failures)][:60000])
    print(output[-6000:])
    version = re.search(r"creating \.venv with python3\.13 \((Python 3\.13\.\d+)\)", output)
    assert version, "the suite did not run on Python 3.13"
    summary = re.findall(r"=+ (.*(?:passed|failed).*) in ([\d.]+)s", output)
    assert summary, output[-3000:]
    timings.figures.append(f"Python 3.13 suite ({version[1]}): {summary[-1][0]} in {summary[-1][1]} s of pytest")
    assert run.returncode == 0, output[-6000:]
    assert "failed" not in summary[-1][0] and "error" not in summary[-1][0], summary
