"""The bot's side of the end-to-end reference, by hand: httpx against the Bot API, and nats-py.

    python -m bench.reference.telegram NATS_URL BOT_API_URL [SENDS_IN_FLIGHT]

Two loops in one process, as Balcão's bot has them:

- relay: long-poll `getUpdates`, publish every text message of the answer to
  the inbound stream at once (Nats-Msg-Id from chat and message id), and ask
  for the next offset (which confirms them to Telegram) only once JetStream
  stored them all;
- send: fetch outbound messages and, with SENDS_IN_FLIGHT at once (32, as
  Balcão's bot), check the delivered marker, `sendMessage`, write the marker,
  publish `message.sent`, and acknowledge.

The same durable work as Balcão's bot; no pacing (the benchmark owes no chat
more than one message a second, and raises the bot's overall rate for both).
Prints `ready` once both loops are set up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import sys

import httpx
import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import KeyNotFoundError

from bench.reference import documents as d
from contract.messaging import INBOUND_SUBJECT, OUTBOUND_STREAM, OUTBOUND_SUBJECT

POLL_TIMEOUT = 10
FETCH = 200


async def relay(http: httpx.AsyncClient, js, ready: asyncio.Event) -> None:
    offset = None
    ready.set()
    while True:
        params = {"timeout": POLL_TIMEOUT, "allowed_updates": '["message"]', **({"offset": offset} if offset else {})}
        updates = (await http.get("/getUpdates", params=params, timeout=POLL_TIMEOUT + 30)).json()["result"]
        publishes = []
        for update in updates:
            message = update.get("message") or {}
            if "text" not in message:
                continue
            user = message["from"]
            name = " ".join(filter(None, [user.get("first_name"), user.get("last_name")]))
            body = {
                "platform": d.PLATFORM,
                "contact_identifier": str(user["id"]),
                "chat_id": message["chat"]["id"],
                "message_id": message["message_id"],
                "name": name,
                "text": message["text"],
                "sent_at": dt.datetime.fromtimestamp(message["date"], dt.UTC).isoformat(),
            }
            dedup = f"{d.PLATFORM}:{body['chat_id']}:{body['message_id']}"
            publishes.append(js.publish(INBOUND_SUBJECT, d.encode(body), timeout=5, headers={"Nats-Msg-Id": dedup}))
        await asyncio.gather(*publishes)
        if updates:
            offset = updates[-1]["update_id"] + 1


async def send(http: httpx.AsyncClient, js, in_flight: int, ready: asyncio.Event) -> None:
    delivered = await js.create_key_value(config=d.DELIVERED)
    subscription = await js.pull_subscribe(
        OUTBOUND_SUBJECT,
        durable="reference-outbound",
        stream=OUTBOUND_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=-1),
    )
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task] = set()

    async def deliver(msg) -> None:
        try:
            outbound = json.loads(msg.data)
            marker = hashlib.sha256(outbound["key"].encode()).hexdigest()
            try:
                await delivered.get(marker)
                await msg.ack()
                return
            except KeyNotFoundError:
                pass
            answer = await http.post(
                "/sendMessage", json={"chat_id": int(outbound["chat_id"]), "text": outbound["text"]}
            )
            answer.raise_for_status()
            await delivered.put(marker, b"1")
            meta = outbound["meta"]
            body = {
                "type": "message.sent",
                "at": d.stamp(),
                "platform": d.PLATFORM,
                "session_id": meta["session_id"],
                "contact": {"identifier": meta["contact_identifier"], "name": ""},
                "message": {"key": outbound["key"], "text": outbound["text"], "direction": "out", "kind": "reply"},
                "delivery": "sent",
            }
            await js.publish(
                d.event_subject("message.sent", meta["session_id"]),
                d.encode(body),
                timeout=2,
                headers={"Nats-Msg-Id": f"event:message.sent:{outbound['key']}"},
            )
            await msg.ack()
        finally:
            slots.release()

    ready.set()
    while True:
        try:
            msgs = await subscription.fetch(FETCH, timeout=0.25)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        for msg in msgs:
            await slots.acquire()
            task = asyncio.create_task(deliver(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def main(nats_url: str, bot_api_url: str, in_flight: int) -> None:
    nc = await nats.connect(nats_url, name="bench-reference-telegram")
    js = nc.jetstream()
    await d.declare_streams(js)
    limits = httpx.Limits(max_connections=in_flight + 1, max_keepalive_connections=in_flight + 1)
    async with httpx.AsyncClient(base_url=bot_api_url, limits=limits, timeout=60) as http:
        ready = [asyncio.Event(), asyncio.Event()]
        loops = [
            asyncio.create_task(relay(http, js, ready[0])),
            asyncio.create_task(send(http, js, in_flight, ready[1])),
        ]
        await asyncio.wait([asyncio.create_task(event.wait()) for event in ready])
        print("ready", flush=True)
        await asyncio.gather(*loops)


if __name__ == "__main__":
    url, api, *rest = sys.argv[1:]
    asyncio.run(main(url, api, int(rest[0]) if rest else 32))
