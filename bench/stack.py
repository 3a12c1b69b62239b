"""What a benchmark run stands on: fresh servers, the programs it starts, and their counters.

Every run gets a nats-server and a MongoDB-wire server of its own (SecantusDB,
or a fresh database on MONGODB_URI), so no run inherits another's data,
consumers or de-duplication window. nats-server has its monitoring port on,
so the messages each client connection sent and received can be read from
`/connz`; each program's CPU comes from /proc; the MongoDB commands a program
sends are counted by running it under `bench.probe`.

Durability: by default JetStream syncs its files every two minutes (its
default `sync_interval`) and MongoDB acknowledges a write once applied
(Balcão asks for `w: majority`; on one SecantusDB node that is the node
itself). `nats_sync` has nats-server fsync every write (`jetstream {
sync_interval: always }`); `mongo_journal` asks MongoDB to journal each write
before acknowledging it (`journal=true`, `j: true`; SecantusDB then fsyncs
its log on every commit), which is what `w: majority` implies on a mongod
replica set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pymongo

from bench import probe
from bench.method import ROOT, process_cpu_seconds
from devstack.processes import NatsServer, SecantusServer, end_process, unmeasured_environ

API_TOKEN = "bench-api-token-0123456789abcdef-0123456789"
# With the default 1 GB WiredTiger cache, eviction stalls writes for minutes once
# the sessions' name-key index outgrows it (past ~100,000 sessions), and the
# default oplog cap of 100,000 entries has it pruning on every write.
LARGE = {"cache_size": "6G", "oplog_max_entries": 5_000_000}


@dataclass(frozen=True)
class Durability:
    nats_sync: bool = False
    mongo_journal: bool = False

    @property
    def name(self) -> str:
        parts = [*(["nats-sync"] if self.nats_sync else []), *(["mongo-journal"] if self.mongo_journal else [])]
        return "+".join(parts) or "default"

    @property
    def description(self) -> str:
        nats = "JetStream fsync on every write (sync_interval: always)" if self.nats_sync else "JetStream default sync"
        mongo = "MongoDB j: true (fsync per write)" if self.mongo_journal else "MongoDB w: majority, j: false"
        return f"{nats}; {mongo}"


DURABILITY = {
    d.name: d
    for d in (Durability(), Durability(nats_sync=True), Durability(mongo_journal=True), Durability(True, True))
}


@dataclass
class Stack:
    work: Path
    nats: NatsServer
    mongo: SecantusServer | None
    mongodb_uri: str
    monitor_port: int

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def connections(self, name: str) -> dict[str, int]:
        """Messages sent (`in_msgs`: publishes, requests, acks) and received by the client
        connections called `name`, as nats-server counts them."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/connz?limit=1024", timeout=10) as answer:
            found = [c for c in json.load(answer)["connections"] if c.get("name") == name]
        return {
            "in_msgs": sum(c["in_msgs"] for c in found),
            "out_msgs": sum(c["out_msgs"] for c in found),
            "connections": len(found),
        }

    def server_cpu(self) -> dict[str, float]:
        """CPU-seconds so far of nats-server and of SecantusDB (when it is ours)."""
        figures = {"nats-server": process_cpu_seconds(self.nats.process.pid)}
        if self.mongo is not None and self.mongo.process is not None:
            figures["mongodb"] = process_cpu_seconds(self.mongo.process.pid)
        return figures

    def database(self) -> pymongo.database.Database:
        return pymongo.MongoClient(self.mongodb_uri, tz_aware=True).get_default_database()


def _with_database(uri: str, name: str, **options: str) -> str:
    parts = urlsplit(uri)
    query = "&".join([*filter(None, [parts.query]), *(f"{key}={value}" for key, value in options.items())])
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", query, parts.fragment))


@contextlib.contextmanager
def fresh_stack(
    work: Path, durability: Durability = Durability(), *, large: bool = False, mongo_dir: Path | None = None
) -> Iterator[Stack]:
    """A nats-server and an empty database, both new, under `work` (SecantusDB's data
    in `mongo_dir` instead, when given: a large load kept for the next run)."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "nats.conf"
    # A configuration file, even an empty one, turns on the monitoring port (`/connz`).
    config.write_text("jetstream {\n  sync_interval: always\n}\n" if durability.nats_sync else "")
    nats_server = NatsServer(data_dir=work / "nats", config_file=config, log_file=work / "nats.log")
    monitor = nats_server.monitor_port
    external = os.environ.get("MONGODB_URI")
    options = {"journal": "true"} if durability.mongo_journal else {}
    mongo = None
    if external:
        uri = _with_database(external, f"bench_{uuid.uuid4().hex[:12]}", **options)
    else:
        mongo = SecantusServer(
            data_dir=mongo_dir or work / "mongo", log_file=work / "mongo.log", **(LARGE if large else {})
        )
    nats_server.start()
    try:
        if mongo is not None:
            mongo.start()
            uri = _with_database(mongo.uri, "balcao", **options)
        yield Stack(work, nats_server, mongo, uri, monitor)
    finally:
        if external:
            with contextlib.suppress(pymongo.errors.PyMongoError):
                client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
                client.drop_database(client.get_default_database().name)
        nats_server.stop()
        if mongo is not None:
            mongo.stop()


@dataclass
class Program:
    """A process a run started: Balcão's server or bot, or a reference."""

    name: str
    popen: subprocess.Popen
    counts_file: Path | None = None
    log_path: Path | None = None
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.popen.pid)

    def mongo_commands(self) -> dict[str, int]:
        """The MongoDB commands it sent so far, by name (asked of it while it runs)."""
        if not self.counts_file:
            return {}
        if self.popen.poll() is not None:
            return probe.read(self.counts_file)  # written at its exit
        return probe.request(self.popen.pid, self.counts_file)

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{log}")

    def stop(self, timeout: float = 30.0) -> None:
        import signal

        end_process(self.popen, signal.SIGTERM, timeout)


def launch(
    name: str,
    module: str,
    *args: str,
    work: Path,
    env: dict[str, str],
    count_mongo: bool = False,
    stdout: int | None = None,
) -> Program:
    """Start `python -m module args` (under bench.probe when counting MongoDB commands).

    Coverage never traces it: a benchmark measures the program, not a tracer.
    """
    log_path = work / f"{name}.log"
    counts = work / f"{name}.commands.json" if count_mongo else None
    command = [sys.executable, "-m", *(["bench.probe", str(counts)] if counts else []), module, *args]
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=unmeasured_environ(**env),
            stdout=stdout if stdout is not None else log,
            stderr=log,
            text=stdout is not None,
        )
    return Program(name, popen, counts, log_path)


def balcao_env(stack: Stack, port: int, **extra: str) -> dict[str, str]:
    """The environment Balcão's server and bot start with in a benchmark."""
    return {
        "NATS_URL": stack.nats_url,
        "MONGODB_URI": stack.mongodb_uri,
        "HTTP_PORT": str(port),
        "API_TOKEN": API_TOKEN,
        "LOG_LEVEL": "warning",
        **extra,
    }


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    commands: dict[str, dict[str, int]]
    nats: dict[str, dict[str, int]]

    def totals(self) -> dict[str, float]:
        """Every counter as one flat mapping: `cpu/<program>`, `mongo/<program>/<command>`, `nats/<program>/...`."""
        flat = {f"cpu/{name}": value for name, value in self.cpu.items()}
        for name, counts in self.commands.items():
            flat |= {f"mongo/{name}/{command}": count for command, count in counts.items()}
        for name, counts in self.nats.items():
            flat |= {f"nats/{name}/{direction}": counts[direction] for direction in ("in_msgs", "out_msgs")}
        return flat


def snapshot(stack: Stack, programs: list[Program], connections: dict[str, str]) -> Snapshot:
    """CPU of the programs and servers, the programs' MongoDB commands, and the messages
    their NATS connections (`connections`: program name -> connection name) sent and got."""
    cpu = {program.name: program.cpu_seconds() for program in programs} | stack.server_cpu()
    commands = {program.name: program.mongo_commands() for program in programs if program.counts_file}
    nats_counts = {program: stack.connections(connection) for program, connection in connections.items()}
    return Snapshot(time.monotonic(), cpu, commands, nats_counts)


# How long the processes are watched idle before a timed window: what they do
# meanwhile (the outbox relay's and the reaper's polls, empty fetches) goes on
# during the window too, and is taken out of the per-message figures.
IDLE_WINDOW = 2.0


async def idle_then_snapshot(stack: Stack, programs: list[Program], connections: dict[str, str]) -> tuple:
    """(what the processes did per second while idle, the snapshot that starts the timed window)."""
    first = snapshot(stack, programs, connections)
    await asyncio.sleep(IDLE_WINDOW)
    second = snapshot(stack, programs, connections)
    return _rates(first, second), second


def _rates(first: Snapshot, second: Snapshot) -> dict[str, float]:
    seconds = second.at - first.at
    before, after = first.totals(), second.totals()
    return {key: (value - before.get(key, 0)) / seconds for key, value in after.items()}


def usage(before: Snapshot, after: Snapshot, messages: int, idle: dict[str, float] | None = None) -> dict[str, dict]:
    """What the window between two snapshots cost per message (or per 1,000 messages), less what
    the processes do when idle (`idle`: rates from idle_then_snapshot) over as long a time."""
    seconds = after.at - before.at
    start, end = before.totals(), after.totals()
    net = {key: max(value - start.get(key, 0) - (idle or {}).get(key, 0) * seconds, 0) for key, value in end.items()}
    commands: dict[str, dict[str, float]] = {}
    for key, value in net.items():
        kind, name, *rest = key.split("/")
        if kind == "mongo" and value:
            commands.setdefault(name, {})[rest[0]] = round(value, 1)
    return {
        "cpu_seconds_per_1000": {name: round(net[f"cpu/{name}"] * 1000 / messages, 3) for name in after.cpu},
        "mongo_commands": commands,
        "mongo_commands_per_message": {
            name: round(sum(commands.get(name, {}).values()) / messages, 4) for name in after.commands
        },
        "nats_messages_sent_per_message": {
            name: round(net[f"nats/{name}/in_msgs"] / messages, 3) for name in after.nats
        },
        "nats_messages_received_per_message": {
            name: round(net[f"nats/{name}/out_msgs"] / messages, 3) for name in after.nats
        },
        "idle_per_second": {key: round(value, 3) for key, value in (idle or {}).items() if value},
    }
