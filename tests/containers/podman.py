"""Podman for one test run: its own store, network configuration and state, under one directory.

Nothing under /etc is changed: CONTAINERS_CONF and CONTAINERS_STORAGE_CONF point
at files written here, so the run's images, containers, volumes and networks
live in the run's directory and go with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The settings this kind of host needs (no systemd; root without CAP_SYS_RESOURCE;
# mixed cgroup v1/v2 controllers, which break crun), each set for this run only.
CONTAINERS_CONF = """\
[containers]
# Root may not raise its own limits here (no CAP_SYS_RESOURCE): containers get
# these instead of the defaults podman would try to set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "netavark"
network_config_dir = "{root}/networks"

[engine]
# crun fails on mixed cgroup v1/v2 controllers; runc with cgroupfs works.
runtime = "runc"
cgroup_manager = "cgroupfs"
# No journald and no systemd: events go to a file, health checks are run by hand.
events_logger = "file"
tmp_dir = "{root}/tmp"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/runroot"
"""


class PodmanError(Exception):
    pass


class Podman:
    """`podman` (and podman-compose, make) run with this run's configuration."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "containers.conf").write_text(CONTAINERS_CONF.format(root=root))
        (root / "storage.conf").write_text(STORAGE_CONF.format(root=root))
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            # HEALTHCHECK survives only in docker-format images.
            "BUILDAH_FORMAT": "docker",
        }

    def run(
        self, *args: str, timeout: float = 300, check: bool = True, input: str | bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.command(["podman", *args], timeout=timeout, check=check, input=input)

    def command(
        self,
        command: list[str],
        *,
        timeout: float = 300,
        check: bool = True,
        input: str | bytes | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Any command (make, podman-compose) with this run's podman configuration in its environment."""
        run = subprocess.run(
            command,
            capture_output=True,
            text=not isinstance(input, bytes),
            input=input,
            timeout=timeout,
            check=False,
            cwd=cwd,
            env={**self.env, **(env or {})},
        )
        stdout = run.stdout if isinstance(run.stdout, str) else run.stdout.decode(errors="replace")
        stderr = run.stderr if isinstance(run.stderr, str) else run.stderr.decode(errors="replace")
        if check and run.returncode != 0:
            raise PodmanError(f"{' '.join(command)} exited {run.returncode}:\n{stdout[-4000:]}\n{stderr[-4000:]}")
        return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("inspect", name).stdout)[0]

    def image_size(self, image: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def containers(self, project: str) -> dict[str, str]:
        """Service name -> container name, for the containers a compose project made."""
        listing = self.run("ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "json")
        found = {}
        for container in json.loads(listing.stdout or "[]"):
            service = container.get("Labels", {}).get("com.docker.compose.service")
            if service:
                found[service] = container["Names"][0]
        return found

    def healthy(self, container: str, timeout: float = 120) -> float:
        """Run the container's health check until it passes (no systemd runs it here); seconds waited."""
        started = time.monotonic()
        while True:
            check = self.run("healthcheck", "run", container, check=False, timeout=60)
            if check.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                logs = self.run("logs", "--tail", "40", container, check=False)
                output = f"{check.stdout}{check.stderr}\n{logs.stdout}{logs.stderr}"
                raise PodmanError(f"{container} not healthy after {timeout} s: {output}")
            time.sleep(1)

    def remove_everything(self) -> list[str]:
        """Stop and remove every container, pod, volume, network and image of the run; the steps that failed."""
        failures = []
        for args in (
            ("pod", "rm", "--all", "--force"),
            ("rm", "--all", "--force", "--time", "0"),
            ("volume", "rm", "--all", "--force"),
            ("network", "prune", "--force"),
            ("rmi", "--all", "--force"),
        ):
            run = self.run(*args, check=False, timeout=300)
            if run.returncode != 0:
                failures.append(f"podman {' '.join(args)}: {run.stderr.strip()[-500:]}")
        return failures

    def delete(self) -> None:
        """Remove the run's directory (its store must be unmounted first)."""
        shutil.rmtree(self.root, ignore_errors=True)


class Timings:
    """How long each phase of a run took, printed at the end with the machine's load."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float, str]] = []
        self.figures: list[str] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - started, load_average()))

    def lines(self) -> list[str]:
        return [f"{name:<48} {seconds:7.1f} s   load {load}" for name, seconds, load in self.phases] + self.figures


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
