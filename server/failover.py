"""Which MongoDB errors are a replica set changing hands, and so worth another try.

During an election (a member stepping down, a restart, a network split) writes
fail for a few seconds with "not writable primary", "primary stepped down",
"interrupted due to replication state change" or a dropped connection. The
driver retries a write once by itself (retryable writes, on by default); what
still fails is passed up. Every write of the server is idempotent (natural keys,
upserts, `$setOnInsert`), so trying the whole operation again later stores
nothing twice: the intake leaves the batch to JetStream's redelivery, the outbox
relay backs off, and an HTTP request is answered 503 with Retry-After.

A timeout of w:majority (WriteConcernFailed) is transient as well: the write is
on the primary, not yet on a majority, and writing it again is harmless.
"""

from __future__ import annotations

from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

# Server error codes of a replica set in transition (MongoDB's error_codes.yml).
TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        64,  # WriteConcernFailed (w:majority not reached in wtimeout)
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)
TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")


def is_transient(exc: BaseException) -> bool:
    """True when `exc` says MongoDB is unreachable or changing primary, not that the request is wrong."""
    if isinstance(exc, ConnectionFailure):  # AutoReconnect, NotPrimaryError, timeouts
        return True
    if not isinstance(exc, PyMongoError):
        return False
    if any(exc.has_error_label(label) for label in TRANSIENT_LABELS):
        return True
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        codes = [error.get("code") for error in details.get("writeConcernErrors", [])]
        # Duplicate keys (11000) in an unordered bulk write are the idempotent path, not a failure.
        codes += [error.get("code") for error in details.get("writeErrors", []) if error.get("code") != 11000]
        return any(code in TRANSIENT_CODES for code in codes)
    if isinstance(exc, OperationFailure):
        return exc.code in TRANSIENT_CODES
    return False
