"""Case 1 end to end: fake Telegram -> bot -> JetStream -> server -> MongoDB -> reply."""

from __future__ import annotations

import signal
import time

from tests.harness import eventually

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


def test_start_and_non_text_are_answered_but_not_stored(stack, telegram, mongo):
    stack.server()
    stack.bot()

    telegram.send_as_user(3003, "/start")
    telegram.send_as_user(3003, kind="photo")
    texts = eventually(lambda: [m["text"] for m in telegram.sent(3003)] if len(telegram.sent(3003)) >= 2 else None)
    assert "Olá" in texts[0]
    assert "texto" in texts[1]
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


def test_update_delivered_twice_is_stored_and_answered_once(stack, telegram, mongo):
    stack.server()
    bot = stack.bot()
    update = private_text_update(4004, 77, "primeira")
    telegram.add_user(4004, "Rita")
    telegram.inject_update(update)
    eventually(lambda: replies(telegram, 4004))

    # The bot dies before confirming the update; Telegram hands it out again.
    bot.kill()
    telegram.inject_update(update)
    stack.bot()
    telegram.send_as_user(4004, "segunda")
    eventually(lambda: len(replies(telegram, 4004)) >= 2, message="reply to second message")
    eventually(lambda: not telegram.pending_updates(), message="updates confirmed")

    assert len(replies(telegram, 4004)) == 2
    assert mongo.messages.count_documents({"text": "primeira"}) == 1
    assert mongo.sessions.find_one({"contact_identifier": "4004"})["message_count"] == 2


def test_server_down_while_messages_arrive_loses_and_doubles_nothing(stack, telegram, mongo):
    server = stack.server()
    stack.bot()
    telegram.send_as_user(5000, "aquecimento")
    eventually(lambda: replies(telegram, 5000))

    server.stop(signal.SIGKILL)
    for n in range(50):
        telegram.send_as_user(5001 + n % 5, f"mensagem {n}")
    eventually(lambda: not telegram.pending_updates(), message="bot relayed all to JetStream")
    stack.server()

    eventually(lambda: sum(len(replies(telegram, 5001 + c)) for c in range(5)) >= 50, timeout=30, message="50 replies")
    assert mongo.messages.count_documents({"text": {"$regex": "^mensagem"}}) == 50
    assert len({m["text"] for m in mongo.messages.find({"text": {"$regex": "^mensagem"}})}) == 50
    for contact in range(5):
        assert len(replies(telegram, 5001 + contact)) == 10
        assert mongo.sessions.find_one({"contact_identifier": str(5001 + contact)})["message_count"] == 10


def test_nats_restart_mid_stream_loses_and_doubles_nothing(stack, telegram, mongo, clean_nats):
    stack.server()
    stack.bot()
    for n in range(20):
        telegram.send_as_user(6001, f"antes {n}")
    clean_nats.restart()
    for n in range(20):
        telegram.send_as_user(6001, f"depois {n}")

    eventually(lambda: len(replies(telegram, 6001)) >= 40, timeout=60, message="40 replies")
    assert mongo.messages.count_documents({"session_id": mongo.sessions.find_one()["_id"]}) == 40
    assert len(replies(telegram, 6001)) == 40


def test_retry_after_is_honoured_and_blocked_chat_is_parked(stack, telegram, mongo):
    stack.server()
    bot = stack.bot()
    telegram.add_fault(method="sendMessage", chat_id=7001, error_code=429, retry_after=2, times=1)
    telegram.add_fault(method="sendMessage", chat_id=7002, error_code=403, times=-1)

    telegram.send_as_user(7001, "espera")
    telegram.send_as_user(7002, "bloqueado")
    telegram.send_as_user(7003, "normal")

    eventually(lambda: replies(telegram, 7003), message="unaffected chat served")
    eventually(lambda: replies(telegram, 7001), timeout=20, message="rate-limited reply")
    attempts = telegram.attempts(7001)
    refused = [a for a in attempts if a["status"] == 429]
    assert refused, attempts
    delivered = [a for a in attempts if a["status"] == 200]
    assert delivered[0]["at"] - refused[0]["at"] >= 1.9

    eventually(lambda: "parked" in bot.log_text(), message="parked log line")
    assert replies(telegram, 7002) == []
    assert mongo.messages.count_documents({"text": "bloqueado"}) == 1
