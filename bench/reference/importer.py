"""A session file imported by hand: the csv module, orjson and pymongo's insert_many.

    python -m bench.reference.importer FILE MONGODB_URI [BATCH]

Reads a CSV file of the import format (one session per row, its messages as a
JSON array), builds the session and message documents Balcão stores for them
(the same fields and indexes, name search keys included) and inserts them with
unordered `insert_many`, BATCH sessions at a time (1,000), into an empty
database. The inserts run on two threads (sessions and messages at once) while
the next batch is read, as Balcão's CLI reads while its server writes. No
validation report, no resume, no HTTP: what a strong engineer would write to
load a trusted file once. It is timed like the CLI's import, from the start of
its process to its exit.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import orjson
import pymongo
from bson import ObjectId

from bench.reference import documents as d


def load(path: str, database, batch_size: int) -> int:
    d.create_indexes(database)
    sessions: list[dict] = []
    messages: list[dict] = []
    count = 0
    writers = ThreadPoolExecutor(2)
    pending: list[Future] = []
    with writers, open(path, newline="", encoding="utf-8-sig") as file:
        for row in csv.DictReader(file):
            session_id = ObjectId()
            contact = str(int(row["contact_identifier"]))
            items = orjson.loads(row["messages"])
            key_prefix = f"{row['platform_type'].lower()}:{contact}:id:"
            dated = [(dt.datetime.fromisoformat(item["date"]), item) for item in items]
            for at, item in dated:
                messages.append(
                    d.message_document(session_id, key_prefix + item["id"], item["content"], at, item["id"])
                )
            latest = max(dated, key=lambda pair: pair[0]) if dated else None
            first = min(at for at, _ in dated) if dated else ObjectId(row["_id"]).generation_time
            document = d.session_document(
                session_id,
                contact,
                row["name"].strip(),
                latest[0] if latest else first,
                chat_id=None,
                created_at=first,
                message_count=len(dated),
                preview_text=d.preview(latest[1]["content"]) if latest else "",
            )
            document["source_id"] = row["_id"]
            sessions.append(document)
            count += 1
            if len(sessions) == batch_size:
                for done in pending:  # the previous batch is written while this one was read
                    done.result()
                pending = insert(writers, database, sessions, messages)
                sessions, messages = [], []
        for done in [*pending, *insert(writers, database, sessions, messages)]:
            done.result()
    return count


def insert(writers: ThreadPoolExecutor, database, sessions: list[dict], messages: list[dict]) -> list[Future]:
    pending = []
    if sessions:
        pending.append(writers.submit(database.sessions.insert_many, sessions, ordered=False))
    if messages:
        pending.append(writers.submit(database.messages.insert_many, messages, ordered=False))
    return pending


if __name__ == "__main__":
    path, uri, *rest = sys.argv[1:]
    client = pymongo.MongoClient(uri, tz_aware=True, w="majority")
    stored = load(path, client.get_default_database(), int(rest[0]) if rest else 1000)
    print(f"{stored} sessions stored", flush=True)
