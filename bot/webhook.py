"""Webhook mode: Telegram POSTs each update, confirmed only once JetStream has it.

PTB's own webhook server answers 200 before the handlers run, which would
confirm updates JetStream never acknowledged. This receiver runs each update
through the same handlers as polling (`bot.relay.Relay.handle`) and answers
200 only after that; 500 when the relay failed, so Telegram delivers the update
again; 403 when the secret Telegram was given at setWebhook is missing or wrong.

The listener faces the internet, so it runs on the API server's guarded HTTP
server (runtime/httpserver.py) with limits fit for Telegram: bodies of at most
MAX_BODY_BYTES, headers and idle keep-alive cut off after IDLE_TIMEOUT, a body
after BODY_TIMEOUT, at most MAX_CONNECTIONS open and MAX_CONNECTIONS_PER_ADDRESS
from one address. The secret is checked from the headers, before any byte of
the body is read: a caller without it costs a header parse and a 403.

Tornado is imported here and nowhere else in the bot: polling mode runs without
it (extra `bot-webhook`), so bot.main imports this module only in webhook mode.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from http import HTTPStatus

from telegram import Update
from telegram.ext import Application
from tornado.web import Application as WebApplication
from tornado.web import RequestHandler, stream_request_body

from bot.config import Settings
from bot.metrics import WEBHOOK_REFUSED
from bot.relay import ALLOWED_UPDATES, Relay
from runtime.httpserver import GuardedHTTPServer

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Updates are small: Telegram's largest text is 4096 characters, which JSON
# escapes to at most 24 KiB, and the rest of a message update is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
# Telegram sends an update whole and at once; keep-alive connections it reuses
# come back within seconds.
IDLE_TIMEOUT = 60.0
BODY_TIMEOUT = 10.0
# Telegram opens at most `max_connections` (setWebhook; 40, its default, asked
# for below) at once. Behind a TLS proxy every connection is the proxy's: keep
# its upstream pool under the per-address cap.
TELEGRAM_CONNECTIONS = 40
MAX_CONNECTIONS = 100
MAX_CONNECTIONS_PER_ADDRESS = 50


class WebhookReceiver:
    """The HTTP listener Telegram posts updates to, and its registration with Telegram."""

    def __init__(self, application: Application, relay: Relay, settings: Settings) -> None:
        self.application = application
        self._relay = relay
        self._settings = settings
        self._secret = (settings.webhook_secret or "").encode()
        self._server: GuardedHTTPServer | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False

    async def start(self) -> None:
        """Listen first, then tell Telegram where to post, so no update finds nobody home."""
        routes = [(self._settings.webhook_path, UpdateHandler, {"receiver": self})]
        self._server = GuardedHTTPServer(
            WebApplication(routes),
            max_body_size=MAX_BODY_BYTES,
            idle_connection_timeout=IDLE_TIMEOUT,
            body_timeout=BODY_TIMEOUT,
            max_connections=MAX_CONNECTIONS,
            max_connections_per_address=MAX_CONNECTIONS_PER_ADDRESS,
            refused=lambda reason: WEBHOOK_REFUSED.labels(reason=reason).inc(),
        )
        self._server.listen(self._settings.webhook_port)
        await self.application.bot.set_webhook(
            url=self._settings.webhook_url,
            secret_token=self._settings.webhook_secret,
            allowed_updates=ALLOWED_UPDATES,
            max_connections=TELEGRAM_CONNECTIONS,
        )
        log.info("receiving updates by webhook on port %d", self._settings.webhook_port)

    async def stop(self, timeout: float) -> None:
        """Refuse new updates, let the ones being relayed finish, close the listener.

        The webhook stays registered: Telegram keeps the updates and retries them
        until a bot answers again.
        """
        self.stopping = True
        if self._server is None:
            return
        self._server.stop()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d webhook updates still being relayed; closing", self._in_flight)
        await self._server.close_all_connections()
        log.info("webhook stopped")

    def authentic(self, secret: str) -> bool:
        return hmac.compare_digest(secret.encode(), self._secret)

    async def relay(self, update: Update) -> bool:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._relay.handle(update)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()


@stream_request_body
class UpdateHandler(RequestHandler):
    SUPPORTED_METHODS = ("POST",)

    def initialize(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self._body = bytearray()

    def prepare(self) -> None:
        """The secret and the shutdown are checked from the headers, before the body is read."""
        receiver = self.receiver
        if not receiver.authentic(self.request.headers.get(SECRET_HEADER, "")):
            log.warning("webhook call without the right secret from %s refused", self.request.remote_ip)
            WEBHOOK_REFUSED.labels(reason="wrong-secret").inc()
            self.answer(HTTPStatus.FORBIDDEN)
        elif receiver.stopping:
            self.answer(HTTPStatus.SERVICE_UNAVAILABLE)  # Telegram retries later

    def data_received(self, chunk: bytes) -> None:
        # At most MAX_BODY_BYTES arrive: the guarded server cuts off the rest.
        self._body += chunk

    async def post(self) -> None:
        """One update from Telegram: 200 only once handled (and relayed, if text)."""
        receiver = self.receiver
        try:
            body = json.loads(self._body)
            update = Update.de_json(body, receiver.application.bot) if isinstance(body, dict) else None
        except Exception as exc:  # PTB raises assorted errors on malformed updates
            log.warning("webhook body is not an update: %r", exc)
            update = None
        if update is None:
            return self.answer(HTTPStatus.BAD_REQUEST)  # resending will not fix it
        relayed = await receiver.relay(update)
        self.answer(HTTPStatus.OK if relayed else HTTPStatus.INTERNAL_SERVER_ERROR)

    def answer(self, status: HTTPStatus) -> None:
        # No body: Telegram would run a JSON body as a Bot API call.
        self.set_status(status)
        self.finish()

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.finish()  # no body either when Tornado answers (405 to another method)
