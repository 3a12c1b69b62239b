"""``python -m devstack.faketelegram --port P --token T``: the fake Bot API on its own, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl

from devstack.faketelegram.server import FakeTelegram

log = logging.getLogger("devstack.faketelegram")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.faketelegram", description="Run the fake Telegram Bot API server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    # 8081 is the port of Telegram's own local Bot API server.
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", required=True)
    parser.add_argument("--bot-username", default="balcao_test_bot")
    # A bot in a container may talk plain http only to its own loopback (bot/config.py):
    # from outside, the fake speaks TLS with a certificate the bot is told to trust.
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--no-flood-control", action="store_true", help="accept sends beyond Telegram's flood limits (on by default)"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per long poll would bury the start line; failures still log as warnings.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    fake = FakeTelegram(token=args.token, bot_username=args.bot_username)
    fake.flood_control.enabled = not args.no_flood_control
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    await fake.start(host=args.host, port=args.port, ssl_context=context)
    log.info("fake Telegram Bot API for @%s listening on %s", args.bot_username, fake.base_url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
