"""Normalising one session record: every accepted variant, every rejected value and its field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from server.importing.records import (
    MAX_RECORD_PROBLEMS,
    ImportedMessage,
    ImportedSession,
    RecordError,
    RecordInvalid,
    message_key,
    normalise_session,
)

MOMENT = datetime(2021, 3, 3, 19, 43, 38, tzinfo=UTC)
MISSING = object()


def message_record(**fields: Any) -> dict[str, Any]:
    """A valid message as found in the original file; MISSING drops a field."""
    record = {
        "id": "0b9c5d4e-8a1f-4c53-9d2e-7f6a5b4c3d2e",
        "content": "Olá, tudo bem?",
        "date": "2021-03-03T19:43:38.000Z",
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not MISSING}


def session_record(**fields: Any) -> dict[str, Any]:
    """A valid session as found in the original file; MISSING drops a field."""
    record = {
        "_id": "603fd3c61ce2ab564307a73a",
        "name": "Benjamin Lynch",
        "platform_type": "Telegram",
        "contact_identifier": 85996199709,
        "messages": [message_record()],
    }
    record.update(fields)
    return {key: value for key, value in record.items() if value is not MISSING}


def normalise(raw: object) -> ImportedSession:
    return normalise_session(raw, record=1)


def errors_of(raw: object) -> list[tuple[str, str]]:
    with pytest.raises(RecordInvalid) as caught:
        normalise_session(raw, record=7, line=12, offset=345)
    return [(error.field, error.message) for error in caught.value.errors]


def test_original_file_record_normalises() -> None:
    assert normalise(session_record()) == ImportedSession(
        source_id="603fd3c61ce2ab564307a73a",
        name="Benjamin Lynch",
        platform="telegram",
        contact_identifier="85996199709",
        messages=(ImportedMessage("0b9c5d4e-8a1f-4c53-9d2e-7f6a5b4c3d2e", "Olá, tudo bem?", MOMENT),),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("603fd3c61ce2ab564307a73a", "603fd3c61ce2ab564307a73a"),
        ({"$oid": "603fd3c61ce2ab564307a73a"}, "603fd3c61ce2ab564307a73a"),
        ("603FD3C61CE2AB564307A73A", "603fd3c61ce2ab564307a73a"),
        (" 603fd3c61ce2ab564307a73a ", "603fd3c61ce2ab564307a73a"),
        (MISSING, None),
        (None, None),
        (float("nan"), None),  # pandas' empty cell
    ],
)
def test_source_id_variants(value: object, expected: str | None) -> None:
    assert normalise(session_record(_id=value)).source_id == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (85996199709, "85996199709"),
        ("85996199709", "85996199709"),
        (Decimal("85996199709"), "85996199709"),  # ijson's numbers
        (85996199709.0, "85996199709"),  # pandas' int column with blanks
        (" 859 9619 9709 ", "85996199709"),
        ("+55 85 99619 9709", "5585996199709"),
        ("\u00a085996199709", "85996199709"),  # spreadsheets' no-break space
        ("085996199709", "85996199709"),
    ],
)
def test_contact_identifier_variants(value: object, expected: str) -> None:
    assert normalise(session_record(contact_identifier=value)).contact_identifier == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Telegram", "telegram"), ("TELEGRAM", "telegram"), (" telegram ", "telegram"), ("whats-app_2", "whats-app_2")],
)
def test_platform_type_any_case(value: str, expected: str) -> None:
    assert normalise(session_record(platform_type=value)).platform == expected


def test_name_is_stripped_and_composed() -> None:
    decomposed = "  Joa\u0303o Conceic\u0327a\u0303o "
    assert normalise(session_record(name=decomposed)).name == "João Conceição"


@pytest.mark.parametrize(
    "value",
    [
        "2021-03-03T19:43:38.000Z",
        "2021-03-03T19:43:38Z",
        "2021-03-03T16:43:38.000-03:00",
        "2021-03-03T22:43:38+03:00",
        "2021-03-03T19:43:38",
        "2021-03-03 19:43:38.000",
        "2021-03-03T19:43:38.000900Z",  # below a millisecond, which BSON does not hold
        {"$date": "2021-03-03T19:43:38.000Z"},
        {"$date": 1614800618000},
        {"$date": {"$numberLong": "1614800618000"}},
        datetime(2021, 3, 3, 19, 43, 38),
        datetime(2021, 3, 3, 16, 43, 38, tzinfo=timezone(timedelta(hours=-3))),
    ],
)
def test_date_variants_are_utc(value: object) -> None:
    (message,) = normalise(session_record(messages=[message_record(date=value)])).messages
    assert message.date == MOMENT
    assert message.date.tzinfo is UTC


def test_date_keeps_milliseconds() -> None:
    (message,) = normalise(session_record(messages=[message_record(date="2021-03-03T19:43:38.123456Z")])).messages
    assert message.date == MOMENT.replace(microsecond=123000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MISSING, None),
        (None, None),
        ("  abc  ", "abc"),
        (uuid.UUID("0b9c5d4e-8a1f-4c53-9d2e-7f6a5b4c3d2e"), "0b9c5d4e-8a1f-4c53-9d2e-7f6a5b4c3d2e"),
    ],
)
def test_message_id_variants(value: object, expected: str | None) -> None:
    (message,) = normalise(session_record(messages=[message_record(id=value)])).messages
    assert message.id == expected


def test_messages_may_be_empty() -> None:
    assert normalise(session_record(messages=[])).messages == ()


def test_messages_as_json_text_from_a_csv_cell() -> None:
    text = '[{"content": "Oi", "date": {"$date": 1614800618000}}, {"content": "Tchau", "date": "2021-03-03"}]'
    messages = normalise(session_record(messages=text)).messages
    assert [m.content for m in messages] == ["Oi", "Tchau"]
    assert messages[1].date == datetime(2021, 3, 3, tzinfo=UTC)


def test_content_is_kept_as_written() -> None:
    content = "  Bom dia!\nPreciso de ajuda. 😊 "
    (message,) = normalise(session_record(messages=[message_record(content=content)])).messages
    assert message.content == content


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"_id": "abc"}, "_id", "24 hexadecimal"),
        ({"_id": {"$oid": "zz3fd3c61ce2ab564307a73a"}}, "_id", "24 hexadecimal"),
        ({"_id": 12}, "_id", "got number"),
        ({"_id": {"id": "603fd3c61ce2ab564307a73a"}}, "_id", "got object"),
        ({"name": MISSING}, "name", "required"),
        ({"name": "   "}, "name", "must not be empty"),
        ({"name": "a" * 201}, "name", "longer than 200"),
        ({"name": 42}, "name", "expected a string, got number"),
        ({"platform_type": MISSING}, "platform_type", "required"),
        ({"platform_type": ""}, "platform_type", "must not be empty"),
        ({"platform_type": "tele gram"}, "platform_type", "letters, digits"),
        ({"platform_type": ["telegram"]}, "platform_type", "got array"),
        ({"contact_identifier": MISSING}, "contact_identifier", "required"),
        ({"contact_identifier": True}, "contact_identifier", "got boolean"),
        ({"contact_identifier": 859.5}, "contact_identifier", "whole number"),
        ({"contact_identifier": Decimal("859.5")}, "contact_identifier", "whole number"),
        ({"contact_identifier": float("inf")}, "contact_identifier", "whole number"),
        ({"contact_identifier": 2.0**60}, "contact_identifier", "string of digits"),
        ({"contact_identifier": "85-99619-9709"}, "contact_identifier", "expected digits"),
        ({"contact_identifier": "+"}, "contact_identifier", "expected digits"),
        ({"contact_identifier": "٨٥٩"}, "contact_identifier", "expected digits"),  # Arabic-Indic digits
        ({"contact_identifier": ""}, "contact_identifier", "expected digits"),
        ({"contact_identifier": -85996199709}, "contact_identifier", "positive"),
        ({"contact_identifier": "000"}, "contact_identifier", "positive"),
        ({"contact_identifier": "1" * 21}, "contact_identifier", "longer than 20 digits"),
        ({"contact_identifier": {"$numberLong": "1"}}, "contact_identifier", "got object"),
        ({"messages": MISSING}, "messages", "required"),
        ({"messages": {"content": "x"}}, "messages", "expected an array"),
        ({"messages": "[{"}, "messages", "not a valid JSON array"),
        ({"messages": [1]}, "messages[0]", "expected a JSON object, got number"),
    ],
)
def test_bad_session_field_is_reported_by_name(fields: dict[str, Any], field: str, fragment: str) -> None:
    (problem,) = errors_of(session_record(**fields))
    assert problem[0] == field
    assert fragment in problem[1]


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"content": MISSING}, "content", "required"),
        ({"content": ""}, "content", "must not be empty"),
        ({"content": " \n "}, "content", "must not be empty"),
        ({"content": "x" * 4097}, "content", "longer than 4096"),
        ({"content": 5}, "content", "expected a string"),
        ({"date": MISSING}, "date", "required"),
        ({"date": "yesterday"}, "date", "not an ISO-8601"),
        ({"date": "2021-02-30T10:00:00Z"}, "date", "not an ISO-8601"),
        ({"date": 1614800618000}, "date", "got number"),
        ({"date": {"$date": True}}, "date", "$date must be"),
        ({"date": {"$date": 1.5}}, "date", "$date must be"),
        ({"date": {"$date": {"$numberLong": "soon"}}}, "date", "$numberLong"),
        # Digits int() reads but that are not ASCII, and what else int() forgives.
        ({"date": {"$date": {"$numberLong": "١٦١٤٨٠٠٦١٨٠٠٠"}}}, "date", "ASCII digits"),
        ({"date": {"$date": {"$numberLong": " 1614800618000"}}}, "date", "ASCII digits"),
        ({"date": {"$date": {"$numberLong": "1_614_800_618_000"}}}, "date", "ASCII digits"),
        ({"date": {"$date": 10**20}}, "date", "out of range"),
        ({"date": {"$timestamp": 1}}, "date", "another object"),
        ({"date": "0001-01-01T00:00:00+01:00"}, "date", "out of range"),
        ({"id": ""}, "id", "must not be empty"),
        ({"id": 5}, "id", "expected a string"),
        ({"id": "x" * 201}, "id", "longer than 200"),
    ],
)
def test_bad_message_field_is_reported_with_its_path(fields: dict[str, Any], field: str, fragment: str) -> None:
    raw = session_record(messages=[message_record(), message_record(), message_record(**fields)])
    (problem,) = errors_of(raw)
    assert problem[0] == f"messages[2].{field}"
    assert fragment in problem[1]


def test_every_problem_of_a_record_is_reported() -> None:
    raw = session_record(
        _id="nope",
        name="",
        platform_type=MISSING,
        contact_identifier="abc",
        messages=[message_record(), "oops", message_record(content="", date="later")],
    )
    with pytest.raises(RecordInvalid) as caught:
        normalise_session(raw, record=7, line=12, offset=345)
    errors = caught.value.errors
    assert [error.field for error in errors] == [
        "_id",
        "name",
        "platform_type",
        "contact_identifier",
        "messages[1]",
        "messages[2].content",
        "messages[2].date",
    ]
    assert all((error.record, error.line, error.offset) == (7, 12, 345) for error in errors)
    assert "record 7 (line 12): name: must not be empty" in str(caught.value)


@pytest.mark.parametrize(("raw", "kind"), [([], "array"), ("session", "string"), (None, "null"), (3, "number")])
def test_record_that_is_not_an_object(raw: object, kind: str) -> None:
    assert errors_of(raw) == [("", f"expected a JSON object, got {kind}")]


def test_record_error_text_without_line() -> None:
    assert str(RecordError(3, None, None, "name", "required")) == "record 3: name: required"


def imported(content: str = "Olá", date: datetime = MOMENT, message_id: str | None = None) -> ImportedMessage:
    return ImportedMessage(message_id, content, date)


def test_message_key_uses_the_message_id() -> None:
    key = message_key("telegram", "85996199709", imported(message_id="abc-123"))
    assert key == "telegram:85996199709:id:abc-123"


def test_message_key_without_id_is_stable_across_date_forms() -> None:
    forms = ["2021-03-03T19:43:38Z", "2021-03-03T16:43:38-03:00", {"$date": 1614800618000}]
    sessions = [normalise(session_record(messages=[message_record(id=MISSING, date=form)])) for form in forms]
    keys = {message_key(s.platform, s.contact_identifier, s.messages[0]) for s in sessions}
    assert len(keys) == 1
    (key,) = keys
    assert key.startswith("telegram:85996199709:sha256:")
    assert len(key.rsplit(":", 1)[1]) == 64


def test_message_key_without_id_tells_messages_and_contacts_apart() -> None:
    keys = {
        message_key("telegram", "1", imported()),
        message_key("telegram", "1", imported(content="Olá!")),
        message_key("telegram", "1", imported(date=MOMENT + timedelta(milliseconds=1))),
        message_key("telegram", "2", imported()),
        message_key("whatsapp", "1", imported()),
    }
    assert len(keys) == 5


def test_a_record_of_thousands_of_bad_messages_lists_a_bounded_number_of_problems() -> None:
    raw = session_record(messages=[{}] * 5000)
    problems = errors_of(raw)
    assert len(problems) == MAX_RECORD_PROBLEMS + 1
    assert problems[0] == ("messages[0].content", "required")
    assert problems[-1] == ("", f"and {2 * 5000 - MAX_RECORD_PROBLEMS} more problems in this record, not listed")


def test_a_message_of_another_kind_takes_its_caption_and_keeps_a_key_of_its_own() -> None:
    photo = message_record(id=MISSING, kind="Photo", caption="recibo", content=MISSING)
    sticker = message_record(id=MISSING, kind="sticker", content=MISSING)
    session = normalise(session_record(messages=[photo, sticker, message_record(id=MISSING, content="recibo")]))
    assert [(m.kind, m.content) for m in session.messages] == [("photo", "recibo"), ("sticker", ""), ("text", "recibo")]
    # The same caption at the same moment as a text is another message.
    keys = {message_key("telegram", "1", message) for message in session.messages}
    assert len(keys) == 3


def test_a_bad_kind_or_caption_is_reported_where_it_is() -> None:
    bad = [
        message_record(kind="poll"),
        message_record(kind="photo", caption=["x"]),
        message_record(kind="text", content=""),
    ]
    assert errors_of(session_record(messages=bad)) == [
        (
            "messages[0].kind",
            "must be one of text, photo, document, voice, audio, video, video_note, animation, "
            "sticker, location, contact",
        ),
        ("messages[1].caption", "expected a string, got array"),
        ("messages[2].content", "must not be empty"),
    ]
