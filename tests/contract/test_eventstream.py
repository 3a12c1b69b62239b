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
