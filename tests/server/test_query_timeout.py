"""Database time per request: `maxTimeMS` on every sessions query, and what a timeout becomes."""

from __future__ import annotations

import pytest
from bson import ObjectId
from pymongo.errors import (
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from server import sessions
from server.problems import ApiError, database_errors


def test_a_query_timeout_is_a_503_with_retry_after():
    with pytest.raises(ApiError) as error, database_errors():
        raise ExecutionTimeout("operation exceeded time limit", 50)
    assert error.value.status_code == 503
    assert error.value.kind == "query-timeout"
    assert error.value.headers == {"Retry-After": "5"}


def test_waiting_too_long_for_an_answer_is_a_query_timeout_too():
    with pytest.raises(ApiError) as error, database_errors():
        raise NetworkTimeout("timed out")
    assert error.value.kind == "query-timeout"


def test_no_server_to_ask_is_unavailable():
    with pytest.raises(ApiError) as error, database_errors():
        raise ServerSelectionTimeoutError("no servers")
    assert error.value.status_code == 503 and error.value.kind == "unavailable"


def test_other_database_errors_stay_errors():
    with pytest.raises(OperationFailure), database_errors():
        raise OperationFailure("something else", 2)


@pytest.mark.asyncio
async def test_run_bounded_stops_queries_that_outlast_their_time(database, mongo):
    # Found at once with time to spare; refused when no time is left.
    assert await database.run_bounded(5.0, sessions.find_session, ObjectId()) is None
    with pytest.raises(PyMongoError) as error:
        await database.run_bounded(1e-9, sessions.find_session, ObjectId())
    assert error.value.timeout
