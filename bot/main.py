"""Start-up and graceful shutdown of the bot process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from telegram.error import InvalidToken, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder

from bot import config
from bot.delivery import Delivery
from bot.relay import Poller, Relay, register
from contract import jetstream, logs
from contract.environment import ConfigError

log = logging.getLogger("bot")

SHUTDOWN_GRACE = 20.0


def build_application(settings: config.Settings) -> Application:
    return (
        ApplicationBuilder()
        .token(settings.token)
        .base_url(settings.bot_base_url)
        .rate_limiter(AIORateLimiter(overall_max_rate=settings.max_messages_per_second, max_retries=3))
        .updater(None)  # polling is ours: updates are confirmed only once relayed
        .build()
    )


async def main() -> None:
    try:
        settings = config.load()
    except ConfigError as exc:
        sys.exit(f"bot: {exc}")
    logs.configure(settings.log_level, settings.log_format)

    nc = await jetstream.connect(settings.nats_url, "balcao-bot")
    js = nc.jetstream()
    await jetstream.ensure_streams(js)

    application = build_application(settings)
    failures: set[int] = set()
    register(application, Relay(js), failures)
    try:
        await application.initialize()
    except InvalidToken:
        sys.exit("bot: Telegram rejected TELEGRAM_BOT_TOKEN")
    except TelegramError as exc:
        sys.exit(f"bot: cannot reach the Telegram Bot API: {exc}")
    log.info("bot @%s started", application.bot.username)

    poller = Poller(application, failures, settings.poll_timeout)
    delivery = Delivery(application.bot, js)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    tasks = [asyncio.create_task(poller.run(), name="poller"),
             asyncio.create_task(delivery.run(), name="delivery")]
    await stopping.wait()
    log.info("bot stopping")
    poller.stop()
    delivery.stop()
    done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
    for task in pending:
        task.cancel()
    await application.shutdown()
    await jetstream.drain(nc)
    log.info("bot stopped")
