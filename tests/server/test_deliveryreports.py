"""Keeping what the bot reports (server/deliveryreports.py): blocked contacts and moved channels."""

from __future__ import annotations

import datetime as dt

import pytest

from contract import clock, eventstream
from contract.messaging import InboundMessage
from server import conversations
from server.deliveryreports import keep
from server.models.imports import ImportJob
from server.models.sessions import Session
from tests.server.factories import SessionFactory, bind, now


@pytest.fixture
def store(database, mongo):
    bind(mongo)
    return mongo


def blocked(session: dict, chat: str, at: dt.datetime) -> dict:
    return eventstream.contact_blocked(
        platform="telegram",
        session_id=str(session["_id"]),
        contact_identifier=chat,
        key="agent:1",
        reason="Forbidden: bot was blocked by the user",
        at=clock.rfc3339(at),
    )


def blocked_at(store, session: dict) -> dt.datetime | None:
    return store.sessions.find_one({"_id": session["_id"]}).get("contact_blocked_at")


def test_a_report_marks_the_session_reached_at_that_chat(store):
    session = SessionFactory.create(last_message_at=now() - dt.timedelta(minutes=1), chat_id="6201")
    keep(blocked(session, "6201", now()))
    assert blocked_at(store, session) is not None


def test_a_report_naming_another_chat_marks_nothing(store):
    """The bot is trusted less than the server: a report must match the session it names."""
    session = SessionFactory.create(last_message_at=now() - dt.timedelta(minutes=1), chat_id="6201")
    keep(blocked(session, "9999", now()))
    assert blocked_at(store, session) is None


def test_a_late_report_does_not_undo_the_contact_writing_again(store):
    refused = now() - dt.timedelta(minutes=1)
    session = SessionFactory.create(last_message_at=now(), chat_id="6201")  # the contact wrote since
    keep(blocked(session, "6201", refused))
    assert blocked_at(store, session) is None


def test_the_contact_writing_again_clears_the_mark(store):
    session = SessionFactory.create(
        last_message_at=now() - dt.timedelta(minutes=1), chat_id="6201", contact_identifier="6201"
    )
    keep(blocked(session, "6201", now()))
    assert blocked_at(store, session) is not None
    message = InboundMessage("telegram", "6201", 6201, 77, session["contact_name"], "voltei", clock.stamp())
    conversations.store_inbound([message])
    assert blocked_at(store, session) is None
    assert Session.objects(id=session["_id"]).count() == 1  # the same session, not a new one


def test_a_move_is_noted_on_the_import_announced_to_that_channel_only(store):
    job = ImportJob(channel="-4001", mode="upload", status="succeeded", created_at=now())
    job.save()
    other = ImportJob(channel="-4002", mode="upload", status="succeeded", created_at=now())
    other.save()
    for event in (
        eventstream.channel_moved(platform="telegram", channel="-4001", moved_to="-1004001", import_id=str(job.id)),
        eventstream.channel_moved(platform="telegram", channel="-4001", moved_to="-1004001", import_id=str(other.id)),
        eventstream.channel_moved(platform="telegram", channel="-4001", moved_to="-1004001", import_id=None),
    ):
        keep(event)
    assert store.import_jobs.find_one({"_id": job.id})["channel_moved_to"] == "-1004001"
    assert "channel_moved_to" not in store.import_jobs.find_one({"_id": other.id})
