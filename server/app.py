"""The Tornado application factory and the services its handlers reach."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from tornado.web import Application

from server.config import Settings
from server.database import Database
from server.handlers import base, health
from server.outbound import Outbound


@dataclass
class Services:
    db: Database
    nats: Client
    js: JetStreamContext
    outbound: Outbound


def make_app(settings: Settings, services: Services) -> Application:
    handlers = [*health.default_handlers]
    return Application(
        handlers,
        default_handler_class=base.NotFoundHandler,
        api_token=settings.api_token,
        config=settings,
        services=services,
    )
