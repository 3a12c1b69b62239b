"""`python -m bot`: relay Telegram to JetStream and deliver outbound messages."""

from bot.main import main
from runtime import lifecycle

lifecycle.run(main)
