"""The benchmarks' fixtures: MongoEngine connected in this process, as the server tests have it."""

from tests.server.conftest import database

__all__ = ["database"]
