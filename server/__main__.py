"""`python -m server`: the HTTP API and the intake consumer in one process."""

import asyncio

from server.main import main

asyncio.run(main())
