#!/usr/bin/env python3
"""The mongo image's entrypoint contract, for SecantusDB.

What it honours, as the official image's docker-entrypoint.sh does:
- arguments that start with a flag are mongod's; another command runs as given
  (`mongosh ...`);
- on the first start with an empty data directory, MONGO_INITDB_ROOT_USERNAME and
  MONGO_INITDB_ROOT_PASSWORD (or _FILE) create the root user, then every
  /docker-entrypoint-initdb.d/*.js runs in mongosh against MONGO_INITDB_DATABASE
  (default `test`) and every *.sh in sh, on a server listening on loopback only;
- then the server starts on every address (`--bind_ip_all` unless --bind_ip says
  otherwise), requiring authentication once a root user exists.

What it cannot honour, and refuses at start-up instead of pretending:
- replication: SecantusDB is one server, so --replSet and --keyFile (a replica
  set's member authentication) stop the container with a message;
- any other mongod option beyond --bind_ip, --bind_ip_all, --port, --dbpath,
  --auth and --noauth.
And what it accepts without the effect mongod gives it: a `j: true` write concern
is acknowledged, but SecantusDB does not wait for its log to reach the disk (it
would only with --sync-on-commit, on every commit); mongod sizes its cache from
the container's memory limit, SecantusDB keeps its own default.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SECANTUSD = ["/opt/secantus/bin/python", "/opt/secantus/bin/secantusd-py"]
INITDB = Path("/docker-entrypoint-initdb.d")
NOT_REPLICATED = {"--replSet", "--keyFile"}


def fail(message: str) -> None:
    sys.exit(f"mongo stand-in (SecantusDB): {message}")


def mongod_options(arguments: list[str]) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {"host": "0.0.0.0", "port": "27017", "dbpath": "/data/db", "auth": False}
    rest = list(arguments)
    while rest:
        flag, _, inline = rest.pop(0).partition("=")
        if flag in NOT_REPLICATED:
            fail(f"{flag} asks for a replica set, and SecantusDB has no replication")
        if flag == "--bind_ip_all":
            options["host"] = "0.0.0.0"
        elif flag in {"--auth", "--noauth"}:
            options["auth"] = flag == "--auth"
        elif flag in {"--bind_ip", "--port", "--dbpath"}:
            value = inline or (rest.pop(0) if rest else "")
            if not value or (flag == "--bind_ip" and "," in value):
                fail(f"{flag} needs one value, got {value!r}")
            options[{"--bind_ip": "host"}.get(flag, flag[2:])] = value
        else:
            fail(f"the mongod option {flag} is not supported")
    return options


def secret(name: str) -> str:
    """VAR or the contents of VAR_FILE, as the official image's file_env."""
    value, path = os.environ.get(name, ""), os.environ.get(f"{name}_FILE", "")
    if value and path:
        fail(f"both {name} and {name}_FILE are set (but are exclusive)")
    return Path(path).read_text().strip() if path else value


def server(options: dict[str, str | bool], host: str, auth: bool) -> list[str]:
    # --standalone: a mongod without --replSet is a standalone server; by default
    # SecantusDB calls itself a one-member replica set at its listening address,
    # which drivers elsewhere on the network would then try to reach.
    port, dbpath = str(options["port"]), str(options["dbpath"])
    command = [*SECANTUSD, "--host", host, "--port", port, "--storage-path", dbpath, "--standalone"]
    return command + ["--auth"] if auth else command


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"the server exited with {process.returncode} while being initialised")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    fail(f"the server did not listen on port {port} within {timeout:.0f} s")


def mongosh(port: str, *arguments: str, env: dict[str, str] | None = None) -> None:
    command = ["mongosh", "--host", "127.0.0.1", "--port", port, "--quiet", *arguments]
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


def initialise(options: dict[str, str | bool], root_user: str, root_password: str) -> None:
    """The first start: the root user and the init scripts, on a server only this container reaches."""
    port = str(options["port"])
    process = subprocess.Popen(server(options, "127.0.0.1", auth=False))
    try:
        wait_for_port(int(port), process)
        if root_user:
            create = (
                "db.getSiblingDB('admin').createUser({user: process.env.INITDB_ROOT_USER,"
                " pwd: process.env.INITDB_ROOT_PASSWORD, roles: [{role: 'root', db: 'admin'}]})"
            )
            mongosh(port, "--eval", create, env={"INITDB_ROOT_USER": root_user, "INITDB_ROOT_PASSWORD": root_password})
        database = os.environ.get("MONGO_INITDB_DATABASE") or "test"
        for script in sorted(INITDB.glob("*")):
            if script.suffix == ".js":
                print(f"running {script}", flush=True)
                mongosh(port, database, str(script))
            elif script.suffix == ".sh":
                print(f"running {script}", flush=True)
                subprocess.run(["sh", str(script)], check=True)
            else:
                print(f"ignoring {script}", flush=True)
    except (subprocess.CalledProcessError, SystemExit) as exc:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        # The directory was empty: emptied again, the next start initialises anew
        # instead of taking a half-made store for a finished one.
        for entry in Path(str(options["dbpath"])).iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        fail(f"initialisation failed, data directory emptied: {exc}")
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    print("initialisation done", flush=True)


def main(arguments: list[str]) -> None:
    if not arguments or arguments[0].startswith("-"):
        arguments = ["mongod", *arguments]
    if arguments[0] != "mongod":
        os.execvp(arguments[0], arguments)
    options = mongod_options(arguments[1:])
    root_user, root_password = os.environ.get("MONGO_INITDB_ROOT_USERNAME", ""), secret("MONGO_INITDB_ROOT_PASSWORD")
    if bool(root_user) != bool(root_password):
        fail("MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD must both be given, or neither")
    # WiredTiger writes this file when it creates a store: its absence means a new volume.
    fresh = not (Path(str(options["dbpath"])) / "WiredTiger").exists()
    if fresh and (root_user or any(INITDB.glob("*"))):
        initialise(options, root_user, root_password)
    command = server(options, str(options["host"]), auth=bool(options["auth"]) or bool(root_user))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
