"""Static checks of the clustered stack (podman-compose.cluster.yml).

Containers cannot run here, so the file is resolved by podman-compose itself and
its wiring checked: three MongoDB members made one replica set by a one-shot
service the server waits for, three routed JetStream nodes, and the server and
bot given every member with three replicas per stream.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from runtime.jetstream import split_urls
from server import config as server_config
from tests.test_packaging import COMPOSE_FILE, SCRIPTS, command, documented, environment

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILE = ROOT / "podman-compose.cluster.yml"
MONGO_MEMBERS = ("mongo1", "mongo2", "mongo3")
NATS_NODES = ("nats1", "nats2", "nats3")


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as `podman-compose config` merges and interpolates it."""
    env = {key: value for key, value in os.environ.items() if key not in documented()}
    run = subprocess.run(
        [str(SCRIPTS / "podman-compose"), "--dry-run", "--env-file", os.devnull, "-f", str(CLUSTER_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def test_the_single_node_stack_stays_as_it_is() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert {"mongo", "nats", "server", "bot"} == services.keys()


def test_mongodb_members_form_one_replica_set_initiated_once(resolved: dict) -> None:
    services = resolved["services"]
    for member in MONGO_MEMBERS:
        arguments = command(services[member])
        assert option(arguments, "--replSet") == "rs0"
        assert "--bind_ip_all" in arguments
        assert services[member]["healthcheck"]["test"]
    volumes = {services[m]["volumes"][0].split(":")[0] for m in MONGO_MEMBERS}
    assert len(volumes) == 3  # each member its own data
    init = services["mongo-init"]
    assert init["restart"] == "no"
    assert {m: init["depends_on"][m]["condition"] for m in MONGO_MEMBERS} == dict.fromkeys(
        MONGO_MEMBERS, "service_healthy"
    )
    script = command(init)[-1]
    assert "rs.initiate" in script and "try { rs.status() }" in script  # idempotent
    assert all(f'host: "{member}:27017"' in script for member in MONGO_MEMBERS)
    assert "db.hello().primary" in script  # exits only once a primary exists


def test_nats_nodes_route_to_each_other_with_jetstream(resolved: dict) -> None:
    services = resolved["services"]
    names = set()
    for node in NATS_NODES:
        arguments = command(services[node])
        assert "-js" in arguments
        assert option(arguments, "--cluster_name") == "balcao"
        assert option(arguments, "--cluster") == "nats://0.0.0.0:6222"
        names.add(option(arguments, "--server_name"))
        routes = {urlsplit(url).hostname for url in option(arguments, "--routes").split(",")}
        assert routes == set(NATS_NODES) - {node}
    assert names == set(NATS_NODES)


@pytest.mark.parametrize("service", ["server", "bot"])
def test_apps_get_every_nats_node_and_three_replicas(resolved: dict, service: str) -> None:
    env = environment(resolved["services"][service])
    assert [urlsplit(url).netloc for url in split_urls(env["NATS_URL"])] == [f"{node}:4222" for node in NATS_NODES]
    assert env["NATS_REPLICAS"] == "3"
    depends = resolved["services"][service]["depends_on"]
    assert all(depends[node]["condition"] == "service_healthy" for node in NATS_NODES)


def test_server_writes_to_the_replica_set_by_majority(resolved: dict) -> None:
    server = resolved["services"]["server"]
    uri = urlsplit(environment(server)["MONGODB_URI"])
    assert uri.netloc.split(",") == [f"{member}:27017" for member in MONGO_MEMBERS]
    options = {key: values[0] for key, values in parse_qs(uri.query).items()}
    assert options == {"replicaSet": "rs0", "w": "majority", "retryWrites": "true", "readPreference": "primary"}
    assert server["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"


def test_the_processes_accept_the_cluster_settings(resolved: dict) -> None:
    """What the file hands the server is a valid configuration for it."""
    env = environment(resolved["services"]["server"])
    settings = server_config.load({**env, "API_TOKEN": "x" * 32, "API_TOKEN_FILE": ""})
    assert settings.nats_replicas == 3
    assert len(split_urls(settings.nats_url)) == 3
