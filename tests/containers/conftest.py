"""Fixtures of the container tests: the host, podman for this run, the stand-in and real images,
a copy of the project to run `make` in, and the fake Bot API reachable from containers.

Everything is made once per run and removed at its end, whatever happened:
containers, images, volumes, networks, the run's directory, and what podman
changed on the host (tests/containers/host.py), which is then checked.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.certificates import ServerCertificate, make_server_certificate
from devstack.processes import free_port, wait_for_port
from tests.containers.drive import started_at, violations
from tests.containers.host import HostError, HostState, install_debian_packages
from tests.containers.podman import Podman, Timings
from tests.containers.standins import PYTHON_STANDIN, make_standins
from tests.harness import BOT_TOKEN, ROOT, FakeTelegramClient

# The host's trust store: the authorities builds must trust to reach PyPI and npm
# (on this network through a proxy that intercepts TLS), passed as a build secret.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Where containers reach the host: podman names it in every container's /etc/hosts.
HOST_NAME = "host.containers.internal"

TIMINGS = Timings()


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if TIMINGS.phases or TIMINGS.figures:
        terminalreporter.section("container run: phases and figures")
        for line in TIMINGS.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def timings() -> Timings:
    return TIMINGS


@pytest.fixture(scope="session")
def podman(timings: Timings) -> Iterator[Podman]:
    """Podman with a store of this run's own; at the end everything it made is gone, host settings too."""
    with timings.phase("Debian packages (apt-get, when missing)"):
        try:
            install_debian_packages()
        except HostError as exc:
            pytest.fail(str(exc), pytrace=False)
    before = HostState.capture()
    work = Path(tempfile.mkdtemp(prefix="balcao-containers-", dir="/var/tmp"))
    running = Podman(work / "podman")
    try:
        yield running
    finally:
        with timings.phase("teardown: containers, images, store, host settings"):
            failures = running.remove_everything()
            failures += before.restore()
            shutil.rmtree(work, ignore_errors=True)
        left = before.differences(HostState.capture())
        assert not failures and not left, {"failed": failures, "left behind": left}


@pytest.fixture(scope="session")
def work(podman: Podman) -> Path:
    """The run's directory (removed with the store)."""
    return podman.root.parent


@pytest.fixture(scope="session")
def ca_bundle() -> Path | None:
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.exists() else None


@pytest.fixture(scope="session")
def standins(podman: Podman, work: Path, ca_bundle: Path | None, timings: Timings) -> None:
    make_standins(podman, work, ca_bundle, timings)


@pytest.fixture(scope="session")
def project(work: Path) -> Path:
    """A copy of the working tree (tracked and new files, nothing ignored): `make up` writes
    its secrets there, and a developer's own secrets/ and .env stay out of the run."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = work / "project"
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def make(podman: Podman, project: Path, target: str, *variables: str, env: dict[str, str] | None = None, timeout=1800):
    """`make TARGET` in the project's copy with the repository's podman-compose and Python."""
    return podman.command(
        ["make", "--no-print-directory", target, f"PODMAN_COMPOSE={ROOT / '.venv' / 'bin' / 'podman-compose'}",
         f"PYTHON={sys.executable}", *variables],
        cwd=project,
        env=env,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def image_variables(ca_bundle: Path | None) -> list[str]:
    """What `make images` and `make up` are given: the Python stand-in, and the CA for pip."""
    variables = [f"PYTHON_IMAGE={PYTHON_STANDIN}"]
    return variables + ([f"BUILD_CA_BUNDLE={ca_bundle}"] if ca_bundle else [])


@pytest.fixture(scope="session")
def images(podman: Podman, project: Path, standins: None, image_variables: list[str], timings: Timings) -> None:
    """Both targets of the Containerfile, built by `make images` on the Python stand-in."""
    with timings.phase("make images (server and cli targets, no cache)"):
        make(podman, project, "images", *image_variables)
    for image in ("localhost/balcao:latest", "localhost/balcao-cli:latest"):
        timings.figures.append(f"image size {image:<40} {podman.image_size(image) / 1e6:7.1f} MB")


@dataclass
class FakeTelegram:
    """The fake Bot API on the host, over TLS, reachable from containers."""

    client: FakeTelegramClient
    port: int
    certificate: ServerCertificate

    @property
    def url_for_containers(self) -> str:
        return f"https://{HOST_NAME}:{self.port}"


@pytest.fixture(scope="session")
def fake_telegram(work: Path) -> Iterator[FakeTelegram]:
    certificate = make_server_certificate(work / "faketelegram-tls", [HOST_NAME, "localhost"], ["127.0.0.1"])
    port = free_port()
    log = work / "faketelegram.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.faketelegram", "--host", "0.0.0.0", "--port", str(port),
             "--token", BOT_TOKEN, "--tls-cert", str(certificate.chain), "--tls-key", str(certificate.key)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, 30, process)
        trust = ssl.create_default_context(cafile=certificate.authority)
        client = FakeTelegramClient(f"https://127.0.0.1:{port}", verify=trust)
        yield FakeTelegram(client, port, certificate)
        client.http.close()
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Launch:
    """What starting a stack takes once the images are built."""

    podman: Podman
    project: Path
    image_variables: list[str]
    fake_telegram: FakeTelegram
    timings: Timings

    def environment(self, **published: int) -> dict[str, str]:
        """What `make up` (and up-cluster) reads from the environment: the bot token, the fake
        Bot API and its authority (faketelegram.yml), and the published ports (HTTP_PORT=...)."""
        return {
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_API_BASE_URL": self.fake_telegram.url_for_containers,
            "FAKE_TELEGRAM_CA": str(self.fake_telegram.certificate.authority),
            **{name: str(port) for name, port in published.items()},
        }

    @contextmanager
    def started(
        self, up: str, down: str, variables: list[str], published: dict[str, int], project_name: str, what: str
    ) -> Iterator[dict[str, str]]:
        """`make UP` (timed, and the time from the first container started to every health
        check passing); the containers by service; then their logs kept and `make DOWN`.
        At the end nats-server must have refused nothing, and no process have crashed."""
        env = self.environment(**published)
        with self.timings.phase(f"make {up}: {what}, every health check passing"):
            output = make(self.podman, self.project, up, *variables, *self.image_variables, env=env, timeout=600)
        ready = time.time()
        print(output.stdout)
        containers = self.podman.containers(project_name)
        first = min(started_at(self.podman, container) for container in containers.values())
        self.timings.figures.append(f"{project_name}: first container started to all healthy in {ready - first:.1f} s")
        yield containers
        logs = {service: self.podman.run("logs", name, check=False) for service, name in containers.items()}
        with self.timings.phase(f"make {down}"):
            make(self.podman, self.project, down, *variables, env=env, timeout=300)
        for service, log in logs.items():
            text = log.stdout + log.stderr
            assert violations(text) == [], service
            crash = text.find("Traceback")
            assert crash < 0, f"{service} logged a traceback:\n{text[max(0, crash - 2000) : crash + 4000]}"


@pytest.fixture(scope="session")
def launch(
    podman: Podman,
    project: Path,
    images: None,
    image_variables: list[str],
    fake_telegram: FakeTelegram,
    timings: Timings,
) -> Launch:
    return Launch(podman, project, image_variables, fake_telegram, timings)


@pytest.fixture
def telegram(fake_telegram: FakeTelegram) -> FakeTelegramClient:
    fake_telegram.client.reset()
    return fake_telegram.client
