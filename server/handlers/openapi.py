"""The OpenAPI 3.1 description of /v1, served as kept in the repository."""

from __future__ import annotations

import json
from importlib import resources

from tornado.web import url

from server.handlers.base import ApiHandler


def load_document() -> bytes:
    """The document's bytes, checked to be JSON so a broken edit fails at start-up."""
    raw = resources.files("server").joinpath("openapi.json").read_bytes()
    json.loads(raw)
    return raw


class OpenApiHandler(ApiHandler):
    SUPPORTED_METHODS = ("GET",)

    def initialize(self, document: bytes) -> None:
        self.document = document

    def get(self) -> None:
        """The API description, for clients, Bruno and schemathesis."""
        self.finish(self.document)


default_handlers = [
    url(r"/v1/openapi.json", OpenApiHandler, {"document": load_document()}, name="openapi"),
]
