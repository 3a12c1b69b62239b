"""Static checks of the clustered stack (podman-compose.cluster.yml).

The file is resolved by podman-compose itself and its wiring checked: three
MongoDB members made one authenticated replica set by a one-shot service the
servers wait for, three JetStream nodes routed with a password, two server
replicas and the bot given every node with three replicas per stream, all with
the single-node stack's users, secrets and hardening. tests/containers/ runs it.
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
SERVERS = ("server1", "server2")


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


def test_mongodb_members_form_one_authenticated_replica_set_initiated_once(resolved: dict) -> None:
    services = resolved["services"]
    for member in MONGO_MEMBERS:
        arguments = command(services[member])
        assert option(arguments, "--replSet") == "rs0"
        assert "--bind_ip_all" in arguments
        # The members authenticate each other with the key file, copied mode 400 for mongod.
        key = option(arguments, "--keyFile")
        assert f"install -m 400 /run/secrets/mongodb_keyfile {key}" in " ".join(services[member]["entrypoint"])
        assert "mongodb_keyfile" in services[member]["secrets"]
        env = environment(services[member])
        assert env["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongodb_root_password"
        assert "./deploy/mongo-init:/docker-entrypoint-initdb.d:ro,z" in services[member]["volumes"]
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
    # It logs in as root with the secret file's password, which is on no command line.
    assert '.auth("root", password)' in script and "/run/secrets/mongodb_root_password" in script


def test_nats_nodes_route_to_each_other_with_authentication(resolved: dict) -> None:
    services = resolved["services"]
    config = (ROOT / "deploy" / "nats" / "cluster.conf").read_text(encoding="utf-8")
    assert "include accounts.conf" in config
    assert "password: $BALCAO_NATS_ROUTE_PASSWORD" in config
    assert "routes: [$BALCAO_NATS_ROUTE_1, $BALCAO_NATS_ROUTE_2, $BALCAO_NATS_ROUTE_3]" in config
    for node in NATS_NODES:
        # deploy/nats/start.sh builds the routes and sets the passwords
        # (tests/e2e/test_nats_cluster_permissions.py starts the nodes through it).
        assert command(services[node]) == [
            "sh", "/etc/nats/balcao/start.sh", "--config", "/etc/nats/balcao/cluster.conf",
            "-js", "-sd", "/data", "--server_name", node,
        ]  # fmt: skip
        assert environment(services[node])["NATS_ROUTE_PEERS"].split() == [f"{peer}:6222" for peer in NATS_NODES]
        assert "nats_route_password" in services[node]["secrets"]
        assert "./deploy/nats:/etc/nats/balcao:ro,z" in services[node]["volumes"]


@pytest.mark.parametrize("service", [*SERVERS, "bot"])
def test_apps_connect_as_their_users_to_every_nats_node_with_three_replicas(resolved: dict, service: str) -> None:
    env = environment(resolved["services"][service])
    user = "bot" if service == "bot" else "server"
    assert [urlsplit(url).netloc for url in split_urls(env["NATS_URL"])] == [
        f"{user}@{node}:4222" for node in NATS_NODES
    ]
    assert env["NATS_PASSWORD_FILE"] == f"/run/secrets/nats_{user}_password"
    assert env["NATS_REPLICAS"] == "3"
    depends = resolved["services"][service]["depends_on"]
    assert all(depends[node]["condition"] == "service_healthy" for node in NATS_NODES)


@pytest.mark.parametrize("service", SERVERS)
def test_servers_write_to_the_replica_set_by_majority_to_the_journal(resolved: dict, service: str) -> None:
    server = resolved["services"][service]
    env = environment(server)
    uri = urlsplit(env["MONGODB_URI"])
    assert uri.netloc.split(",") == ["balcao@mongo1:27017", *[f"{member}:27017" for member in MONGO_MEMBERS[1:]]]
    options = {key: values[0] for key, values in parse_qs(uri.query).items()}
    assert options == {
        "replicaSet": "rs0",
        "w": "majority",
        "journal": "true",
        "retryWrites": "true",
        "readPreference": "primary",
    }
    assert env["MONGODB_PASSWORD_FILE"] == "/run/secrets/mongodb_app_password"
    assert server["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"


def test_two_server_replicas_publish_a_port_each(resolved: dict) -> None:
    ports = [resolved["services"][service]["ports"] for service in SERVERS]
    assert ports == [["8080:8080"], ["8081:8080"]]


@pytest.mark.parametrize("service", [*MONGO_MEMBERS, "mongo-init", *NATS_NODES, *SERVERS, "bot"])
def test_every_service_is_hardened_and_limited_as_in_the_single_node_stack(resolved: dict, service: str) -> None:
    spec = resolved["services"][service]
    assert spec.get("read_only") is True
    assert spec.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in spec.get("security_opt", [])
    assert not spec.get("cap_add") and not spec.get("privileged")
    assert int(spec.get("pids_limit", 0)) > 0 and spec.get("mem_limit")
    assert spec.get("user") or service in (*SERVERS, "bot")  # the balcao image runs as uid 10001
    assert any(str(entry).startswith("/tmp:") for entry in spec.get("tmpfs", []))
    env = environment(spec)
    # A password in the environment shows in `podman inspect`: every one is a secret file.
    assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in env), env


def test_every_secret_is_a_file_under_secrets(resolved: dict) -> None:
    for name, secret in resolved["secrets"].items():
        assert secret["file"].endswith(f"/secrets/{name}"), name


def test_the_processes_accept_the_cluster_settings(resolved: dict) -> None:
    """What the file hands the server and the bot is a valid configuration for each."""
    env = environment(resolved["services"]["server1"])
    settings = server_config.load(
        {**env, "API_TOKEN": "x" * 32, "API_TOKEN_FILE": "", "MONGODB_PASSWORD": "p", "MONGODB_PASSWORD_FILE": "",
         "NATS_PASSWORD": "p", "NATS_PASSWORD_FILE": ""}
    )  # fmt: skip
    assert settings.nats_replicas == 3
    assert len(split_urls(settings.nats_url)) == 3
