"""Bad input to the sessions API: always a 4xx problem that says what is wrong, never a 5xx."""

from __future__ import annotations

import base64

import pytest

from tests.server.factories import SessionFactory, conversation

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the tests share the module's in-process app


def problem_fields(response) -> list[str]:
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["detail"]
    return [error["field"] for error in problem.get("errors", [])]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "１０"}, "limit"),  # full-width digits
        ({"limit": "9" * 400}, "limit"),
        ({"q": ".*"}, "q"),
        ({"q": "^ana"}, "q"),
        ({"q": "ana|bob"}, "q"),
        ({"q": "(a+)+$"}, "q"),
        ({"q": "[a-z]"}, "q"),
        ({"q": "jo.o"}, "q"),
        ({"q": "a\\d"}, "q"),
        ({"q": "$where"}, "q"),
        ({"q": '{"$ne": null}'}, "q"),
        ({"q": '{"$regex": ".*"}'}, "q"),
        ({"q": "'"}, "q"),
        ({"q": "--"}, "q"),
        ({"q": "a" * 201}, "q"),
        ({"platform": "tele gram"}, "platform"),
        ({"platform": "$ne"}, "platform"),
        ({"platform": "x" * 33}, "platform"),
        ({"platform": ""}, "platform"),
        ({"active_since": "yesterday"}, "active_since"),
        ({"active_since": "2024-05-01"}, "active_since"),
        ({"active_since": "2024-05-01T12:00:00"}, "active_since"),  # no zone: whose noon?
        ({"active_since": "2024-13-01T12:00:00Z"}, "active_since"),
        ({"active_since": '{"$gt": ""}'}, "active_since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "A" * 600}, "cursor"),
    ],
)
async def test_bad_listing_parameters_are_400_problems_naming_the_parameter(api, params, field):
    response = await api.get("sessions", params=params)

    assert response.status_code == 400, response.text
    assert field in problem_fields(response)


async def test_every_bad_parameter_is_reported_at_once(api):
    response = await api.get("sessions", params={"limit": "0", "q": "$", "platform": "?"})

    assert response.status_code == 400
    assert problem_fields(response) == ["limit", "q", "platform"]


async def test_blank_q_lists_everything(api):
    SessionFactory.create_batch(2)

    assert len((await api.get("sessions", params={"q": "   "})).json()["items"]) == 2


async def first_cursor(api, path: str, **params) -> str:
    response = await api.get(path, params={"limit": 1, **params})
    cursor = response.json()["next_cursor"]
    assert cursor
    return cursor


def tampered(cursor: str) -> list[str]:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    variants = []
    for index in (0, len(raw) // 2, len(raw) - 1):
        changed = bytearray(raw)
        changed[index] ^= 0x01
        variants.append(base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode())
    return variants + [cursor[:-2], cursor + "AA"]


async def test_altered_cursors_are_refused(api):
    SessionFactory.create_batch(3)
    cursor = await first_cursor(api, "sessions")

    assert (await api.get("sessions", params={"cursor": cursor})).status_code == 200
    for forged in tampered(cursor):
        response = await api.get("sessions", params={"cursor": forged})
        assert response.status_code == 400, forged
        assert problem_fields(response) == ["cursor"]


async def test_cursors_only_work_in_the_listing_that_issued_them(api):
    session, _ = conversation(["um", "dois", "três"], contact_name="Paula Toller")
    SessionFactory.create(contact_name="Paula Fernandes")
    listing = await first_cursor(api, "sessions")
    search = await first_cursor(api, "sessions", q="paula")
    messages = await first_cursor(api, f"sessions/{session['_id']}/messages")
    other_session = SessionFactory.create()

    assert (await api.get("sessions", params={"cursor": search, "q": "paula", "limit": 5})).status_code == 200
    for path, params in [
        ("sessions", {"cursor": search}),
        ("sessions", {"cursor": search, "q": "paul"}),
        ("sessions", {"cursor": listing, "q": "paula"}),
        ("sessions", {"cursor": listing, "platform": "telegram"}),
        ("sessions", {"cursor": messages}),
        (f"sessions/{session['_id']}/messages", {"cursor": listing}),
        (f"sessions/{other_session['_id']}/messages", {"cursor": messages}),
    ]:
        response = await api.get(path, params=params)
        assert response.status_code == 400, (path, params)
        assert "another listing" in response.json()["detail"]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"cursor": "forged"}])
async def test_bad_message_listing_parameters_are_400_problems(api, params):
    session = SessionFactory.create()

    response = await api.get(f"sessions/{session['_id']}/messages", params=params)

    assert response.status_code == 400
    assert list(params) == problem_fields(response)
