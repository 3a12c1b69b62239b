"""CLI tests run the commands against a real server, one per test module."""

from tests.server.conftest import api_server  # noqa: F401  (the fixture, shared with the API tests)
