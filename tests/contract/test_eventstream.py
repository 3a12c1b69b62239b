"""The event stream's subjects: what NATS filters on must select exactly what the client asked."""

from __future__ import annotations

import json

import pytest

from contract import eventstream


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


SESSION = "603fd3c61ce2ab564307a73a"


@pytest.mark.parametrize("kind", eventstream.KINDS)
def test_every_kind_is_selected_by_its_own_filter_and_no_other(kind):
    subject = eventstream.subject(kind, "telegram", SESSION)
    assert matches(eventstream.EVENTS_SUBJECTS, subject)
    assert matches(eventstream.filter_subject(), subject)
    for other in eventstream.KINDS:
        assert matches(eventstream.filter_subject(other), subject) == (other == kind)


def test_session_and_platform_filters_select_by_their_token():
    subject = eventstream.subject(eventstream.MESSAGE_RECEIVED, "telegram", SESSION)
    assert matches(eventstream.filter_subject(session_id=SESSION), subject)
    assert not matches(eventstream.filter_subject(session_id="0" * 24), subject)
    assert matches(eventstream.filter_subject(platform="telegram"), subject)
    assert not matches(eventstream.filter_subject(platform="whatsapp"), subject)
    # An import has no session or platform: a session filter never selects it.
    assert not matches(eventstream.filter_subject(session_id=SESSION), eventstream.subject(eventstream.IMPORT_FINISHED))


def test_tokens_never_break_a_subject():
    subject = eventstream.subject(eventstream.MESSAGE_SENT, "tele.gram *", "a>b")
    assert subject.count(".") == 5 and "*" not in subject and ">" not in subject


def test_the_id_is_spliced_in_first_without_reencoding():
    body = eventstream.to_bytes(eventstream.event(eventstream.MESSAGE_RECEIVED, message={"text": "olá"}))
    served = json.loads(eventstream.with_id(body, 42))
    assert list(served)[0] == "id" and served["id"] == 42 and served["message"]["text"] == "olá"


def stored(body: dict) -> tuple[str, bytes]:
    """A bot event as it sits in the stream: on the subject its fields name."""
    return eventstream.subject(body["type"], body.get("platform"), body.get("session_id")), eventstream.to_bytes(body)


def blocked(**changes) -> dict:
    body = eventstream.contact_blocked(
        platform="telegram",
        session_id=SESSION,
        contact_identifier="6201",
        key="agent:6b1712f3d58afb8915573293",
        reason="Forbidden: bot was blocked by the user",
    )
    return {**body, **changes}


def moved(**changes) -> dict:
    body = eventstream.channel_moved(platform="telegram", channel="-4001", moved_to="-1004001", import_id=SESSION)
    return {**body, **changes}


@pytest.mark.parametrize(
    "body",
    [
        blocked(),
        moved(),
        eventstream.channel_moved(platform="telegram", channel="-4002", moved_to="-1004002", import_id=None),
    ],
)
def test_the_bots_reports_are_relayed_as_published(body):
    subject, data = stored(body)
    assert json.loads(eventstream.relayable(subject, data)) == body


@pytest.mark.parametrize(
    "body",
    [
        blocked(reason="x" * 201),
        blocked(contact={"identifier": "6201\r\nforged: 1", "name": ""}),
        blocked(contact={"identifier": "123abc", "name": ""}),
        blocked(message={"key": ""}),
        blocked(at=7),
        moved(channel="-4001.>"),
        moved(moved_to="@x y"),
        moved(**{"import": {"id": "../../etc"}}),
        moved(**{"import": "65f0c0ffee0000000000beef"}),
    ],
)
def test_a_bot_report_with_a_field_out_of_shape_is_not_relayed_nor_acted_on(body):
    subject, data = stored(body)
    assert eventstream.relayable(subject, data) is None
    assert eventstream.bot_event_checked(body) is None


def test_a_bot_report_loses_every_field_it_does_not_publish():
    body = blocked(extra="<script>", contact={"identifier": "6201", "name": "Forjado"})
    subject, data = stored(body)
    relayed = json.loads(eventstream.relayable(subject, data))
    assert "extra" not in relayed and relayed["contact"]["name"] == ""


def test_a_bot_report_on_another_sessions_subject_is_not_relayed():
    _, data = stored(blocked())
    other = eventstream.subject(eventstream.CONTACT_BLOCKED, "telegram", "0" * 24)
    assert eventstream.relayable(other, data) is None
