"""Import benchmark: generated sessions through the CLI into the server, against raw insert_many.

For each size: a generated file (3 messages per session by default) is imported
by `python -m cli import` into a fresh server process; then, in the same run and
into the same MongoDB-wire server, the baseline inserts the very documents the
import stores (`server.importing.upsert.new_documents`) with bare pymongo
`insert_many`, in batches of the same size, into collections with the same
indexes. Only the insert calls are timed for the baseline; the import is timed
from the CLI's start to its exit, so it includes reading, validating and HTTP.
Peak RSS is the kernel's high-water mark (VmHWM) of the server and of the CLI.

    .venv/bin/python -m bench.imports [--sizes 20000 200000] [--messages 3] [--format csv]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo

from bench.backends import backends
from cli.generate import generate_sessions
from contract.importwriter import write_sessions
from devstack.processes import free_port, wait_for_port
from server.importing.feed import BATCH_RECORDS
from server.importing.records import normalise_session
from server.importing.upsert import new_documents

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-api-token-0123456789abcdef-0123456789"
COLLECTIONS = ("sessions", "messages", "import_jobs", "import_batches", "outbox")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # exited between the poll and the read: a zombie reports no memory


def generate(path: Path, sessions: int, messages: int, file_format: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        write_sessions(generate_sessions(sessions, messages_per_session=messages), out, file_format)


def through_cli(nats_url: str, mongodb_uri: str, path: Path, work: Path) -> dict[str, float]:
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "MONGODB_URI": mongodb_uri,
        "HTTP_PORT": str(port),
        "API_TOKEN": TOKEN,
        "LOG_LEVEL": "warning",
        "BALCAO_API_URL": f"http://127.0.0.1:{port}",
        "BALCAO_API_TOKEN": TOKEN,
    }
    with open(work / "server.log", "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT, stdout=log, stderr=log)
        try:
            wait_for_port(port, 30, server)
            started = time.monotonic()
            cli = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "import",
                    str(path),
                    "--channel",
                    "@bench_channel",
                    "--state-dir",
                    str(work / "state"),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            cli_peak = 0.0
            while cli.poll() is None:  # sample while it runs: /proc is gone once it is reaped
                cli_peak = max(cli_peak, peak_rss_mb(cli.pid))
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            output = cli.stdout.read().decode()
            if cli.returncode != 0:
                raise RuntimeError(f"the CLI failed ({cli.returncode}): {output}")
            server_peak = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(60)
    print(f"  cli: {output.strip().splitlines()[0]}")
    return {"seconds": elapsed, "server_mb": server_peak, "cli_mb": cli_peak}


def raw_insert_many(database: pymongo.database.Database, sessions: int, messages: int) -> float:
    """Seconds spent in insert_many for the same documents, into collections indexed alike."""
    for name in ("sessions", "messages"):
        raw = database[f"raw_{name}"]
        raw.drop()
        for index in database[name].index_information().values():
            if index["key"] != [("_id", 1)]:
                raw.create_index(index["key"], unique=index.get("unique", False))
    spent = 0.0
    batch = []
    for number, record in enumerate(generate_sessions(sessions, messages_per_session=messages), start=1):
        batch.append(normalise_session(record, record=number))
        if len(batch) == BATCH_RECORDS or number == sessions:
            session_docs, message_docs = new_documents(batch)
            started = time.monotonic()
            database.raw_sessions.insert_many(session_docs, ordered=False)
            database.raw_messages.insert_many(message_docs, ordered=False)
            spent += time.monotonic() - started
            batch = []
    return spent


def run(sizes: list[int], messages: int, file_format: str) -> None:
    with tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp, backends(Path(tmp), large=True) as servers:
        work = Path(tmp)
        database = pymongo.MongoClient(servers.mongodb_uri, tz_aware=True).get_default_database()
        print(f"MongoDB: {servers.mongodb_name}; {messages} messages per session; file format {file_format}")
        for size in sizes:
            for name in COLLECTIONS:
                database[name].delete_many({})
            path = work / f"sessions-{size}.{file_format}"
            generate(path, size, messages, file_format)
            print(f"{size:,} sessions ({path.stat().st_size / 2**20:.1f} MiB file):")
            ours = through_cli(servers.nats_url, servers.mongodb_uri, path, work)
            stored = database.sessions.count_documents({}), database.messages.count_documents({})
            assert stored == (size, size * messages), f"stored {stored}"
            raw_seconds = raw_insert_many(database, size, messages)
            rate, raw_rate = size / ours["seconds"], size / raw_seconds
            print(f"  balcao CLI import   {rate:>9,.0f} sessions/s  ({ours['seconds']:.1f} s)")
            print(f"  raw insert_many     {raw_rate:>9,.0f} sessions/s  ({raw_seconds:.1f} s)")
            print(f"  ratio balcao/raw    {rate / raw_rate:>9.2f}  (target >= 0.50)")
            print(
                f"  peak RSS            server {ours['server_mb']:.0f} MB, CLI {ours['cli_mb']:.0f} MB "
                "(target < 300 MB, flat)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--messages", type=int, default=3, help="messages per session")
    parser.add_argument("--format", dest="file_format", choices=("csv", "json", "ndjson"), default="csv")
    args = parser.parse_args()
    run(args.sizes, args.messages, args.file_format)


if __name__ == "__main__":
    main()
