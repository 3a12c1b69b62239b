"""The Tornado application factory and the services its handlers reach."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from tornado.web import Application

from runtime.filestore import FileStore
from server.config import Settings
from server.cursors import CursorCodec
from server.database import Database
from server.eventfeed import EventFeed
from server.handlers import base, files, health, imports, liveevents, metrics, openapi, sessions
from server.importing.jobs import ImportSlots
from server.importing.running import Imports
from server.outbound import Outbound
from server.sessions import SliceHints


@dataclass(frozen=True)
class Services:
    """Everything a handler reaches (as `self.services`), built once per process by `build`.

    The server's `main` builds them over its MongoDB and NATS connections; the
    API tests build them the same way over the test servers.
    """

    config: Settings
    database: Database
    nats: Client
    jetstream: JetStreamContext
    outbound: Outbound
    cursors: CursorCodec
    imports: Imports
    import_slots: ImportSlots
    event_feed: EventFeed
    event_clients: liveevents.EventClients
    mongodb_probe: health.MongoProbe
    # Contacts' and agents' files (docs/media.md).
    files: FileStore
    # Where each listing's first page starts (server.sessions.SliceHints).
    slice_hints: SliceHints = field(default_factory=SliceHints)
    # Set when SIGTERM arrives: long work (an import) checks it between batches.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Awaited at shutdown, after the HTTP server stopped accepting and before NATS
    # is drained: each finishes the work in hand (an import's current batch) and
    # returns. They run concurrently within the shutdown grace period.
    drains: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def build(cls, config: Settings, database: Database, nats: Client) -> Services:
        """The services over a connected database and NATS client (neither is used before a request)."""
        jetstream = nats.jetstream()
        outbound = Outbound(jetstream, database)
        running_imports = Imports(database, outbound)
        event_clients = liveevents.EventClients(config.events_max_clients, config.events_max_clients_per_token)
        event_feed = EventFeed(jetstream)  # started by the first event client
        return cls(
            config=config,
            database=database,
            nats=nats,
            jetstream=jetstream,
            outbound=outbound,
            cursors=CursorCodec(*config.cursor_keys),
            imports=running_imports,
            import_slots=ImportSlots(config.import_max_concurrent),
            event_feed=event_feed,
            event_clients=event_clients,
            mongodb_probe=health.MongoProbe(database),
            files=FileStore(jetstream, config.nats_replicas),
            drains=[running_imports.drain, event_clients.drain, event_feed.stop],
        )


def make_app(services: Services) -> Application:
    handlers: list[Any] = [
        *health.default_handlers,
        *metrics.default_handlers,
        *sessions.default_handlers,
        *files.default_handlers,
        *imports.default_handlers,
        *openapi.default_handlers,
        *liveevents.default_handlers,
    ]
    return Application(
        handlers,
        default_handler_class=base.NotFoundHandler,
        services=services,
        log_function=metrics.log_request,
    )
