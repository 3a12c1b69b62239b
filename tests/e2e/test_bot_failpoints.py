"""The bot crashed exactly in its windows, with the real processes, then counted once settled."""

from __future__ import annotations

from pathlib import Path

from tests.harness import eventually, inbound_waiting, outbound_messages

REPLY = "Reply: mensagem recebida"


def replies(telegram, chat_id: int) -> int:
    return sum(1 for m in telegram.sent(chat_id) if m["text"] == REPLY)


def fired(log: Path) -> list[str]:
    return log.read_text().split("\n")[0:-1] if log.exists() else []


def settled(stack, telegram) -> bool:
    """Nothing left anywhere: updates confirmed, inbound stored, outbound acknowledged."""
    return (
        not telegram.pending_updates()
        and inbound_waiting(stack.env["NATS_URL"]) == 0
        and not outbound_messages(stack.env["NATS_URL"])
    )


def test_killed_after_jetstream_ack_before_telegram_confirm(stack, telegram, mongo, tmp_path):
    log = tmp_path / "failpoints.log"
    stack.server()
    bot = stack.bot(BALCAO_FAILPOINTS="bot.relay.after_ack_before_confirm=kill", BALCAO_FAILPOINTS_LOG=str(log))
    update_id = telegram.send_as_user(4004, "primeira", first_name="Rita")["update_id"]
    eventually(lambda: not bot.running, timeout=30, message="bot killed at the fail point")
    assert [line.split()[0] for line in fired(log)] == ["bot.relay.after_ack_before_confirm"]

    # The offset was never confirmed: Telegram hands out the same update_id again.
    assert [u["update_id"] for u in telegram.pending_updates()] == [update_id]
    stack.bot()
    eventually(lambda: replies(telegram, 4004) and settled(stack, telegram), timeout=60, message="system settled")

    assert telegram.deliveries(update_id) == 2
    assert mongo.messages.count_documents({"text": "primeira"}) == 1
    assert mongo.sessions.find_one({"contact_identifier": "4004"})["message_count"] == 1
    assert replies(telegram, 4004) == 1


def test_killed_after_telegram_accepted_before_marker_sends_one_duplicate(stack, telegram, mongo, tmp_path):
    log = tmp_path / "failpoints.log"
    stack.server()
    bot = stack.bot(
        BALCAO_FAILPOINTS="bot.delivery.after_send_before_marker=kill",
        BALCAO_FAILPOINTS_LOG=str(log),
        BOT_DELIVERY_ACK_WAIT="3",
    )
    telegram.send_as_user(4005, "olá", first_name="Davi")
    eventually(lambda: not bot.running, timeout=30, message="bot killed at the fail point")
    assert [line.split()[0] for line in fired(log)] == ["bot.delivery.after_send_before_marker"]
    assert replies(telegram, 4005) == 1  # Telegram has it; the marker is missing

    stack.bot(BOT_DELIVERY_ACK_WAIT="3")
    eventually(lambda: replies(telegram, 4005) and settled(stack, telegram), timeout=60, message="system settled")

    # The residual window: at-least-once toward Telegram, one duplicate at most.
    assert replies(telegram, 4005) == 2
    assert mongo.messages.count_documents({"text": "olá"}) == 1
    # Once the marker is written no third copy goes out, even if the key comes back.
    telegram.send_as_user(4005, "de novo", first_name="Davi")
    eventually(
        lambda: replies(telegram, 4005) == 3 and settled(stack, telegram), timeout=60, message="second message answered"
    )
    assert replies(telegram, 4005) == 3


def test_killed_after_keeping_a_file_before_relaying_its_message(stack, telegram, mongo, tmp_path):
    """The file is in the store, the message not yet published: Telegram hands the update
    out again, the same object is put again, and the message is stored and answered once."""
    from bench.chaos import stored_objects

    log = tmp_path / "failpoints.log"
    stack.server()
    bot = stack.bot(BALCAO_FAILPOINTS="bot.files.after_put_before_publish=kill", BALCAO_FAILPOINTS_LOG=str(log))
    invoice = b"%PDF-1.7 fatura" * 30_000
    sent = telegram.send_as_user(
        4007, "fatura", first_name="Lia", kind="document", file={"ref": telegram.store_file(invoice)["ref"]}
    )
    eventually(lambda: not bot.running, timeout=30, message="bot killed at the fail point")
    assert [line.split()[0] for line in fired(log)] == ["bot.files.after_put_before_publish"]
    assert inbound_waiting(stack.env["NATS_URL"]) == 0  # kept, not relayed
    assert len(stored_objects(stack.env["NATS_URL"])) == 1

    stack.bot()
    eventually(lambda: replies(telegram, 4007) and settled(stack, telegram), timeout=60, message="system settled")

    assert telegram.deliveries(sent["update_id"]) == 2
    (message,) = list(mongo.messages.find())
    assert message["kind"] == "document" and message["file"]["size"] == len(invoice)
    assert stored_objects(stack.env["NATS_URL"]) == {message["file"]["object_name"]: len(invoice)}
    assert replies(telegram, 4007) == 1
