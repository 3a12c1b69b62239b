"""`python -m bot`: relay Telegram to JetStream and deliver outbound messages."""

import asyncio

from bot.main import main

asyncio.run(main())
