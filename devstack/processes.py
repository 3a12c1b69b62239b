"""Child processes of the local stack: the real nats-server and the embedded MongoDB.

Tests and `make run` start them the same way, so what passes in tests is what a
developer runs.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


# Listening ports are taken below the kernel's ephemeral range, where no outgoing
# connection's local port lands: a port handed out by bind(0) is in that range,
# and one of the suite's many client connections may take it before it is bound.
FREE_PORT_FLOOR = 20000
_next_port: int | None = None  # where this process goes on in its slice (a random start)


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range, and not handed out lately.

    Each pytest-xdist worker takes ports from its own slice of the range, in
    turn, so no two workers hand out the same port, and a worker hands a port
    out again only after the rest of its slice: a test's server restarted on
    its port, after a kill, finds it free.
    """
    global _next_port
    low, high = _port_slice()
    size = high - low
    if _next_port is None:
        _next_port = random.randrange(size)
    for _ in range(size):
        port = low + _next_port % size
        _next_port += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the whole slice is busy: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_slice() -> tuple[int, int]:
    """This process's share of the ports between FREE_PORT_FLOOR and the ephemeral range."""
    try:
        ceiling = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ceiling = 32768  # Linux's default
    if ceiling < FREE_PORT_FLOOR + 1000:
        ceiling = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 1:
        return FREE_PORT_FLOOR, ceiling
    width = (ceiling - FREE_PORT_FLOOR) // count
    low = FREE_PORT_FLOOR + int(worker[2:]) % count * width
    return low, low + width


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before opening port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def venv_binary(name: str) -> str:
    """A console script installed beside this interpreter (nats-server ships this way)."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run `make install`")
    return found


def end_process(process: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send `sig` to a child that still runs and wait for it; SIGKILL it after `timeout`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# What makes coverage start in a Python child process (its `patch = ["subprocess"]`).
UNMEASURED = ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")


def unmeasured_environ(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, for a child that coverage must not trace.

    For third-party servers, which have nothing of ours to measure, and for a
    child that will be SIGKILLed: coverage saves its data at exit, so tracing a
    process that never exits cleanly costs CPU and adds nothing to the figure.
    """
    env = {**os.environ, **extra}
    for name in UNMEASURED:
        env.pop(name, None)
    return env


@dataclass(kw_only=True)
class ChildServer:
    """A server process bound to a fixed port, restartable on the same data."""

    name: str
    data_dir: Path
    port: int = 0
    startup_timeout: float = 30.0
    log_file: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)  # added to this process's own
    # In a session of its own, a Ctrl-C in the terminal does not reach the server:
    # its owner stops it after the processes that use it (see devstack/__main__.py).
    own_session: bool = False
    process: subprocess.Popen | None = field(default=None, init=False)

    def command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        if not self.port:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Third-party servers: tracing SecantusDB's Python would slow every query.
        env = unmeasured_environ(**self.environment)
        output = open(self.log_file, "ab") if self.log_file else None
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=self.own_session,
            )
        finally:
            if output is not None:
                output.close()
        wait_for_port(self.port, self.startup_timeout, self.process)
        log.info("%s listening on 127.0.0.1:%d", self.name, self.port)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        end_process(self.process, signal.SIGTERM, timeout)
        self.process = None
        log.info("%s stopped", self.name)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(kw_only=True)
class NatsServer(ChildServer):
    name: str = "nats-server"
    # A configuration file (users, permissions); the flags below override its
    # ports and store. Its $VARIABLES resolve from `environment`.
    config_file: Path | None = None
    # Monitoring (/healthz, /connz). The stacks' files put it on the container's
    # port 8222; here each server gets a port of its own, so servers side by
    # side do not collide.
    monitor_port: int = field(default_factory=free_port)
    # What runs nats-server, given its options: the binary itself, or a script
    # that becomes it (deploy/nats/start.sh, as the compose files run it).
    launcher: tuple[str, ...] = ()

    def command(self) -> list[str]:
        config = ["--config", str(self.config_file)] if self.config_file else []
        if self.config_file:
            config += ["-m", str(self.monitor_port)]
        return [
            *(self.launcher or (venv_binary("nats-server"),)),
            *config,
            "-js",
            "-sd",
            str(self.data_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass(kw_only=True)
class SecantusServer(ChildServer):
    """SecantusDB: a MongoDB-wire server on WiredTiger; development and tests only (GPL)."""

    name: str = "secantusdb"
    # SecantusDB's defaults (1 GB cache, 100,000 oplog entries) stall bulk loads
    # past about 120,000 sessions; large imports and benchmarks raise both.
    cache_size: str | None = None
    oplog_max_entries: int | None = None

    def command(self) -> list[str]:
        command = [
            sys.executable,
            venv_binary("secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.data_dir),
            "--log-level",
            "WARNING",
        ]
        if self.cache_size:
            command += ["--cache-size", self.cache_size]
        if self.oplog_max_entries:
            command += ["--oplog-max-entries", str(self.oplog_max_entries)]
        return command

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/balcao"
