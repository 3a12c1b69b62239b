"""A replica set changing primary: each error it raises is retried or answered 503, never lost.

The errors are the driver's own exception objects with the codes and labels
MongoDB sends during an election, raised from a fault hook in place of the
database call; what is checked is how the server reacts to each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from contract.messaging import InboundMessage
from runtime.jetstream import Received
from server import failover
from server.database import replica_set_safety
from server.intake import Intake
from server.models.sessions import RecountContended
from server.problems import ApiError, database_errors
from server.sessionwriter import SessionFinishedMeanwhile


def labelled(code: int, label: str) -> OperationFailure:
    return OperationFailure("failed", code=code, details={"code": code, "errorLabels": [label]})


FAILOVER_ERRORS = {
    "NotWritablePrimary": NotPrimaryError("not primary", {"code": 10107, "errmsg": "not primary"}),
    "PrimarySteppedDown": OperationFailure("stepped down", code=189),
    "InterruptedDueToReplStateChange": OperationFailure("interrupted", code=11602),
    "ShutdownInProgress": OperationFailure("shutting down", code=91),
    "RetryableWriteError label": labelled(262, "RetryableWriteError"),
    "TransientTransactionError label": labelled(251, "TransientTransactionError"),
    "AutoReconnect (network error during election)": AutoReconnect("connection reset"),
    "NetworkTimeout": NetworkTimeout("timed out"),
    "no primary to select": ServerSelectionTimeoutError("no primary available for writes"),
    "bulk write, majority not reached": BulkWriteError(
        {
            "writeErrors": [],
            "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
            "nInserted": 3,
        }
    ),
    "bulk write, primary stepped down mid-batch": BulkWriteError(
        {
            "writeErrors": [
                {"index": 0, "code": 11000, "errmsg": "dup"},
                {"index": 1, "code": 189, "errmsg": "stepped down"},
            ],
            "writeConcernErrors": [],
        }
    ),
}

REAL_ERRORS = {
    "duplicate key": DuplicateKeyError("E11000 duplicate key", code=11000),
    "bad value": OperationFailure("bad value", code=2),
    "bulk write of duplicates only": BulkWriteError(
        {"writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}], "writeConcernErrors": []}
    ),
}


@pytest.mark.parametrize("error", FAILOVER_ERRORS.values(), ids=FAILOVER_ERRORS.keys())
def test_failover_errors_are_transient(error: Exception) -> None:
    assert failover.is_transient(error)


@pytest.mark.parametrize("error", REAL_ERRORS.values(), ids=REAL_ERRORS.keys())
def test_other_errors_are_not_taken_for_a_failover(error: Exception) -> None:
    assert not failover.is_transient(error)


@pytest.mark.parametrize("error", FAILOVER_ERRORS.values(), ids=FAILOVER_ERRORS.keys())
def test_a_request_meeting_a_failover_is_answered_503_with_retry_after(error: Exception) -> None:
    with pytest.raises(ApiError) as raised, database_errors():
        raise error
    assert raised.value.status_code == 503
    assert raised.value.headers["Retry-After"] == "5"


@pytest.mark.parametrize(
    "error",
    [RecountContended("1 sessions kept changing"), SessionFinishedMeanwhile("2 sessions finished")],
    ids=["recount", "finish"],
)
def test_a_request_that_kept_meeting_other_writers_is_answered_503_to_retry(error: Exception) -> None:
    """Not a 500: the CLI retries a 503 (a chunk racing finishes), and stops at a 500."""
    with pytest.raises(ApiError) as raised, database_errors():
        raise error
    assert raised.value.status_code == 503 and raised.value.kind == "contended"
    assert raised.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize("error", REAL_ERRORS.values(), ids=REAL_ERRORS.keys())
def test_other_database_errors_are_not_hidden_as_503(error: Exception) -> None:
    with pytest.raises(type(error)), database_errors():
        raise error


@dataclass
class DeliveredMessage:
    """A JetStream message as the intake sees it, recording how it was settled."""

    data: bytes
    num_delivered: int = 1
    settled: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(num_delivered=self.num_delivered, sequence=SimpleNamespace(stream=1))

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(f"nak after {delay}")


class FailingDatabase:
    """The fault hook: every database call raises `error`, as during an election."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def run(self, fn, *args, **kwargs):
        self.calls += 1
        raise self.error

    @property
    def intake(self) -> FailingDatabase:  # the intake's own lane fails alike
        return self


def inbound(n: int) -> bytes:
    return InboundMessage(
        platform="telegram",
        contact_identifier=str(500 + n),
        chat_id=500 + n,
        message_id=n,
        name="Contato",
        text=f"oi {n}",
        sent_at="2026-01-01T00:00:00+00:00",
    ).to_bytes()


@pytest.mark.parametrize("error", FAILOVER_ERRORS.values(), ids=FAILOVER_ERRORS.keys())
def test_intake_leaves_a_batch_hit_by_a_failover_to_redelivery(error: Exception) -> None:
    database = FailingDatabase(error)
    intake = Intake(js=None, db=database, outbound=None, reply_text="Reply")  # type: ignore[arg-type]
    batch = [DeliveredMessage(inbound(n), num_delivered=n) for n in (1, 2)]
    received = [Received(msg, InboundMessage.from_bytes(msg.data)) for msg in batch]
    asyncio.run(intake.handle(received))  # type: ignore[arg-type]
    assert database.calls == 1
    # Not acknowledged: JetStream offers the batch again, after a growing delay;
    # storage is idempotent, so the part written before the error is not doubled.
    assert [m.settled for m in batch] == [["nak after 1.0"], ["nak after 2.0"]]


def test_replica_set_safety_defaults_to_majority_writes_and_primary_reads() -> None:
    assert replica_set_safety("mongodb://m1,m2,m3/balcao?replicaSet=rs0") == {
        "w": "majority",
        "retryWrites": True,
        "readPreference": "primary",
    }


def test_replica_set_safety_leaves_what_the_uri_chose() -> None:
    assert replica_set_safety("mongodb://m1/balcao?w=1&readPreference=primaryPreferred") == {"retryWrites": True}
