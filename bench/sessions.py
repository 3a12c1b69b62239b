"""Sessions API benchmark: listing, paging and name search over many sessions.

Loads SESSIONS open sessions (names from Faker, activity spread over the last
90 days) into a fresh SecantusDB (or MONGODB_URI), starts the real server, and
measures the p50/p99 latency of four requests:

  - the first page of `GET /v1/sessions`
  - page 100, reached by following cursors
  - a search by a common name prefix, and one by a rare name prefix

Each beside, in the same run and on the same MongoDB-wire server, the raw pymongo
queries the endpoint issues for that request (its `find`s replayed on the bare
driver), so the figures say what the API adds to the database's own work.

    .venv/bin/python -m bench.sessions [--sessions 200000] [--repeat 200] [--data-dir DIR]

With --data-dir the loaded database is kept there and reused by the next run.
p99 needs many samples on a busy machine: --repeat 1000 gives it ten.

Loading is the slow part on SecantusDB: about a thousand sessions a second, each
with its name keys. SecantusDB gets a cache and an oplog sized for the load (see
devstack.processes.SecantusServer); with its defaults the load all but stops past ~120,000 sessions.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pymongo
from bson import ObjectId
from faker import Faker

from devstack.processes import NatsServer, SecantusServer, free_port, wait_for_port
from server import names, sessions
from server.database import Database
from server.models.sessions import activity_key

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-api-token-0123456789abcdef-0123456789"
LIMIT = 50
TARGET_PAGE = 100
BATCH = 1000
OPLOG_ENTRIES = 5_000_000
# Name keys make the index entries several times the documents' size; with the
# default 1 GB WiredTiger cache eviction stalls the load past ~120,000 sessions.
CACHE = "6G"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load(collection: pymongo.collection.Collection, count: int, seed: int) -> collections.Counter:
    """Insert `count` sessions; returns how many sessions hold each name key."""
    fake = Faker(["pt_BR", "en_US"])
    Faker.seed(seed)
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    keys: collections.Counter = collections.Counter()
    started = time.monotonic()
    batch = []
    for n in range(count):
        name = fake.name()
        session_id = ObjectId()
        last = now - dt.timedelta(seconds=rng.uniform(0, 90 * 86400))
        last = last.replace(microsecond=last.microsecond // 1000 * 1000)
        name_keys = names.search_keys(name)
        keys.update(name_keys)
        batch.append(
            {
                "_id": session_id,
                "platform": "telegram",
                "contact_identifier": str(10**10 + n),
                "chat_id": str(10**10 + n),
                "contact_name": name,
                "name_keys": name_keys,
                "created_at": last - dt.timedelta(minutes=rng.uniform(1, 600)),
                "last_message_at": last,
                "activity_key": activity_key(last, session_id),
                "message_count": rng.randint(1, 40),
                "last_message_preview": fake.sentence(nb_words=8),
            }
        )
        if len(batch) == BATCH:
            collection.insert_many(batch, ordered=False)
            batch = []
            if (n + 1) % 20_000 == 0:
                rate = (n + 1) / (time.monotonic() - started)
                print(f"  loaded {n + 1:>7} sessions ({rate:,.0f}/s)", flush=True)
    if batch:
        collection.insert_many(batch, ordered=False)
    print(f"loaded {count} sessions in {time.monotonic() - started:.0f} s", flush=True)
    return keys


def pick_prefixes(keys: collections.Counter) -> tuple[str, str]:
    """A common three-letter prefix, and a rare longer one held by a handful of sessions."""
    common = max((k for k in keys if len(k) == 3), key=lambda k: (keys[k], k))
    rare = sorted((k for k in keys if len(k) >= 5), key=lambda k: (abs(keys[k] - 10), k))
    return common, rare[0]


def timed_pair(ours: Callable[[], object], raw: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """Latencies of both, interleaved (alternating which goes first), so that
    whatever else the machine does falls on both alike."""
    for _ in range(max(3, repeat // 20)):  # warm connections and caches
        ours()
        raw()
    latencies: tuple[list[float], list[float]] = ([], [])
    for n in range(repeat):
        for which in (0, 1) if n % 2 == 0 else (1, 0):
            action = ours if which == 0 else raw
            started = time.perf_counter()
            action()
            latencies[which].append(time.perf_counter() - started)
    return latencies


def replay(collection: pymongo.collection.Collection, queries: list[sessions.Query]) -> Callable[[], object]:
    def run() -> list:
        return [list(collection.find(q.filter, q.projection).sort(q.sort).limit(q.limit)) for q in queries]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, help="keep SecantusDB's data here, and reuse it when it holds as many sessions"
    )
    args = parser.parse_args()
    if args.sessions <= LIMIT * TARGET_PAGE:
        parser.error(f"page {TARGET_PAGE} needs more than {LIMIT * TARGET_PAGE} sessions")
    # Stopped with SIGTERM, still stop the servers started here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    with tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp:
        work = Path(tmp)
        nats_server = NatsServer(data_dir=work / "nats")
        mongo = SecantusServer(
            data_dir=args.data_dir or work / "mongo",
            log_file=work / "mongo.log",
            cache_size=CACHE,
            oplog_max_entries=OPLOG_ENTRIES,
        )
        external = os.environ.get("MONGODB_URI")
        nats_server.start()
        if not external:
            mongo.start()
        uri = external or mongo.uri
        server = None
        try:
            database = Database(uri, threads=1)
            database.connect()  # the same MongoEngine set-up the server has, for list_sessions here
            from server import models

            models.ensure_indexes()
            raw = pymongo.MongoClient(uri, tz_aware=True).get_default_database()["sessions"]
            print(
                f"{args.sessions} sessions, {args.repeat} requests per figure; MongoDB: "
                f"{'external' if external else 'SecantusDB'}",
                flush=True,
            )
            if args.data_dir and raw.estimated_document_count() == args.sessions:
                keys = collections.Counter(key for doc in raw.find({}, {"name_keys": 1}) for key in doc["name_keys"])
                print(f"reusing the sessions in {args.data_dir}", flush=True)
            else:
                raw.delete_many({})
                keys = load(raw, args.sessions, args.seed)
            common, rare = pick_prefixes(keys)

            port = free_port()
            env = {
                **os.environ,
                "NATS_URL": nats_server.url,
                "MONGODB_URI": uri,
                "HTTP_PORT": str(port),
                "API_TOKEN": TOKEN,
                "LOG_LEVEL": "warning",
            }
            with open(work / "server.log", "ab") as log:
                server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT, stdout=log, stderr=log)
            wait_for_port(port, 60, server)
            http = httpx.Client(
                base_url=f"http://127.0.0.1:{port}/v1/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
            )

            def endpoint(params: dict) -> Callable[[], object]:
                def get() -> dict:
                    response = http.get("sessions", params=params)
                    response.raise_for_status()
                    return response.json()

                return get

            # Page 100: follow cursors there once, over HTTP and in this process alike.
            cursor, resume = None, None
            for _ in range(TARGET_PAGE - 1):
                cursor = endpoint({"limit": LIMIT, **({"cursor": cursor} if cursor else {})})()["next_cursor"]
                resume = sessions.list_sessions(sessions.SessionFilter(), LIMIT, resume).resume

            scenarios = [
                ("first page", {"limit": LIMIT}, sessions.SessionFilter(), None),
                (f"page {TARGET_PAGE} by cursor", {"limit": LIMIT, "cursor": cursor}, sessions.SessionFilter(), resume),
                (
                    f"search common {common!r} ({keys[common]})",
                    {"limit": LIMIT, "q": common},
                    sessions.SessionFilter(words=(common,)),
                    None,
                ),
                (
                    f"search rare {rare!r} ({keys[rare]})",
                    {"limit": LIMIT, "q": rare},
                    sessions.SessionFilter(words=(rare,)),
                    None,
                ),
            ]
            print(
                f"\n{'':<32} {'endpoint p50':>12} {'p99':>8}   {'raw p50':>8} {'p99':>8}   "
                f"{'p99 ratio':>9}  {'queries':>7}  target p99 <= 2 x raw + 5 ms"
            )
            figures = {}
            for name, params, criteria, start in scenarios:
                page = sessions.list_sessions(criteria, LIMIT, start)
                ours, base = timed_pair(endpoint(params), replay(raw, page.queries), args.repeat)
                p50, p99 = percentile(ours, 0.5) * 1000, percentile(ours, 0.99) * 1000
                raw50, raw99 = percentile(base, 0.5) * 1000, percentile(base, 0.99) * 1000
                met = "met" if p99 <= 2 * raw99 + 5 else "MISSED"
                figures[name] = p99
                print(
                    f"{name:<32} {p50:>9.1f} ms {p99:>5.1f} ms   {raw50:>5.1f} ms {raw99:>5.1f} ms   "
                    f"{p99 / raw99:>9.2f}  {len(page.queries):>7}  {met}",
                    flush=True,
                )
            first, later = figures["first page"], figures[f"page {TARGET_PAGE} by cursor"]
            print(f"\npage {TARGET_PAGE} p99 / first page p99: {later / first:.2f} (target: about 1, not more)")
            http.close()
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            nats_server.stop()
            mongo.stop()


if __name__ == "__main__":
    main()
