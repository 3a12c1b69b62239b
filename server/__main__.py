"""`python -m server`: the HTTP API and the intake consumer in one process."""

from runtime import lifecycle
from server.main import main

lifecycle.run(main)
