"""Start-up and graceful shutdown of the bot process.

Updates arrive by long polling, or by webhook when TELEGRAM_WEBHOOK_URL is set.
On SIGTERM the bot stops taking updates (the ones being relayed finish and are
confirmed), lets the sends in flight finish (the outbound messages not started
go back to JetStream), drains NATS and exits 0, within SHUTDOWN_GRACE.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import httpx
from nats.errors import Error as NatsError
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application, ApplicationBuilder
from telegram.request import HTTPXRequest

from bot import config, metrics
from bot.delivery import SENDS_IN_FLIGHT, Delivery
from bot.files import FileKeeper
from bot.relay import WEBHOOK_PATIENCE, Poller, Relay
from contract import messaging
from runtime import jetstream, lifecycle

log = logging.getLogger("bot")

# Container runtimes wait 10 s by default before SIGKILL; podman-compose.yml
# sets stop_grace_period above this.
SHUTDOWN_GRACE = 20.0


def build_application(settings: config.Settings) -> Application:
    # No AIORateLimiter: delivery paces every chat and the bot as a whole itself
    # (bot.delivery), and AIORateLimiter would stall every chat on one chat's 429.
    return (
        ApplicationBuilder()
        .token(settings.token)
        .base_url(settings.bot_base_url)
        .base_file_url(settings.bot_base_file_url)
        .request(send_request())
        .updater(None)  # polling is ours: updates are confirmed only once relayed
        .build()
    )


def send_request() -> HTTPXRequest:
    """The HTTP client of the bot's sends, one kept-alive connection per send in flight.

    PTB's default pool allows 256 connections but keeps only httpx's default 20
    alive, so past 20 concurrent sends every request opened and closed a
    connection, and httpx's assignment of queued requests to connections costs
    more the more are queued (a profile under load had 27 % of the bot's time
    there). Delivery never has more than SENDS_IN_FLIGHT sends out, so none waits
    on the pool and none reconnects.
    """
    return HTTPXRequest(
        connection_pool_size=SENDS_IN_FLIGHT,
        httpx_kwargs={
            "limits": httpx.Limits(max_connections=SENDS_IN_FLIGHT, max_keepalive_connections=SENDS_IN_FLIGHT)
        },
    )


async def main() -> None:
    settings, stopping = lifecycle.begin("bot", config.load)

    nc = await lifecycle.retry_until_ready(
        "NATS",
        lambda: jetstream.connect(settings.nats_url, "balcao-bot", messaging.BOT_INBOX_PREFIX),
        stopping,
        (OSError, NatsError, asyncio.TimeoutError),
    )
    if nc is None:
        log.info("bot stopped before it was ready")
        return
    js = nc.jetstream()
    try:
        await jetstream.ensure_streams(
            js,
            jetstream.StreamLimits(
                settings.stream_max_bytes,
                settings.stream_max_age,
                settings.parked_max_age,
                settings.dead_letter_max_age,
            ),
            replicas=settings.nats_replicas,
            administer=False,
        )
    except jetstream.ReplicationError as exc:
        await nc.close()
        sys.exit(f"bot: {exc}")

    application = build_application(settings)
    files = FileKeeper(js, replicas=settings.nats_replicas)
    relay = Relay(
        application,
        js,
        patience=WEBHOOK_PATIENCE if settings.webhook_url else jetstream.ELECTION_PATIENCE,
        files=files,
    )
    try:
        await application.initialize()
    except InvalidToken:
        sys.exit("bot: Telegram rejected TELEGRAM_BOT_TOKEN")
    except TelegramError as exc:
        sys.exit(f"bot: cannot reach the Telegram Bot API: {exc}")
    log.info("bot @%s started", application.bot.username)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)

    delivery = Delivery(
        application.bot,
        js,
        max_per_second=settings.max_messages_per_second,
        ack_wait=settings.delivery_ack_wait,
        replicas=settings.nats_replicas,
        files=files,
    )
    workers = [asyncio.create_task(delivery.run(), name="delivery")]
    receiver = poller = None
    if settings.webhook_url:
        # Tornado is needed in webhook mode only (extra `bot-webhook`).
        from bot.webhook import WebhookReceiver

        receiver = WebhookReceiver(application, relay, settings)
        try:
            await receiver.start()
        except TelegramError as exc:
            sys.exit(f"bot: Telegram refused the webhook: {exc}")
    else:
        poller = Poller(application, relay, settings.poll_timeout)
        workers.append(asyncio.create_task(poller.run(), name="poller"))
    crashed = await lifecycle.until_stopped(stopping, workers)

    log.info("bot stopping")
    deadline = lifecycle.Deadline(SHUTDOWN_GRACE)
    if receiver is not None:
        await receiver.stop(deadline.remaining())
    if poller is not None:
        poller.stop()
    delivery.stop()
    await deadline.settle(task for task in workers if not task.done())
    await application.shutdown()
    await jetstream.drain(nc, timeout=deadline.remaining(at_least=2.0))
    log.info("bot stopped")
    if crashed:
        sys.exit(1)
