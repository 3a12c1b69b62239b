"""A local Telegram Bot API server, shaped like the documented API, for tests and the dev stack.

The bot only sees ``/bot<token>/<method>`` and the download path ``/file/bot<token>/<path>``;
test-only control endpoints live under ``/_test/``.

- ``state``: chats, the update queue and its confirmation rules, what contacts and the bot
  sent, what the bot tried, armed faults, the webhook;
- ``errors``: ApiError (a Telegram-shaped refusal) and ControlError (bad test input);
- ``flood``: Telegram's flood limits (429 with ``retry_after``);
- ``entities``: message text as Telegram measures it (UTF-16 units, after markup);
- ``messages``: what a contact sends, of every kind, and its edits;
- ``files``: the files' bytes, spooled or generated, and their file_id and file_path;
- ``images``: the width and height sendPhoto reads of an image;
- ``apirequest``: a method call's parameters, its body streamed, uploads spooled;
- ``botapi``: the Bot API methods as served to the bot, the download path, webhook delivery;
- ``control``: the test controls, in-process and under ``/_test/``;
- ``server``: FakeTelegram, which holds one state and serves both over HTTP;
- ``__main__``: ``python -m devstack.faketelegram --port P --token T``.
"""

from devstack.faketelegram.errors import ApiError, ControlError
from devstack.faketelegram.flood import FloodControl, FloodLimits
from devstack.faketelegram.server import FakeTelegram

__all__ = ["ApiError", "ControlError", "FakeTelegram", "FloodControl", "FloodLimits"]
