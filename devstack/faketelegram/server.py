"""FakeTelegram: one state, served to the bot as the Bot API and to tests as controls, over HTTP."""

from __future__ import annotations

import ssl
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from devstack.faketelegram.botapi import BotApi, BotApiHandler, FileHandler, NotFoundHandler
from devstack.faketelegram.control import CONTROL_ROUTES, TelegramControls
from devstack.faketelegram.state import TelegramState

JsonDict = dict[str, Any]


class FakeTelegram(TelegramControls):
    """The fake Bot API server: its state, its methods, the test controls and the HTTP server.

    Where it knowingly differs from Telegram: markup (parse_mode) is stripped to measure a
    text but neither checked nor rendered, webhooks may be plain http, a webhook's response
    body is not run as a method call, message ids count per chat in every chat type, a file
    is never fetched from an HTTP URL, and a photo is not re-encoded (its largest size is the
    bytes the bot sent; the smaller ones are made up).
    """

    def __init__(
        self,
        token: str = "123:ABC",
        *,
        bot_username: str = "balcao_test_bot",
        bot_first_name: str = "Balcão Test Bot",
        webhook_retry_delay: float = 0.5,
    ) -> None:
        super().__init__(TelegramState())
        self.token = token
        self.api = BotApi(
            self.state,
            token,
            bot_username=bot_username,
            bot_first_name=bot_first_name,
            webhook_retry_delay=webhook_retry_delay,
        )
        self.bot_user = self.api.bot_user
        self.host = "127.0.0.1"
        self.port = 0
        self.scheme = "http"
        self._server: tornado.httpserver.HTTPServer | None = None

    @property
    def base_url(self) -> str:
        """The API root; python-telegram-bot gets ``base_url + "/bot"`` as its ``base_url``
        and ``base_url + "/file/bot"`` as its ``base_file_url``."""
        host = "127.0.0.1" if self.host in {"", "0.0.0.0", "::"} else self.host
        return f"{self.scheme}://[{host}]:{self.port}" if ":" in host else f"{self.scheme}://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on `host`:`port`; with `ssl_context`, over TLS, as Telegram's own API is."""
        sockets = tornado.netutil.bind_sockets(port, host)
        self._server = tornado.httpserver.HTTPServer(self._application(), ssl_options=ssl_context)
        self._server.add_sockets(sockets)
        self.host, self.port = host, sockets[0].getsockname()[1]
        self.scheme = "https" if ssl_context is not None else "http"
        self.api.open()

    async def stop(self) -> None:
        await self.api.close()
        if self._server is not None:
            self._server.stop()
            # Woken long polls answer [] before their connections are closed under them.
            await self.api.polls_answered()
            await self._server.close_all_connections()
            self._server = None
        self.api.close_client()
        # The spooled files go with the server.
        self.state.files.close()

    async def call_api(self, token: str, method: str, params: JsonDict) -> Any:
        """Runs one Bot API call in-process; raises ApiError with Telegram's code and description."""
        return await self.api.call(token, method, params)

    def _application(self) -> tornado.web.Application:
        bot_api: list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]] = [
            (r"/bot([^/]*)/([^/]*)", BotApiHandler, {"api": self.api}),
            (r"/file/bot([^/]*)/(.+)", FileHandler, {"api": self.api}),
        ]
        control = [(pattern, handler, {"controls": self}) for pattern, handler in CONTROL_ROUTES]
        return tornado.web.Application([*bot_api, *control], default_handler_class=NotFoundHandler)
