"""Case 1 end to end: fake Telegram -> bot -> JetStream -> server -> MongoDB -> reply."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from runtime import failpoints
from tests.harness import ApiClient, eventually, failpoint_fired, settle, sigkill

REPLY = "Reply: mensagem recebida"


def replies(telegram, chat_id: int) -> list[str]:
    return [m["text"] for m in telegram.sent(chat_id) if m["text"] == REPLY]


def test_message_is_stored_in_a_session_and_answered(stack, telegram, mongo):
    stack.server()
    stack.bot()

    telegram.send_as_user(1001, "Olá, preciso de ajuda", first_name="João", last_name="Silva")
    eventually(lambda: replies(telegram, 1001), message="reply to first message")
    telegram.send_as_user(1001, "Meu pedido atrasou", first_name="João", last_name="Silva")
    telegram.send_as_user(2002, "Bom dia", first_name="Ana")
    eventually(lambda: len(replies(telegram, 1001)) == 2 and replies(telegram, 2002), message="replies")

    sessions = {s["contact_identifier"]: s for s in mongo.sessions.find()}
    assert set(sessions) == {"1001", "2002"}
    joao = sessions["1001"]
    assert joao["contact_name"] == "João Silva"
    assert joao["platform"] == "telegram"
    assert joao["message_count"] == 2
    assert joao["last_message_preview"] == "Meu pedido atrasou"
    texts = [m["text"] for m in mongo.messages.find({"session_id": joao["_id"]}).sort("sent_at", 1)]
    assert texts == ["Olá, preciso de ajuda", "Meu pedido atrasou"]
    assert mongo.messages.count_documents({"session_id": sessions["2002"]["_id"]}) == 1
    # Replies go to the contact's own chat, nowhere else.
    assert {m["chat"]["id"] for m in telegram.sent()} == {1001, 2002}


def test_start_is_answered_with_a_welcome_but_not_stored(stack, telegram, mongo):
    stack.server()
    stack.bot()

    telegram.send_as_user(3003, "/start")
    texts = eventually(lambda: [m["text"] for m in telegram.sent(3003)])
    assert "Olá" in texts[0]
    assert mongo.messages.count_documents({}) == 0


def private_text_update(user_id: int, message_id: int, text: str) -> dict:
    user = {"id": user_id, "is_bot": False, "first_name": "Rita"}
    return {
        "message": {
            "message_id": message_id,
            "date": int(time.time()),
            "text": text,
            "from": user,
            "chat": {"id": user_id, "type": "private", "first_name": "Rita"},
        }
    }


# A crashed server's batch goes to the next one after the intake's ack wait: the
# shortest allowed, where the setting exists (elsewhere the default half-minute).
ACK_WAIT = {"INTAKE_ACK_WAIT": "3"}


def test_update_delivered_twice_is_stored_and_answered_once(stack, telegram, mongo, tmp_path, clean_nats):
    # The bot dies right after JetStream acknowledged the first of three updates in
    # hand, before confirming any to Telegram, which hands all three out again.
    log = tmp_path / "failpoints.log"
    stack.server()
    contacts = (4004, 4005, 4006)
    for contact in contacts:
        telegram.add_user(contact, "Rita")
    update_ids = [telegram.inject_update(private_text_update(c, 77, f"primeira {c}"))["update_id"] for c in contacts]
    bot = stack.bot(BALCAO_FAILPOINTS="bot.relay.after_ack_before_confirm=kill", BALCAO_FAILPOINTS_LOG=str(log))
    eventually(lambda: not bot.running, timeout=30, message="bot killed after a JetStream ack")
    assert failpoint_fired(log, "bot.relay.after_ack_before_confirm")
    assert sorted(u["update_id"] for u in telegram.pending_updates()) == sorted(update_ids)
    stack.bot()
    telegram.send_as_user(4004, "segunda")

    def observed() -> tuple:
        return mongo.messages.count_documents({}), len(telegram.sent()), len(telegram.pending_updates())

    settle(clean_nats.url, observed)

    assert all(telegram.deliveries(update_id) == 2 for update_id in update_ids)
    assert not telegram.pending_updates()
    for contact in contacts:
        assert mongo.messages.count_documents({"text": f"primeira {contact}"}) == 1
        owed = 2 if contact == 4004 else 1
        assert len(replies(telegram, contact)) == owed
        assert mongo.sessions.find_one({"contact_identifier": str(contact)})["message_count"] == owed


def test_server_down_while_messages_arrive_loses_and_doubles_nothing(stack, telegram, mongo, tmp_path, clean_nats):
    # The server dies with a batch in hand, its messages stored but not yet counted,
    # answered or acknowledged; the rest keep arriving while no server runs.
    log = tmp_path / "failpoints.log"
    point = "server.intake.after_messages_inserted"
    server = stack.server(BALCAO_FAILPOINTS=f"{point}=kill@2", BALCAO_FAILPOINTS_LOG=str(log), **ACK_WAIT)
    stack.bot()
    telegram.send_as_user(5000, "aquecimento")  # the fail point's first pass
    eventually(lambda: replies(telegram, 5000))

    for n in range(25):
        telegram.send_as_user(5001 + n % 5, f"mensagem {n}")
    eventually(lambda: not server.running, timeout=30, message="server killed mid-batch")
    assert failpoint_fired(log, point)
    for n in range(25, 50):
        telegram.send_as_user(5001 + n % 5, f"mensagem {n}")
    eventually(lambda: not telegram.pending_updates(), message="bot relayed all to JetStream")
    stack.server(**ACK_WAIT)

    def observed() -> tuple:
        return (
            mongo.messages.count_documents({}),
            len(telegram.sent()),
            sorted(s["message_count"] for s in mongo.sessions.find()),
        )

    settle(clean_nats.url, observed)

    stored = [m["text"] for m in mongo.messages.find({"text": {"$regex": "^mensagem"}})]
    assert sorted(stored) == sorted(f"mensagem {n}" for n in range(50))
    for contact in range(5):
        assert len(replies(telegram, 5001 + contact)) == 10
        assert mongo.sessions.find_one({"contact_identifier": str(5001 + contact)})["message_count"] == 10


def test_nats_killed_mid_stream_loses_and_doubles_nothing(stack, telegram, mongo, tmp_path, clean_nats):
    # nats-server is SIGKILLed while the server holds a batch it stored but has not
    # answered or acknowledged, and while the bot has updates to relay.
    log = tmp_path / "failpoints.log"
    point = "server.intake.after_messages_inserted"
    stack.server(BALCAO_FAILPOINTS=f"{point}=pause", BALCAO_FAILPOINTS_LOG=str(log), **ACK_WAIT)
    bot = stack.bot()
    for n in range(10):
        telegram.send_as_user(6001, f"antes {n}")
    eventually(lambda: failpoint_fired(log, point), timeout=30, message="a batch in hand")
    sigkill(clean_nats)
    for n in range(10):
        telegram.send_as_user(6001, f"depois {n}")
    eventually(lambda: "not relayed" in bot.log_text(), timeout=30, message="the bot relaying into a dead NATS")
    clean_nats.start()
    failpoints.resume(str(log), point)

    def observed() -> tuple:
        return mongo.messages.count_documents({}), len(telegram.sent()), len(telegram.pending_updates())

    settle(clean_nats.url, observed)

    stored = sorted(m["text"] for m in mongo.messages.find())
    assert stored == sorted([f"antes {n}" for n in range(10)] + [f"depois {n}" for n in range(10)])
    assert mongo.sessions.find_one({"contact_identifier": "6001"})["message_count"] == 20
    assert len(replies(telegram, 6001)) == 20


# Longer than the bot's own wait after a network error (2 s), so only honouring it passes.
RETRY_AFTER = 5
# What a busy machine may add to the wait before the send goes out again.
RETRY_SLACK = 4.0


def test_retry_after_is_honoured_and_blocked_chat_is_parked(stack, telegram, mongo):
    stack.server()
    bot = stack.bot()
    telegram.add_fault(method="sendMessage", chat_id=7001, error_code=429, retry_after=RETRY_AFTER, times=1)
    telegram.add_fault(method="sendMessage", chat_id=7002, error_code=403, times=-1)

    telegram.send_as_user(7001, "espera")
    telegram.send_as_user(7002, "bloqueado")
    (refused,) = eventually(
        lambda: [a for a in telegram.attempts(7001) if a["status"] == 429], message="the reply refused with 429"
    )
    # Written after the 429: another chat is answered while that one waits, not after it.
    telegram.send_as_user(7003, "normal")
    eventually(lambda: replies(telegram, 7003), message="unaffected chat served")
    (other,) = [a for a in telegram.attempts(7003) if a["status"] == 200]
    assert other["at"] < refused["at"] + RETRY_AFTER

    eventually(lambda: replies(telegram, 7001), timeout=30, message="rate-limited reply")
    (delivered,) = [a for a in telegram.attempts(7001) if a["status"] == 200]
    assert RETRY_AFTER - 0.1 <= delivered["at"] - refused["at"] <= RETRY_AFTER + RETRY_SLACK
    assert len(telegram.attempts(7001)) == 2  # not tried again inside the wait

    eventually(lambda: "parked" in bot.log_text(), message="parked log line")
    assert replies(telegram, 7002) == []
    assert mongo.messages.count_documents({"text": "bloqueado"}) == 1


def test_slow_api_requests_do_not_hold_up_intake_or_readiness(stack, telegram, mongo, tmp_path):
    """Eight listings each holding a database thread (every one of DB_THREADS) while
    contacts write: messages are stored as fast as before, and /ready stays 200."""
    log = tmp_path / "failpoints.log"
    point = "server.sessions.list"
    stack.server(DB_THREADS="8", BALCAO_FAILPOINTS=f"{point}=pause@*", BALCAO_FAILPOINTS_LOG=str(log))
    stack.bot()
    api = ApiClient(stack.api_url)

    def stored_within(contacts: range, timeout: float) -> float:
        started = time.monotonic()
        for contact in contacts:
            telegram.send_as_user(contact, f"oi de {contact}")
        eventually(
            lambda: (
                mongo.messages.count_documents({"text": {"$in": [f"oi de {c}" for c in contacts]}}) == len(contacts)
            ),
            timeout=timeout,
            message="messages stored",
        )
        return time.monotonic() - started

    before = stored_within(range(8101, 8106), timeout=60)
    with ThreadPoolExecutor(8) as requests:
        answers = [requests.submit(api.get, "sessions") for _ in range(8)]
        eventually(lambda: log.exists() and log.read_text().count(f"{point} pause") == 8, message="8 requests held")
        # Well inside the fail point's own limit (60 s), after which the requests go on.
        meanwhile = stored_within(range(8201, 8206), timeout=30)
        ready = httpx.get(f"{stack.api_url}/ready", timeout=30)
        held = sum(not answer.done() for answer in answers)
        failpoints.resume(str(log), point)
        statuses = [answer.result(timeout=60).status_code for answer in answers]

    print(f"5 messages stored in {before:.2f} s alone, {meanwhile:.2f} s beside 8 held requests")
    assert held == 8  # every API thread was taken all along
    assert ready.status_code == 200, ready.text
    assert meanwhile <= max(3 * before, before + 5)
    assert statuses == [200] * 8
    api.close()
