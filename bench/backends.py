"""The servers a benchmark runs against: nats-server, and MongoDB or SecantusDB."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import NatsServer, SecantusServer

# With the default 1 GB WiredTiger cache, eviction stalls writes for minutes once
# the sessions' name-key index outgrows it (past ~100,000 sessions), and the
# default oplog cap of 100,000 entries has it pruning on every write.
LARGE = {"cache_size": "6G", "oplog_max_entries": 5_000_000}


@dataclass(frozen=True)
class Backends:
    nats_url: str
    mongodb_uri: str
    mongodb_name: str  # for the report: "external" or "SecantusDB"


@contextlib.contextmanager
def backends(work: Path, *, large: bool = False) -> Iterator[Backends]:
    """A fresh nats-server, and MONGODB_URI when set, else a SecantusDB, both with data under `work`.

    `large`: SecantusDB is tuned for hundreds of thousands of documents.
    """
    nats_server = NatsServer(data_dir=work / "nats")
    mongo = SecantusServer(data_dir=work / "mongo", **(LARGE if large else {}))
    external = os.environ.get("MONGODB_URI")
    nats_server.start()
    if not external:
        mongo.start()
    try:
        yield Backends(nats_server.url, external or mongo.uri, "external" if external else "SecantusDB")
    finally:
        nats_server.stop()
        mongo.stop()
