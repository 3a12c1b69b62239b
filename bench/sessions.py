"""Sessions API benchmark: listing, paging and name search, against the query that reads just the page.

    .venv/bin/python -m bench.sessions [--sessions 200000] [--repeat 1000] [--page 100] [--data-dir DIR]

Loads SESSIONS open sessions (names from Faker, activity spread over the last
90 days) into a fresh database, starts the real server, and times four
requests, each beside its reference, interleaved (Balcão, reference,
reference, Balcão, ...) so that whatever else the machine does falls on both:

  - the first page of `GET /v1/sessions` (50 sessions)
  - page PAGE, reached by following cursors
  - a search by a common name prefix, and one by a rare name prefix

The reference is one pymongo `find` on the same index that reads exactly the
page: the bench knows every activity key and name key it loaded, so it bounds
the range to the page's own first and last sessions. That is the least any
server can read for the page; Balcão does not know where a page ends and
reads time slices until it is full (server/sessions.py). The run prints p50
and p99 (from 1,000 requests or more, else the maximum) of both, their ratio,
and the `find` commands the server sent per request (counted in the server by
`bench.probe`).

With --data-dir the loaded database is kept there and reused by the next run;
--profile DIR samples the server with py-spy while it answers (bench/profiling.py).
Loading is the slow part on SecantusDB: about a thousand sessions a second.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pymongo
from bson import ObjectId
from faker import Faker

from bench import method, profiling, stack
from bench.reference import documents as d
from devstack.processes import free_port, wait_for_port

LIMIT = 50
BATCH = 1000
PROJECTION = {"name_keys": 0}
ORDER = [("activity_key", pymongo.DESCENDING)]


def load(collection: pymongo.collection.Collection, count: int, seed: int) -> None:
    fake = Faker(["pt_BR", "en_US"])
    Faker.seed(seed)
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    batch = []
    for n in range(count):
        last = d.stored_time(now - dt.timedelta(seconds=rng.uniform(0, 90 * 86400)))
        document = d.session_document(
            ObjectId(),
            str(10**10 + n),
            fake.name(),
            last,
            chat_id=str(10**10 + n),
            created_at=last - dt.timedelta(minutes=rng.uniform(1, 600)),
            message_count=rng.randint(1, 40),
            preview_text=fake.sentence(nb_words=8),
        )
        batch.append(document)
        if len(batch) == BATCH:
            collection.insert_many(batch, ordered=False)
            batch = []
            if (n + 1) % 20_000 == 0:
                print(f"  loaded {n + 1:>7} sessions ({(n + 1) / (time.monotonic() - started):,.0f}/s)", flush=True)
    if batch:
        collection.insert_many(batch, ordered=False)
    print(f"loaded {count} sessions in {time.monotonic() - started:.0f} s", flush=True)


class Keys:
    """Every session's activity key, overall and under each name key, newest first."""

    def __init__(self, collection: pymongo.collection.Collection) -> None:
        self.all: list[str] = []
        self.by_name: dict[str, list[str]] = collections.defaultdict(list)
        for doc in collection.find({}, {"activity_key": 1, "name_keys": 1}):
            self.all.append(doc["activity_key"])
            for key in doc["name_keys"]:
                self.by_name[key].append(doc["activity_key"])
        self.all.sort(reverse=True)
        for keys in self.by_name.values():
            keys.sort(reverse=True)

    def prefixes(self) -> tuple[str, str]:
        """A common three-letter prefix, and a rare longer one held by about ten sessions."""
        common = max((k for k in self.by_name if len(k) == 3), key=lambda k: (len(self.by_name[k]), k))
        rare = sorted((k for k in self.by_name if len(k) >= 5), key=lambda k: (abs(len(self.by_name[k]) - 10), k))
        return common, rare[0]


def page_query(keys: list[str], page: int, equality: dict[str, Any], span: int = 1) -> dict[str, Any]:
    """The filter that reads exactly page `page` (1-based) and the one after it: bounded by its keys.
    With `span` 2, its range holds twice the page (the find still returns one page)."""
    first = (page - 1) * LIMIT
    bounds: dict[str, str] = {}
    if first > 0:
        bounds["$lt"] = keys[first - 1]
    last = first + span * LIMIT  # one more than the page: the server reads it to know a next page exists
    if last < len(keys):
        bounds["$gte"] = keys[last]
    return {**equality, **({"activity_key": bounds} if bounds else {})}


def timed_pair(ours: Callable[[], object], raw: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """Latencies of both, interleaved (alternating which goes first)."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1000, help="requests per figure (p99 needs 1,000)")
    parser.add_argument("--page", type=int, default=100, help="the page reached by following cursors")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="keep the database here, reused when it holds as many sessions")
    parser.add_argument("--profile", type=Path, help="sample the server with py-spy into this folder, and summarise")
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    if args.sessions <= LIMIT * args.page:
        parser.error(f"page {args.page} needs more than {LIMIT * args.page} sessions")
    with (
        method.recorded("sessions", method.results_folder(args.results), argv) as record,
        tempfile.TemporaryDirectory(prefix="balcao-bench-") as tmp,
    ):
        work = Path(tmp)
        with stack.fresh_stack(work, large=True, mongo_dir=args.data_dir) as run:
            record.figures = measure(run, args)
    if args.profile:
        for collapsed in sorted(args.profile.glob("*.txt")):
            print(profiling.summary(collapsed), "\n")


def measure(run: stack.Stack, args: argparse.Namespace) -> dict[str, Any]:
    raw = pymongo.MongoClient(run.mongodb_uri, tz_aware=True).get_default_database()["sessions"]
    print(f"{args.sessions} sessions, {args.repeat} requests per figure", flush=True)
    port = free_port()
    # Started first: the server declares the indexes, the load then fills them.
    server = stack.launch("server", "server", work=run.work, env=stack.balcao_env(run, port), count_mongo=True)
    try:
        wait_for_port(port, 60, server.popen)
        if args.data_dir and raw.estimated_document_count() == args.sessions:
            print(f"reusing the sessions in {args.data_dir}", flush=True)
        else:
            raw.delete_many({})
            load(raw, args.sessions, args.seed)
        keys = Keys(raw)
        common, rare = keys.prefixes()
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/v1/",
            headers={"Authorization": f"Bearer {stack.API_TOKEN}"},
            timeout=60,
        )

        def endpoint(params: dict) -> Callable[[], object]:
            def get() -> dict:
                response = http.get("sessions", params=params)
                response.raise_for_status()
                return response.json()

            return get

        cursor = None
        for _ in range(args.page - 1):  # page PAGE: follow cursors there once
            cursor = endpoint({"limit": LIMIT, **({"cursor": cursor} if cursor else {})})()["next_cursor"]

        def reference(query: dict[str, Any]) -> Callable[[], object]:
            return lambda: list(raw.find(query, PROJECTION).sort(ORDER).limit(LIMIT + 1))

        scenarios = [
            ("first page", {"limit": LIMIT}, page_query(keys.all, 1, {}), len(keys.all)),
            (f"page {args.page} by cursor", {"limit": LIMIT, "cursor": cursor}, page_query(keys.all, args.page, {}), 0),
            (
                f"search, common prefix `{common}`",
                {"limit": LIMIT, "q": common},
                page_query(keys.by_name[common], 1, {"name_keys": common}),
                len(keys.by_name[common]),
            ),
            (
                f"search, rare prefix `{rare}`",
                {"limit": LIMIT, "q": rare},
                page_query(keys.by_name[rare], 1, {"name_keys": rare}),
                len(keys.by_name[rare]),
            ),
        ]
        print(f"\n{'':<34} {'Balcão p50':>10} {'tail':>18}   {'reference p50':>13} {'tail':>18}  ratio  finds")
        results = []
        for name, params, query, matches in scenarios:
            expected = [doc["_id"] for doc in reference(query)()][:LIMIT]
            got = [ObjectId(s["id"]) for s in endpoint(params)()["items"]]
            if got != expected:
                raise AssertionError(f"{name}: the reference read another page than the endpoint answered")
            finds_before = server.mongo_commands().get("find", 0)
            with contextlib.ExitStack() as sampling:
                if args.profile:
                    label = "".join(ch if ch.isalnum() else "-" for ch in name)
                    sampling.enter_context(profiling.sampled(server.pid, args.profile / f"{label}-server.txt"))
                ours, base = timed_pair(endpoint(params), reference(query), args.repeat)
            finds = (server.mongo_commands().get("find", 0) - finds_before) / (args.repeat + max(3, args.repeat // 20))
            balcao, ref = method.latency_figures(ours), method.latency_figures(base)
            tail = "p99_ms" if "p99_ms" in balcao else "max_ms"
            results.append(
                {
                    "request": name,
                    "matches": matches or None,
                    "balcao": balcao,
                    "reference": ref,
                    "tail_ratio": balcao[tail] / ref[tail],
                    "p50_ratio": balcao["p50_ms"] / ref["p50_ms"],
                    "finds_per_request": round(finds, 2),
                }
            )
            print(
                f"{name:<34} {balcao['p50_ms']:>7.1f} ms {method.tail_text(balcao):>18}   "
                f"{ref['p50_ms']:>10.1f} ms {method.tail_text(ref):>18}  {balcao[tail] / ref[tail]:5.2f}  {finds:5.1f}",
                flush=True,
            )
        where = where_the_difference_goes(http, port, reference(page_query(keys.all, 1, {}, span=2)), args.repeat)
        http.close()
    finally:
        server.stop()
    return {
        "sessions": args.sessions,
        "repeat": args.repeat,
        "page": args.page,
        "limit": LIMIT,
        "requests": results,
        **where,
    }


def where_the_difference_goes(
    http: httpx.Client, port: int, twice_the_page: Callable[[], object], repeat: int
) -> dict[str, Any]:
    """Two figures that split a first page's difference from its reference, timed
    interleaved: an HTTP round trip that reads nothing (`GET /health`, same client,
    same server), and the reference's find over twice the page's range, which is
    what a first page's slice covers (server/sessions.py, HINT_MARGIN)."""

    def health() -> object:
        return http.get(f"http://127.0.0.1:{port}/health").raise_for_status()

    floor, twice = timed_pair(health, twice_the_page, repeat)
    figures = {
        "http_round_trip": method.latency_figures(floor),
        "find_over_twice_the_page": method.latency_figures(twice),
    }
    for name, measured in figures.items():
        print(
            f"{name.replace('_', ' '):<34} {measured['p50_ms']:>7.1f} ms {method.tail_text(measured):>18}", flush=True
        )
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
