"""The refusals of the import domain become problem documents in one place, with the status each kind has."""

from __future__ import annotations

import pytest

from server.importing import refusals
from server.problems import refused


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (refusals.Malformed("invalid-channel", "no channel"), 400),
        (refusals.Conflicting("import-ended", "ended"), 409),
        (refusals.TooLarge("too-many-chunks", "too many"), 413),
        (refusals.UnsupportedFile("unsupported-file-type", "a PNG"), 415),
        (refusals.Unreadable("empty-file", "empty"), 422),
        (refusals.TryLater("too-many-imports", "busy", 2), 503),
    ],
)
def test_each_kind_of_refusal_has_its_status(refusal: refusals.Refused, status: int) -> None:
    problem = refused(refusal)

    assert (problem.status_code, problem.kind, problem.detail) == (status, refusal.kind, refusal.detail)


def test_a_refusal_for_now_says_when_to_ask_again() -> None:
    assert refused(refusals.TryLater("unavailable", "shutting down", 5)).headers == {"Retry-After": "5"}
    assert refused(refusals.Conflicting("import-ended", "ended")).headers == {}


def test_a_refusal_names_each_field_and_where_in_the_file_it_went_wrong() -> None:
    problem = refused(
        refusals.Unreadable(
            "invalid-file",
            "the file cannot be imported",
            [
                refusals.FieldProblem("file", "invalid JSON near byte 1024", refusals.FilePlace(None, 1024)),
                refusals.FieldProblem("channel", "required"),
            ],
        )
    )

    assert problem.errors == [
        {"field": "file", "in": "body", "message": "invalid JSON near byte 1024", "offset": 1024, "line": None},
        {"field": "channel", "in": "body", "message": "required"},
    ]
