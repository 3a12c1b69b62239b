"""The intake as a strong engineer would write it by hand: a batched nats-py + pymongo pipeline.

    python -m bench.reference.intake NATS_URL MONGODB_URI [BATCH]

For each batch fetched from the inbound stream (up to BATCH, 1,000 like
Balcão's INTAKE_BATCH): one `find` of the keys finished with their session
(`finished_messages`, answered and not stored again), one `find` of the
contacts' sessions, one unordered `insert_many` of the messages (a message
stored before is a duplicate key and is skipped), one `bulk_write` of the
sessions (new ones upserted whole, known ones counted, previewed and moved up
in activity), then every event (`session.opened`, `message.received`) is
published at once, then every reply (to the outbound stream), and once
JetStream has stored them all, the messages are acknowledged. The same
durable work as Balcão's server: the same documents and indexes, the same
stream messages in the same order; none of Balcão's own code.

Prints `ready` once its consumer is bound.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import nats
import nats.errors
import pymongo
from bson import ObjectId
from nats.js.api import AckPolicy, ConsumerConfig
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from bench.reference import documents as d
from contract.messaging import INBOUND_STREAM, INBOUND_SUBJECT, OUTBOUND_SUBJECT

DURABLE = "reference-inbound"
ACK_WAIT = 30.0


def store(database, batch: list[dict]) -> list[tuple[dict, str, ObjectId, bool]]:
    """Store a batch; each message with its key, its session and whether that session is new.

    A message whose session an agent finished since it was stored (its key in
    `finished_messages`, as Balcão's finish records it) is answered, not stored
    again: a redelivery must not open a session nobody asked for.
    """
    if not batch:
        return []
    now = d.stored_time(dt.datetime.now(dt.UTC))
    keyed = [(message, f"{d.PLATFORM}:{message['contact_identifier']}:tg{message['message_id']}") for message in batch]
    finished = {
        doc["_id"]: doc["session_id"]
        for doc in database.finished_messages.find({"_id": {"$in": [key for _, key in keyed]}}, {"session_id": 1})
    }
    latest: dict[str, dict] = {}
    for message, key in keyed:
        if key not in finished:
            latest[message["contact_identifier"]] = message
    found = {
        doc["contact_identifier"]: doc
        for doc in database.sessions.find(
            {"platform": d.PLATFORM, "contact_identifier": {"$in": list(latest)}},
            {"contact_identifier": 1, "contact_name": 1},
        )
    }
    session_ids = {contact: found[contact]["_id"] if contact in found else ObjectId() for contact in latest}
    stored, documents, seen = [], [], set()
    for message, key in keyed:
        if key in finished:
            stored.append((message, key, finished[key], False))
            continue
        session_id = session_ids[message["contact_identifier"]]
        stored.append((message, key, session_id, message["contact_identifier"] not in found))
        if key not in seen:
            seen.add(key)
            sent_at = dt.datetime.fromisoformat(message["sent_at"]) if message.get("sent_at") else now
            documents.append(d.message_document(session_id, key, message["text"], sent_at, str(message["message_id"])))
    skipped: set[int] = set()
    try:
        database.messages.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        skipped = {error["index"] for error in exc.details["writeErrors"] if error["code"] == 11000}
    counts: dict[str, int] = {}
    last_text: dict[str, str] = {}
    for index, document in enumerate(documents):
        if index not in skipped:
            contact = document["key"].split(":")[1]
            counts[contact] = counts.get(contact, 0) + 1
            last_text[contact] = document["text"]
    updates = []
    for contact, message in latest.items():
        session_id = session_ids[contact]
        update: dict = {"$max": {"last_message_at": now, "activity_key": d.activity_key(now, session_id)}}
        if contact in counts:
            update["$inc"] = {"message_count": counts[contact]}
            update["$set"] = {"last_message_preview": d.preview(last_text[contact])}
        if contact not in found:
            update["$setOnInsert"] = {
                "platform": d.PLATFORM,
                "contact_identifier": contact,
                "contact_name": message["name"],
                "chat_id": str(message["chat_id"]),
                "name_keys": d.search_keys(message["name"]),
                "created_at": now,
            }
            update.setdefault("$inc", {"message_count": 0})
            update.setdefault("$set", {"last_message_preview": ""})
        elif found[contact].get("contact_name") != message["name"]:
            update.setdefault("$set", {}).update(
                {"contact_name": message["name"], "name_keys": d.search_keys(message["name"])}
            )
        updates.append(UpdateOne({"_id": session_id}, update, upsert=contact not in found))
    if updates:
        database.sessions.bulk_write(updates, ordered=False)
    return stored


async def main(nats_url: str, mongodb_uri: str, batch_size: int) -> None:
    database = pymongo.MongoClient(mongodb_uri, tz_aware=True, w="majority").get_default_database()
    d.create_indexes(database)
    executor = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    nc = await nats.connect(nats_url, name="bench-reference-intake")
    js = nc.jetstream()
    await d.declare_streams(js)
    subscription = await js.pull_subscribe(
        INBOUND_SUBJECT,
        durable=DURABLE,
        stream=INBOUND_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_ack_pending=-1),
    )
    print("ready", flush=True)
    while True:
        try:
            msgs = await subscription.fetch(batch_size, timeout=0.25)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        batch = [json.loads(msg.data) for msg in msgs]
        stored = await loop.run_in_executor(executor, store, database, batch)
        events, replies = [], []
        opened: set[ObjectId] = set()
        for message, key, session_id, new in stored:
            sid = str(session_id)
            contact = {"identifier": message["contact_identifier"], "name": message["name"]}
            reply = {
                "key": f"reply:{key}",
                "chat_id": str(message["chat_id"]),
                "text": d.REPLY,
                "kind": "reply",
                "meta": {"session_id": sid, "platform": d.PLATFORM, "contact_identifier": contact["identifier"]},
            }
            replies.append((OUTBOUND_SUBJECT, d.encode(reply), reply["key"]))
            if new and session_id not in opened:
                opened.add(session_id)
                body = {"type": "session.opened", "at": d.stamp(), "platform": d.PLATFORM, "session_id": sid}
                body["contact"] = contact
                events.append((d.event_subject("session.opened", sid), d.encode(body), f"event:session.opened:{sid}"))
            body = {
                "type": "message.received",
                "at": d.stamp(),
                "platform": d.PLATFORM,
                "session_id": sid,
                "contact": contact,
                "message": {"key": key, "text": message["text"], "direction": "in", "kind": "contact"},
            }
            body["message"]["sent_at"] = message.get("sent_at", "")
            events.append((d.event_subject("message.received", sid), d.encode(body), f"event:message.received:{key}"))
        # Events first, then replies, as Balcão: the bot's `message.sent` for a reply
        # must never reach the stream before the `message.received` it answers.
        for phase in (events, replies):
            await asyncio.gather(
                *(
                    js.publish(subject, data, timeout=5, headers={"Nats-Msg-Id": dedup})
                    for subject, data, dedup in phase
                )
            )
        for msg in msgs:
            await msg.ack()


if __name__ == "__main__":
    url, uri, *rest = sys.argv[1:]
    asyncio.run(main(url, uri, int(rest[0]) if rest else 1000))
