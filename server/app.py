"""The Tornado application factory and the services its handlers reach."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext
from tornado.web import Application

from runtime.filestore import FileStore
from server.config import Settings
from server.cursors import CursorCodec
from server.database import Database
from server.eventfeed import EventFeed
from server.handlers import base, files, health, imports, liveevents, metrics, openapi, sessions
from server.handlers.importbase import ImportSlots
from server.importing.running import Imports
from server.outbound import Outbound


@dataclass
class Services:
    db: Database
    nats: Client
    js: JetStreamContext
    outbound: Outbound
    # Set when SIGTERM arrives: long work (an import) checks it between batches.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Awaited at shutdown, after the HTTP server stopped accepting and before NATS
    # is drained: each finishes the work in hand (an import's current batch) and
    # returns. They run concurrently within the shutdown grace period.
    drains: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def make_app(settings: Settings, services: Services) -> Application:
    handlers = [
        *health.default_handlers,
        *metrics.default_handlers,
        *sessions.default_handlers,
        *files.default_handlers,
        *imports.default_handlers,
        *openapi.default_handlers,
        *liveevents.default_handlers,
    ]
    running_imports = Imports(services.db, services.outbound)
    services.drains.append(running_imports.drain)
    event_clients = liveevents.EventClients(settings.events_max_clients, settings.events_max_clients_per_token)
    services.drains.append(event_clients.drain)
    event_feed = EventFeed(services.js)  # started by the first event client
    services.drains.append(event_feed.stop)
    return Application(
        handlers,
        default_handler_class=base.NotFoundHandler,
        api_token=settings.api_token,
        api_tokens=settings.api_tokens,
        config=settings,
        services=services,
        cursors=CursorCodec(*settings.cursor_keys),
        files=FileStore(services.js, settings.nats_replicas),
        imports=running_imports,
        import_slots=ImportSlots(settings.import_max_concurrent),
        event_clients=event_clients,
        event_feed=event_feed,
        log_function=metrics.log_request,
    )
