"""The clustered stack, run as far as the stand-ins allow: three authenticated NATS nodes with
every stream on three of them, two server replicas and the bot, started by `make up-cluster`.

SecantusDB has no replication, so the run has one MongoDB member
(tests/containers/cluster-one-mongo.yml says so); everything else is
podman-compose.cluster.yml's own, hardening included. A NATS node is SIGKILLed
while contacts write, and brought back: nothing is lost, nothing answered twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.processes import free_port
from tests.containers.conftest import Launch
from tests.containers.drive import ReplyWatch, Writer, assert_hardened, settle
from tests.containers.podman import Podman, Timings
from tests.containers.standins import PYTHON_STANDIN
from tests.harness import FakeTelegramClient, eventually

PROJECT = "balcao-cluster"
NETWORK = f"{PROJECT}_default"
COMPOSE_FILES = (
    "podman-compose.cluster.yml devstack/standins/podman-compose.cluster.standins.yml "
    "tests/containers/faketelegram.yml tests/containers/cluster-one-mongo.yml"
)
SERVICES = ("mongo1", "nats1", "nats2", "nats3", "server1", "server2", "bot")
NATS_NODES = ("nats1", "nats2", "nats3")
STREAMS = ("BALCAO_INBOUND", "BALCAO_OUTBOUND", "BALCAO_PARKED", "BALCAO_DEAD", "BALCAO_EVENTS", "KV_BALCAO_DELIVERED")


@dataclass
class Cluster:
    project: Path
    ports: tuple[int, int]
    containers: dict[str, str]


@pytest.fixture(scope="module")
def cluster(launch: Launch) -> Iterator[Cluster]:
    ports = (free_port(), free_port())
    # One MongoDB member and no replica set to initiate: cluster-one-mongo.yml says why.
    variables = [f"CLUSTER_COMPOSE_FILES={COMPOSE_FILES}", "CLUSTER_MONGO=mongo1", "CLUSTER_MONGO_INIT="]
    published = {"HTTP_PORT": ports[0], "HTTP_PORT_2": ports[1]}
    what = "3 NATS nodes, 1 MongoDB, 2 servers, bot"
    with launch.started("up-cluster", "down-cluster", variables, published, PROJECT, what) as containers:
        assert set(containers) == set(SERVICES), containers
        yield Cluster(launch.project, ports, containers)


def test_every_container_of_the_cluster_is_hardened(podman: Podman, cluster: Cluster) -> None:
    for service, container in cluster.containers.items():
        assert_hardened(podman, service, container)


def probe(podman: Podman, script: str) -> dict:
    """A Python script run in a throw-away container on the cluster's network; its JSON answer."""
    run = podman.run("run", "--rm", "--network", NETWORK, PYTHON_STANDIN, "python", "-c", script, timeout=120)
    return json.loads(run.stdout)


# From another container on the network: the first line each back end answers a
# client (or a would-be cluster member) that brings no credentials.
UNAUTHENTICATED = """
import json, socket
def first_answer(host, port, greeting):
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            reader = sock.makefile("rb")
            reader.readline()  # INFO
            sock.sendall(greeting)
            return reader.readline().decode().strip()
    except OSError as exc:
        return type(exc).__name__
answers = {}
for node in ("nats1", "nats2", "nats3"):
    answers[node + ":4222"] = first_answer(node, 4222, b'CONNECT {"verbose":false}\\r\\nPING\\r\\n')
    answers[node + ":6222"] = first_answer(node, 6222, b'CONNECT {"verbose":false,"name":"intruder"}\\r\\nPING\\r\\n')
    try:
        socket.create_connection((node, 8222), timeout=5).close()
        answers[node + ":8222"] = "open"
    except OSError as exc:
        answers[node + ":8222"] = type(exc).__name__
print(json.dumps(answers))
"""


def test_nothing_on_the_network_answers_without_credentials(podman: Podman, cluster: Cluster) -> None:
    answers = probe(podman, UNAUTHENTICATED)
    for node in NATS_NODES:
        assert "authorization violation" in answers[f"{node}:4222"].lower(), answers  # clients
        assert "authorization violation" in answers[f"{node}:6222"].lower(), answers  # routes
        assert answers[f"{node}:8222"] == "ConnectionRefusedError", answers  # monitoring: loopback only
    mongo = podman.run(
        "run", "--rm", "--network", NETWORK, "localhost/balcao-standin-mongo:latest", "mongosh", "--quiet",
        "--host", "mongo1", "--eval", "db.getSiblingDB('balcao').sessions.findOne()", check=False, timeout=120,
    )  # fmt: skip
    assert mongo.returncode != 0 and "requires authentication" in mongo.stdout + mongo.stderr


# Run in a server replica or the bot, as its NATS user: how each stream is replicated.
REPLICATION = """
import asyncio, json, nats
async def main():
    password = open("/run/secrets/nats_%(user)s_password").read().strip()
    nc = await nats.connect("nats://nats1:4222", user="%(user)s", password=password, inbox_prefix="_INBOX_%(user)s")
    js = nc.jetstream()
    found = {}
    for stream in %(streams)r:
        info = await js.stream_info(stream)
        found[stream] = {"replicas": info.config.num_replicas, "leader": info.cluster.leader,
                         "current": sum(1 for peer in info.cluster.replicas or [] if peer.current)}
    await nc.close()
    print(json.dumps(found))
asyncio.run(main())
"""


def replication(podman: Podman, cluster: Cluster, streams: tuple[str, ...]) -> dict:
    """Each stream's replicas, leader and current followers; the bot's bucket read as the bot."""
    found = {}
    for user, container in (("server", "server1"), ("bot", "bot")):
        mine = [stream for stream in streams if stream.startswith("KV_") == (user == "bot")]
        if mine:
            script = REPLICATION % {"user": user, "streams": mine}
            found |= json.loads(podman.run("exec", cluster.containers[container], "python", "-c", script).stdout)
    return found


def test_every_stream_is_kept_on_three_nodes(podman: Podman, cluster: Cluster) -> None:
    # The bot's bucket and stream declarations need the bot up; the events stream the server's.
    found = eventually(lambda: replication(podman, cluster, STREAMS), timeout=60)
    for stream, state in found.items():
        assert state["replicas"] == 3 and state["leader"] in NATS_NODES and state["current"] == 2, (stream, state)


def stored(port: int) -> float:
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("balcao_messages_stored_total")
    )


def test_a_nats_node_killed_mid_traffic_loses_nothing_and_answers_nothing_twice(
    podman: Podman, cluster: Cluster, telegram: FakeTelegramClient, timings: Timings
) -> None:
    leader = replication(podman, cluster, ("BALCAO_INBOUND",))["BALCAO_INBOUND"]["leader"]
    victim = cluster.containers[leader]  # the inbound stream's leader: the worst node to lose
    chats = list(range(6101, 6121))  # each chat writes once every 2 s: within Telegram's 1/s per chat
    with ReplyWatch(telegram) as watch, Writer(telegram, chats, interval=0.1) as writer:
        time.sleep(10)
        podman.run("kill", "--signal", "KILL", victim)
        killed_at = time.monotonic()
        time.sleep(10)
        if podman.inspect(victim)["State"]["Status"] != "running":
            podman.run("start", victim)
        podman.healthy(victim)
        back_after = time.monotonic() - killed_at
        time.sleep(10)
    eventually(writer.all_answered, timeout=240, interval=1, message="every message answered")
    assert settle(podman, cluster.containers["server1"], writer.answered) == dict(writer.sent)
    gap = watch.longest_gap()
    timings.figures.append(
        f"cluster: {sum(writer.sent.values())} messages, {leader} (inbound leader) SIGKILLed and back "
        f"after {back_after:.1f} s; longest gap between replies {gap:.1f} s"
    )
    # Both replicas took part in the intake (JetStream splits a shared durable consumer).
    assert stored(cluster.ports[0]) > 0 and stored(cluster.ports[1]) > 0
    # Every stream has its three copies current again.
    eventually(
        lambda: all(s["current"] == 2 for s in replication(podman, cluster, STREAMS).values()),
        timeout=120,
        message="every stream's copies current again",
    )
