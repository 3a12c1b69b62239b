"""The clustered stack's NATS configuration (deploy/nats/cluster.conf) on three real nats-servers.

The nodes load the file podman-compose.cluster.yml mounts, with the route
password and the routes from the environment as there, and the real server
and bot run as their users. Growing the streams from one copy to three (a
deployment moving to the cluster, NATS_REPLICAS=3) takes the paths a single
node never does: the server changes every stream's replicas and its
consumers' (the bot's included), the bot its delivered-key bucket's. Not one
of them may be refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from contract import eventstream, messaging
from devstack.processes import free_port, unmeasured_environ, wait_for_port
from tests.conftest import Stack
from tests.e2e.test_nats_permissions import INBOX_PREFIXES, PASSWORDS, REPLY, START, VIOLATION, start_environment
from tests.harness import ROOT, eventually, stack_env

CONFIG = ROOT / "deploy" / "nats" / "cluster.conf"
ROUTE_PASSWORD = "-route-test-password-89ab"  # unquoted, no string to nats-server's parser
STREAMS = (
    messaging.INBOUND_STREAM,
    messaging.OUTBOUND_STREAM,
    messaging.PARKED_STREAM,
    messaging.DEAD_STREAM,
    eventstream.EVENTS_STREAM,
)


class Node:
    def __init__(self, name: str, directory: Path) -> None:
        self.name, self.directory = name, directory
        self.port, self.cluster_port, self.monitor_port = free_port(), free_port(), free_port()
        self.log = directory / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, peers: list[str]) -> None:
        """As podman-compose.cluster.yml starts a node: through start.sh, secrets from files."""
        secrets = {f"nats_{user}_password": password for user, password in PASSWORDS.items()}
        secrets["nats_route_password"] = ROUTE_PASSWORD
        environment = start_environment(self.directory / f"{self.name}-secrets", secrets)
        environment["NATS_ROUTE_PEERS"] = " ".join(peers)
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                ["sh", str(START), "--config", str(CONFIG), "-js", "-sd", str(self.directory / self.name),
                 "--server_name", self.name, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                 "--cluster", f"nats://127.0.0.1:{self.cluster_port}"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=unmeasured_environ(**environment),
            )  # fmt: skip
        wait_for_port(self.port, 30, self.process)

    def monitor(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/{path}", timeout=5) as response:
            return json.loads(response.read())

    def ready(self) -> bool:
        routes = self.monitor("routez").get("routes") or []
        leader = (self.monitor("jsz").get("meta_cluster") or {}).get("leader")
        return len({route.get("remote_name") for route in routes} - {None}) == 2 and bool(leader)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)


@pytest.fixture
def secured_cluster(tmp_path: Path) -> Iterator[list[Node]]:
    nodes = [Node(f"n{number}", tmp_path) for number in (1, 2, 3)]
    # Every member's route address; start.sh puts the route password in each URL.
    peers = [f"127.0.0.1:{node.cluster_port}" for node in nodes]
    try:
        for node in nodes:
            node.start(peers)
        eventually(lambda: all(node.ready() for node in nodes), timeout=60, message="the cluster formed")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def cluster_env(nodes: list[Node], user: str, secrets: Path, replicas: int) -> dict[str, str]:
    password_file = secrets / f"nats_{user}_password"
    password_file.write_text(PASSWORDS[user] + "\n")
    return {
        "NATS_URL": ",".join(f"nats://{user}@127.0.0.1:{node.port}" for node in nodes),
        "NATS_PASSWORD_FILE": str(password_file),
        "NATS_REPLICAS": str(replicas),
    }


async def _replicas(nodes: list[Node], user: str, streams: tuple[str, ...]) -> dict[str, int]:
    nc = await nats.connect(
        [f"nats://127.0.0.1:{node.port}" for node in nodes],
        user=user,
        password=PASSWORDS[user],
        inbox_prefix=INBOX_PREFIXES[user],
    )
    try:
        js = nc.jetstream()
        found = {}
        for stream in streams:
            found[stream] = (await js.stream_info(stream)).config.num_replicas
            if user == "server":  # the consumers too (0: as many as the stream), listed as the server may
                for consumer in await js.consumers_info(stream):
                    found[consumer.name] = consumer.config.num_replicas or found[stream]
        return found
    finally:
        await nc.close()


def replicas(nodes: list[Node], user: str, streams: tuple[str, ...]) -> dict[str, int]:
    return asyncio.run(_replicas(nodes, user, streams))


def test_moving_to_three_replicas_as_the_stacks_users_is_refused_nothing(
    secured_cluster, mongo, telegram, mongodb_uri: str, tmp_path: Path
) -> None:
    nodes = secured_cluster
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    urls = ",".join(f"nats://127.0.0.1:{node.port}" for node in nodes)  # each process's own user comes below
    stack = Stack(stack_env(urls, mongodb_uri, telegram.base_url), tmp_path)
    try:
        # One copy of everything first, as a single-node deployment made them.
        stack.server(**cluster_env(nodes, "server", secrets, 1))
        stack.bot(**cluster_env(nodes, "bot", secrets, 1))
        telegram.send_as_user(8201, "antes", first_name="Rita")
        eventually(lambda: any(m["text"] == REPLY for m in telegram.sent(8201)), timeout=60, message="first reply")
        assert set(replicas(nodes, "server", STREAMS).values()) == {1}

        stack.stop()
        stack.server(**cluster_env(nodes, "server", secrets, 3))
        stack.bot(**cluster_env(nodes, "bot", secrets, 3))
        telegram.send_as_user(8202, "depois", first_name="Caio")
        eventually(lambda: any(m["text"] == REPLY for m in telegram.sent(8202)), timeout=60, message="reply at R3")
        grown = replicas(nodes, "server", STREAMS)
        assert set(grown.values()) == {3} and {"server-inbound", "bot-outbound"} <= grown.keys(), grown
        assert replicas(nodes, "bot", (f"KV_{messaging.DELIVERED_BUCKET}",)) == {f"KV_{messaging.DELIVERED_BUCKET}": 3}
    finally:
        stack.stop()
    for node in nodes:
        refused = [line for line in node.log.read_text().splitlines() if " Violation - " in line]
        assert refused == [], node.name
    for process in stack.processes:
        assert VIOLATION not in process.log_text().lower(), process.log_text()
        assert "Traceback" not in process.log_text(), process.log_text()
