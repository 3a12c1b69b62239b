"""Graceful shutdown: SIGTERM in the middle of a stream of messages loses and doubles nothing.

Both processes must exit 0 well within their grace period, having finished the
work in hand: the server its intake batch, the bot its sends in flight, with the
outbound messages it had not started handed back to JetStream at once. Anything
left unacknowledged instead would come back only after the consumers' ack wait
(30 s for intake, 120 s for delivery), beyond this test's patience.
"""

from __future__ import annotations

import threading
import time

from bot.main import SHUTDOWN_GRACE as BOT_GRACE
from server.main import SHUTDOWN_GRACE as SERVER_GRACE
from tests.harness import eventually, settle

REPLY = "Reply: mensagem recebida"
CONTACTS = [8101, 8102, 8103, 8104]
# Each chat's replies are paced at Telegram's 1/s, so this many seconds at least.
PER_CONTACT = 10


def replies(telegram, chat_id: int) -> int:
    return sum(1 for m in telegram.sent(chat_id) if m["text"] == REPLY)


def terminate(process) -> tuple[int | None, float]:
    started = time.monotonic()
    code = process.stop()  # SIGTERM
    return code, time.monotonic() - started


def test_sigterm_mid_stream_loses_and_doubles_nothing(stack, telegram, mongo):
    # The first bot sends slowly, so a queue of replies waits when it is stopped.
    server = stack.server(INTAKE_BATCH="5")
    bot = stack.bot(TELEGRAM_MAX_MESSAGES_PER_SECOND="10")
    telegram.send_as_user(8100, "aquecimento")
    eventually(lambda: replies(telegram, 8100), message="first reply")

    def stream() -> None:
        for n in range(PER_CONTACT):
            for contact in CONTACTS:
                telegram.send_as_user(contact, f"fluxo {contact} {n}")
            time.sleep(0.08)  # the stream still runs when the server is stopped

    sender = threading.Thread(target=stream)
    sender.start()
    time.sleep(0.4)
    server_exit = terminate(server)
    server = stack.server(INTAKE_BATCH="5")
    sender.join()
    total = len(CONTACTS) * PER_CONTACT
    eventually(
        lambda: mongo.messages.count_documents({"text": {"$regex": "^fluxo"}}) >= total / 2,
        message="half the stream stored",
    )
    sent_before = sum(replies(telegram, c) for c in CONTACTS)
    bot_exit = terminate(bot)
    assert 0 < sent_before < total / 2, "the bot must be stopped with replies still to send"
    stack.bot()

    assert server_exit[0] == 0 and server_exit[1] < SERVER_GRACE, server_exit
    assert bot_exit[0] == 0 and bot_exit[1] < BOT_GRACE, bot_exit
    eventually(lambda: sum(replies(telegram, c) for c in CONTACTS) >= total, timeout=25, message=f"{total} replies")
    eventually(lambda: not telegram.pending_updates(), message="updates confirmed")
    settle(stack.env["NATS_URL"], lambda: (len(telegram.sent()), mongo.messages.count_documents({})))

    for contact in CONTACTS:
        assert replies(telegram, contact) == PER_CONTACT
        session = mongo.sessions.find_one({"contact_identifier": str(contact)})
        assert session["message_count"] == PER_CONTACT
    stored = [m["text"] for m in mongo.messages.find({"text": {"$regex": "^fluxo"}})]
    assert len(stored) == total and len(set(stored)) == total
    first_run = stack.processes[0].log_text()
    assert "server stopped" in first_run and "bot stopped" in stack.processes[1].log_text()
