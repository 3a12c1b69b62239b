"""Contacts' updates: handlers that relay messages and edits to JetStream, and the long-polling loop.

PTB's own Updater confirms an update to Telegram as soon as it has fetched it.
Balcão must confirm only after JetStream acknowledged the message, so the
poller asks for the next offset (which confirms every update before it) only
once every update of the batch in hand was handled. The batch is relayed at
once, a lane per chat: chats do not wait for each other, and a chat's messages
reach JetStream in the order its contact sent them. Webhook mode (bot.webhook)
runs each update through the same handlers with `Relay.handle` and answers
Telegram's POST only afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from telegram import Update
from telegram.error import Conflict, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot.files import FileKeeper, StoreUnavailable, attachment_of
from bot.metrics import INBOUND_RELAY_FAILURES, INBOUND_RELAYED
from contract import clock
from contract.messaging import INBOUND_SUBJECT, PLATFORM_TELEGRAM, InboundMessage, file_object_name
from runtime import jetstream
from runtime.failpoints import failpoint
from runtime.retry import RetryPolicy, stopped_within

log = logging.getLogger(__name__)

WELCOME = "Olá! Aqui é o atendimento. Escreva sua mensagem e responderemos em breve."
ONLY_TEXT = "Por enquanto só consigo ler mensagens de texto. Pode escrever sua mensagem?"
# The updates the bot asks Telegram for: contacts' messages and their edits.
ALLOWED_UPDATES = ["message", "edited_message"]
PUBLISH_TIMEOUT = 5.0
# A relay that failed is tried again after 1 s, then every 2 s. It stays short:
# every update behind the failed one in its chat waits, and so does the
# confirmation of the whole batch; a stream electing its leader is already
# waited out inside each try (jetstream.publish_through_election).
RELAY_RETRY = RetryPolicy(first=1.0, cap=2.0)
# A failed getUpdates (Telegram or the network away, another poller holding the
# bot) is asked again after 1 s, doubling up to 8 s while it keeps failing.
POLL_RETRY = RetryPolicy(first=1.0, cap=8.0)
# In webhook mode Telegram waits for the answer to its POST, so a try waits out a
# leaderless stream for less long: the answer (500 on failure, and Telegram
# delivers the update again) then comes before Telegram gives up on the call
# (the fake Bot API after 10 s), even when the last publish times out (+5 s).
WEBHOOK_PATIENCE = 4.0


class Relay:
    """PTB callbacks for what contacts send in private chats, and whether each update was relayed.

    `patience` is how long one try waits out a stream without a leader before
    it counts as failed.
    """

    def __init__(
        self,
        application: Application,
        js: JetStreamContext,
        patience: float = jetstream.ELECTION_PATIENCE,
        files: FileKeeper | None = None,
    ) -> None:
        self._application = application
        self._js = js
        self._patience = patience
        self._files = files or FileKeeper(js)
        # Updates whose message JetStream did not acknowledge, while they are handled.
        self._unrelayed: set[int] = set()
        private = filters.ChatType.PRIVATE
        new = filters.UpdateType.MESSAGE
        application.add_handler(CommandHandler("start", self.welcome, filters=private & new))
        application.add_handler(MessageHandler(private & new & filters.TEXT, self.relay_text))
        application.add_handler(MessageHandler(private & new & ~filters.TEXT, self.relay_media))
        application.add_handler(MessageHandler(private & filters.UpdateType.EDITED_MESSAGE, self.relay_edit))
        application.add_error_handler(self.log_error)

    async def handle(self, update: Update) -> bool:
        """Run the update through the handlers once; False if relaying it to JetStream
        failed, so it must not be confirmed to Telegram."""
        self._unrelayed.discard(update.update_id)
        await self._application.process_update(update)
        if update.update_id in self._unrelayed:
            self._unrelayed.discard(update.update_id)
            return False
        return True

    async def handle_until_relayed(self, update: Update, stopping: asyncio.Event) -> bool:
        """Handle the update, trying a failed relay again; False if stopped before it succeeded."""
        async for _ in RELAY_RETRY.tries(stopping):
            if await self.handle(update):
                return True
            # Not confirmed, so even a crash now means Telegram delivers it again.
        return False

    async def handle_batch(self, updates: Sequence[Update], stopping: asyncio.Event) -> int:
        """Handle a polled batch, each chat's updates in order, the chats at once.

        Returns how many updates, from the first, are done: those may be
        confirmed. All of them, unless `stopping` was set while one waited for
        another try.
        """
        done = [False] * len(updates)
        lanes: dict[int | None, list[int]] = {}
        for index, update in enumerate(updates):
            chat = update.effective_chat
            lanes.setdefault(chat.id if chat else None, []).append(index)

        async def run(lane: list[int]) -> None:
            for index in lane:
                if not await self.handle_until_relayed(updates[index], stopping):
                    return  # the chat's later updates wait: their order is kept
                done[index] = True

        await asyncio.gather(*(run(lane) for lane in lanes.values()))
        return done.index(False) if False in done else len(done)

    async def relay_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A contact's text message: into the inbound stream, acknowledged by JetStream."""
        message = update.effective_message
        assert message is not None and message.text is not None  # what the filters let in
        await self._publish(update, self._inbound(update, text=message.text))

    async def relay_media(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A file, a location or a contact card: the file kept first, then relayed like a text."""
        message = update.effective_message
        assert message is not None  # the handler's filters take messages only
        caption = message.caption or ""
        if message.location is not None:
            place = {"latitude": message.location.latitude, "longitude": message.location.longitude}
            await self._publish(update, self._inbound(update, text=caption, kind="location", location=place))
            return
        if message.contact is not None:
            card = message.contact
            fields = {
                "phone_number": card.phone_number or "",
                "first_name": card.first_name or "",
                "last_name": card.last_name or "",
                "user_id": str(card.user_id) if card.user_id else "",
            }
            await self._publish(update, self._inbound(update, text=caption, kind="contact", contact=fields))
            return
        attachment = attachment_of(message)
        if attachment is None:
            await message.reply_text(ONLY_TEXT)  # a poll, a dice...: nothing stored
            return
        name = file_object_name(PLATFORM_TELEGRAM, message.chat_id, message.message_id)
        try:
            kept = await self._files.keep(context.bot, attachment, name)
        except StoreUnavailable as exc:
            self._not_relayed(update, exc)
            return
        await self._publish(update, self._inbound(update, text=caption, kind=attachment.kind, file=kept))

    async def relay_edit(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A contact edited a message: the new text or caption, relayed; no answer."""
        message = update.edited_message
        assert message is not None  # the handler's filters take edits only
        edited_at = clock.rfc3339(message.edit_date or message.date)
        text = message.text if message.text is not None else (message.caption or "")
        await self._publish(
            update, self._inbound(update, text=text, edited_at=edited_at, edit_update_id=update.update_id)
        )

    def _inbound(self, update: Update, **content: Any) -> InboundMessage:
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None  # private chats' messages have both
        return InboundMessage(
            platform=PLATFORM_TELEGRAM,
            contact_identifier=str(user.id),
            chat_id=message.chat_id,
            message_id=message.message_id,
            name=user.full_name,
            sent_at=clock.rfc3339(message.date),
            **content,
        )

    async def _publish(self, update: Update, inbound: InboundMessage) -> None:
        try:
            await jetstream.publish_through_election(
                self._js,
                INBOUND_SUBJECT,
                inbound.to_bytes(),
                timeout=PUBLISH_TIMEOUT,
                headers={"Nats-Msg-Id": inbound.dedup_id},
                patience=self._patience,
            )
        except (NatsError, asyncio.TimeoutError) as exc:
            self._not_relayed(update, exc)
            return
        INBOUND_RELAYED.inc()
        # JetStream has it, Telegram still thinks it undelivered: a crash here
        # gets the same update_id again, which Nats-Msg-Id de-duplicates.
        failpoint("bot.relay.after_ack_before_confirm")

    def _not_relayed(self, update: Update, exc: Exception) -> None:
        INBOUND_RELAY_FAILURES.inc()
        log.warning("update %s not relayed: %r", update.update_id, exc)
        self._unrelayed.add(update.update_id)

    async def welcome(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start: a short welcome, nothing stored."""
        assert update.effective_message is not None  # a command is a message
        await update.effective_message.reply_text(WELCOME)

    async def log_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log first: an answer that could not be sent, or a handler's bug."""
        error = context.error
        if isinstance(error, (Forbidden, RetryAfter, NetworkError)):
            log.warning("answer to update %s not sent: %s", getattr(update, "update_id", "?"), error)
        else:
            log.error("update %s failed", getattr(update, "update_id", "?"), exc_info=error)


class Poller:
    """Long polling that confirms an update only after it was handled."""

    def __init__(self, application: Application, relay: Relay, timeout: int) -> None:
        self._application = application
        self._relay = relay
        self._timeout = timeout
        self._offset: int | None = None
        self._failed_polls = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await self._application.bot.delete_webhook()
        log.info("polling for updates")
        while not self._stopping.is_set():
            try:
                updates = await self._fetch()
            except asyncio.CancelledError:
                break
            done = await self._relay.handle_batch(updates, self._stopping)
            if done:
                self._offset = updates[done - 1].update_id + 1
            if done < len(updates):
                break  # stopped before the rest were relayed: they stay unconfirmed
        await self._confirm()
        log.info("polling stopped")

    def stop(self) -> None:
        self._stopping.set()

    async def _fetch(self) -> Sequence[Update]:
        fetch = asyncio.ensure_future(
            self._application.bot.get_updates(
                offset=self._offset, timeout=self._timeout, allowed_updates=ALLOWED_UPDATES
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if fetch not in done:
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
            return ()
        try:
            updates = fetch.result()
        except Conflict as exc:
            log.error("another poller or a webhook holds this bot: %s", exc)
        except RetryAfter as exc:
            await stopped_within(retry_seconds(exc), self._stopping)
        except TelegramError as exc:  # NetworkError, TimedOut, server errors
            log.warning("getUpdates failed: %s", exc)
        else:
            self._failed_polls = 0
            return updates
        self._failed_polls += 1
        await stopped_within(POLL_RETRY.delay(self._failed_polls), self._stopping)
        return ()

    async def _confirm(self) -> None:
        """Tell Telegram which updates are done, so a restart does not see them again."""
        if self._offset is None:
            return
        try:
            await self._application.bot.get_updates(offset=self._offset, timeout=0)
        except TelegramError as exc:
            log.warning("could not confirm handled updates (they will be relayed again, and de-duplicated): %s", exc)


def retry_seconds(exc: RetryAfter) -> float:
    value = exc.retry_after
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)
