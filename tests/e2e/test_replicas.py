"""Two server replicas share the intake: every message processed exactly once, work split.

Each replica counts the messages it stored itself (balcao_messages_stored_total
on its own /metrics): both must have stored some, and together exactly all.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_port
from tests.harness import eventually, settle

REPLY = "Reply: mensagem recebida"
CONTACTS = 25
# Each chat's replies are paced at Telegram's 1/s, so this many seconds at least.
PER_CONTACT = 8
TOTAL = CONTACTS * PER_CONTACT
FIRST_CONTACT = 9700


def stored_by(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "balcao_messages_stored":
            return sum(s.value for s in family.samples if s.name == "balcao_messages_stored_total")
    raise AssertionError("balcao_messages_stored_total missing")


def test_two_replicas_process_each_message_once_and_share_the_work(stack, telegram, mongo):
    ports = [free_port(), free_port()]
    # Small batches, so both replicas' pulls interleave over the stream.
    replicas = [stack.server(HTTP_PORT=str(port), INTAKE_BATCH="10") for port in ports]
    stack.bot()

    for n in range(PER_CONTACT):
        for contact in range(CONTACTS):
            telegram.send_as_user(FIRST_CONTACT + contact, f"réplica {contact} {n}")

    def all_replies() -> bool:
        sent = [m for m in telegram.sent() if m["text"] == REPLY]
        return len(sent) >= TOTAL

    eventually(all_replies, timeout=60, interval=0.5, message=f"{TOTAL} replies")
    eventually(lambda: not telegram.pending_updates(), message="updates confirmed")
    # Nothing in flight and the counts still for a while: a duplicate would show by now.
    settle(stack.env["NATS_URL"], lambda: (len(telegram.sent()), mongo.messages.count_documents({})))

    per_chat: dict[int, int] = {}
    for message in telegram.sent():
        if message["text"] == REPLY:
            per_chat[message["chat"]["id"]] = per_chat.get(message["chat"]["id"], 0) + 1
    assert per_chat == {FIRST_CONTACT + c: PER_CONTACT for c in range(CONTACTS)}  # answered once
    texts = [m["text"] for m in mongo.messages.find({}, {"text": 1})]
    assert len(texts) == TOTAL and len(set(texts)) == TOTAL  # stored once
    sessions = list(mongo.sessions.find())
    assert len(sessions) == CONTACTS  # one open session per contact, despite the race
    assert {s["message_count"] for s in sessions} == {PER_CONTACT}

    counts = [stored_by(port) for port in ports]
    assert sum(counts) == TOTAL, counts
    assert all(count > 0 for count in counts), f"one replica did all the work: {counts}"
    assert all(replica.running for replica in replicas)
