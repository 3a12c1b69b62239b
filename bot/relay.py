"""Contacts' updates: handlers that relay text to JetStream, and the long-polling loop.

PTB's own Updater confirms an update to Telegram as soon as it has fetched it.
Balcão must confirm only after JetStream acknowledged the message, so this loop
asks for the next offset only once every update before it was handled. Webhook
mode (bot.webhook) runs updates through the same handlers with `handle_update`
and answers Telegram's POST only afterwards.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from telegram import Update
from telegram.error import Conflict, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot.files import FileKeeper, StoreUnavailable, attachment_of
from bot.metrics import INBOUND_RELAY_FAILURES, INBOUND_RELAYED
from contract import clock
from contract.messaging import INBOUND_SUBJECT, PLATFORM_TELEGRAM, InboundFile, InboundMessage, file_object_name
from runtime.failpoints import failpoint

log = logging.getLogger(__name__)

WELCOME = "Olá! Aqui é o atendimento. Escreva sua mensagem e responderemos em breve."
ONLY_TEXT = "Por enquanto só consigo ler mensagens de texto. Pode escrever sua mensagem?"
# The updates the bot asks Telegram for: contacts' messages and their edits.
ALLOWED_UPDATES = ["message", "edited_message"]
PUBLISH_TIMEOUT = 5.0
RETRY_DELAY = 1.0
# A relay that failed is tried again after RETRY_DELAY, doubling up to this. It
# stays short: a JetStream cluster electing a stream leader refuses publishes for
# 5-10 s, and every update behind the failed one waits in line, so a long pause
# between tries (it was 15 s) added up to 8 s to every such election.
MAX_RETRY_DELAY = 2.0


class RelayFailed(Exception):
    """The update could not be handed to JetStream; Telegram must deliver it again."""


class Relay:
    """PTB callbacks for what contacts send in private chats."""

    def __init__(self, js: JetStreamContext, files: FileKeeper | None = None) -> None:
        self._js = js
        self._files = files or FileKeeper(js)

    async def relay_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A contact's text message: into the inbound stream, acknowledged by JetStream."""
        await self._publish(update, self._inbound(update, text=update.effective_message.text))

    async def relay_media(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A file, a location or a contact card: the file kept first, then relayed like a text."""
        message = update.effective_message
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
            kept: InboundFile = await self._files.keep(context.bot, attachment, name)
        except StoreUnavailable as exc:
            INBOUND_RELAY_FAILURES.inc()
            raise RelayFailed(f"update {update.update_id} not relayed: {exc}") from exc
        await self._publish(update, self._inbound(update, text=caption, kind=attachment.kind, file=kept))

    async def relay_edit(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A contact edited a message: the new text or caption, relayed; no answer."""
        message = update.edited_message
        edited_at = clock.rfc3339(message.edit_date or message.date)
        text = message.text if message.text is not None else (message.caption or "")
        await self._publish(
            update, self._inbound(update, text=text, edited_at=edited_at, edit_update_id=update.update_id)
        )

    def _inbound(self, update: Update, **content: object) -> InboundMessage:
        message, user = update.effective_message, update.effective_user
        return InboundMessage(
            platform=PLATFORM_TELEGRAM,
            contact_identifier=str(user.id),
            chat_id=message.chat_id,
            message_id=message.message_id,
            name=user.full_name,
            sent_at=clock.rfc3339(message.date),
            **content,  # type: ignore[arg-type]
        )

    async def _publish(self, update: Update, inbound: InboundMessage) -> None:
        try:
            await self._js.publish(
                INBOUND_SUBJECT, inbound.to_bytes(), timeout=PUBLISH_TIMEOUT, headers={"Nats-Msg-Id": inbound.dedup_id}
            )
        except (NatsError, asyncio.TimeoutError) as exc:
            INBOUND_RELAY_FAILURES.inc()
            raise RelayFailed(f"update {update.update_id} not relayed: {exc!r}") from exc
        INBOUND_RELAYED.inc()
        # JetStream has it, Telegram still thinks it undelivered: a crash here
        # gets the same update_id again, which Nats-Msg-Id de-duplicates.
        failpoint("bot.relay.after_ack_before_confirm")

    async def welcome(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start: a short welcome, nothing stored."""
        await update.effective_message.reply_text(WELCOME)


def register(application: Application, relay: Relay, failures: set[int]) -> None:
    private = filters.ChatType.PRIVATE
    new = filters.UpdateType.MESSAGE
    application.add_handler(CommandHandler("start", relay.welcome, filters=private & new))
    application.add_handler(MessageHandler(private & new & filters.TEXT, relay.relay_text))
    application.add_handler(MessageHandler(private & new & ~filters.TEXT, relay.relay_media))
    application.add_handler(MessageHandler(private & filters.UpdateType.EDITED_MESSAGE, relay.relay_edit))

    async def log_failure(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Log first; a relay failure marks the update for another attempt."""
        error = context.error
        if isinstance(error, RelayFailed) and isinstance(update, Update):
            log.warning("%s", error)
            failures.add(update.update_id)
        elif isinstance(error, (Forbidden, RetryAfter, NetworkError)):
            log.warning("answer to update %s not sent: %s", getattr(update, "update_id", "?"), error)
        else:
            log.error("update %s failed", getattr(update, "update_id", "?"), exc_info=error)

    application.add_error_handler(log_failure)


async def handle_update(application: Application, failures: set[int], update: Update) -> bool:
    """Run the update through the handlers; False if relaying it to JetStream failed,
    so it must not be confirmed to Telegram."""
    failures.discard(update.update_id)
    await application.process_update(update)
    return update.update_id not in failures


class Poller:
    """Long polling that confirms an update only after it was handled."""

    def __init__(self, application: Application, failures: set[int], timeout: int) -> None:
        self._application = application
        self._failures = failures
        self._timeout = timeout
        self._offset: int | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        bot = self._application.bot
        await bot.delete_webhook()
        log.info("polling for updates")
        while not self._stopping.is_set():
            try:
                updates = await self._fetch()
            except asyncio.CancelledError:
                break
            for update in updates:
                if not await self._handle_until_done(update):
                    break
                self._offset = update.update_id + 1
        await self._confirm()
        log.info("polling stopped")

    def stop(self) -> None:
        self._stopping.set()

    async def _fetch(self) -> tuple[Update, ...]:
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
            return fetch.result()
        except Conflict as exc:
            log.error("another poller or a webhook holds this bot: %s", exc)
        except RetryAfter as exc:
            await asyncio.sleep(retry_seconds(exc))
        except TelegramError as exc:  # NetworkError, TimedOut, server errors
            log.warning("getUpdates failed: %s", exc)
        await asyncio.sleep(RETRY_DELAY)
        return ()

    async def _handle_until_done(self, update: Update) -> bool:
        """Handle the update, retrying a failed relay; False if stopped before it succeeded."""
        delay = RETRY_DELAY
        while True:
            if await handle_update(self._application, self._failures, update):
                return True
            # Not confirmed, so even a crash now means Telegram delivers it again.
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return False
            except asyncio.TimeoutError:
                delay = min(delay * 2, MAX_RETRY_DELAY)

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
