"""The sessions API against a real server: listing, search, reading, agent replies, finishing.

Every response is also validated against the OpenAPI document by the `api` client.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from server.config import DEFAULT_GOODBYE
from tests.harness import ROOT, eventually_async, outbound_messages_async
from tests.server.factories import MessageFactory, SessionFactory, conversation, now

# Every test, even one that asks nothing of the server, runs in the loop of the module's in-process app.
pytestmark = pytest.mark.asyncio(loop_scope="module")


def ids(items: list[dict]) -> list[str]:
    return [item["id"] for item in items]


def minutes_ago(minutes: float) -> dt.datetime:
    return now() - dt.timedelta(minutes=minutes)


async def published(nats_url: str, key: str) -> list:
    """The messages on the outbound stream under `key`."""
    return [message for message in await outbound_messages_async(nats_url) if message.key == key]


# --- listing -------------------------------------------------------------------


async def test_sessions_are_listed_most_recent_activity_first(api):
    older = SessionFactory.create(last_message_at=minutes_ago(30))
    newest = SessionFactory.create(
        last_message_at=minutes_ago(1),
        contact_name="João Silva",
        contact_identifier="1001",
        message_count=4,
        last_message_preview="Meu pedido atrasou",
    )
    middle = SessionFactory.create(last_message_at=minutes_ago(10))

    response = await api.get("sessions")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert ids(body["items"]) == [str(newest["_id"]), str(middle["_id"]), str(older["_id"])]
    assert body["next_cursor"] is None
    assert body["items"][0] == {
        "id": str(newest["_id"]),
        "contact": {"platform": "telegram", "identifier": "1001", "name": "João Silva"},
        "created_at": newest["created_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "last_message_at": newest["last_message_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "message_count": 4,
        "last_message_preview": "Meu pedido atrasou",
    }


async def test_pages_list_every_session_once_in_order(api):
    # Spread over days, with a gap of a year: pages must cross empty stretches.
    times = [minutes_ago(7 * n) for n in range(12)] + [minutes_ago(60 * 24 * (365 + n)) for n in range(11)]
    created = [SessionFactory.create(last_message_at=at) for at in times]

    pages = await api.walk("sessions", limit=5)

    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    listed = [item["id"] for page in pages for item in page]
    assert listed == [str(s["_id"]) for s in sorted(created, key=lambda s: s["activity_key"], reverse=True)]


async def test_sessions_sharing_an_instant_are_neither_skipped_nor_repeated(api):
    instant = minutes_ago(3)
    created = {str(SessionFactory.create(last_message_at=instant)["_id"]) for _ in range(9)}

    pages = await api.walk("sessions", limit=2)

    listed = [item["id"] for page in pages for item in page]
    assert sorted(listed) == sorted(created)


async def test_paging_while_contacts_write_lists_each_quiet_session_exactly_once(api):
    sessions = [SessionFactory.create(last_message_at=minutes_ago(n + 1)) for n in range(20)]
    seen_already, not_reached_yet = sessions[1], sessions[15]

    first = (await api.get("sessions", params={"limit": 6})).json()
    assert str(seen_already["_id"]) in ids(first["items"])
    # Both contacts get an answer now, which is activity: they move to the front.
    for session in (seen_already, not_reached_yet):
        assert (await api.post(f"sessions/{session['_id']}/messages", json={"text": "Um momento"})).status_code == 201
    fresh = SessionFactory.create()  # a contact writes for the first time
    rest = await api.walk("sessions", limit=6, cursor=first["next_cursor"])

    listed = ids(first["items"]) + [item["id"] for page in rest for item in page]
    assert len(listed) == len(set(listed)), "a session was listed twice"
    moved = {str(seen_already["_id"]), str(not_reached_yet["_id"])}
    quiet = {str(s["_id"]) for s in sessions} - moved
    assert quiet <= set(listed), "a session without new activity was skipped"
    assert str(not_reached_yet["_id"]) not in listed
    assert str(fresh["_id"]) not in listed
    # A fresh listing starts with whatever moved.
    top = ids((await api.get("sessions", params={"limit": 3})).json()["items"])
    assert set(top) == moved | {str(fresh["_id"])}


async def test_platform_and_active_since_filter_the_listing(api):
    telegram_recent = SessionFactory.create(last_message_at=minutes_ago(5))
    SessionFactory.create(last_message_at=minutes_ago(60 * 24 * 3))
    whatsapp = SessionFactory.create(platform="whatsapp", last_message_at=minutes_ago(2))
    since = (now() - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")

    assert ids((await api.get("sessions", params={"platform": "WhatsApp"})).json()["items"]) == [str(whatsapp["_id"])]
    assert ids((await api.get("sessions", params={"active_since": since})).json()["items"]) == [
        str(whatsapp["_id"]),
        str(telegram_recent["_id"]),
    ]
    assert ids((await api.get("sessions", params={"active_since": since, "platform": "telegram"})).json()["items"]) == [
        str(telegram_recent["_id"])
    ]
    future = (now() + dt.timedelta(days=1)).isoformat()
    assert (await api.get("sessions", params={"active_since": future})).json() == {"items": [], "next_cursor": None}


# --- search --------------------------------------------------------------------


@pytest.fixture
def contacts(api) -> dict[str, dict]:
    names = [
        "João Silva",
        "Benjamin Lynch",
        "Mariana Costa",
        "Ana Paula Souza",
        "Joana Silveira",
        "Lynn Carvalho",
        "Zoë D'Ávila",
        "Anaïs Lima",
    ]
    return {
        name: SessionFactory.create(contact_name=name, last_message_at=minutes_ago(n + 1))
        for n, name in enumerate(names)
    }


async def found(api, q: str, **params) -> list[str]:
    response = await api.get("sessions", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return [item["contact"]["name"] for item in response.json()["items"]]


@pytest.mark.parametrize(
    ("q", "names"),
    [
        ("joao", ["João Silva"]),
        ("JOÃO", ["João Silva"]),
        ("ben lyn", ["Benjamin Lynch"]),
        ("lyn ben", ["Benjamin Lynch"]),
        ("ana", ["Ana Paula Souza", "Anaïs Lima"]),  # never Mariana: prefixes of words only
        ("sil", ["João Silva", "Joana Silveira"]),
        ("silv jo", ["João Silva", "Joana Silveira"]),
        ("zoe davila", []),  # the apostrophe splits the word, as it does in the stored name
        ("zoe d'avila", ["Zoë D'Ávila"]),
        ("lynch benjamin x", []),
        ("  paula  ", ["Ana Paula Souza"]),
        ("jean-luc", []),
    ],
)
async def test_search_matches_word_prefixes_ignoring_case_and_accents(api, contacts, q, names):
    assert await found(api, q) == names


async def test_search_pages_and_filters_like_the_listing(api):
    silvas = [SessionFactory.create(contact_name=f"Maria Silva {n}", last_message_at=minutes_ago(n)) for n in range(7)]
    SessionFactory.create(contact_name="Mario Souza")
    SessionFactory.create(contact_name="Maria Silva", platform="whatsapp")

    pages = await api.walk("sessions", q="silva mar", platform="telegram", limit=3)

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [item["id"] for page in pages for item in page] == [str(s["_id"]) for s in silvas]


# --- reading -------------------------------------------------------------------


async def test_a_session_is_read_by_id(api):
    session = SessionFactory.create(contact_name="Rita Lee")

    response = await api.get(f"sessions/{session['_id']}")

    assert response.status_code == 200
    assert response.json()["contact"]["name"] == "Rita Lee"


@pytest.mark.parametrize("session_id", ["000000000000000000000000", "not-an-id", "6" * 25, "zz" * 12])
async def test_unknown_or_malformed_session_ids_are_404_problems(api, session_id):
    for path in (
        f"sessions/{session_id}",
        f"sessions/{session_id}/messages",
        f"sessions/{session_id}/messages/000000000000000000000000",
    ):
        response = await api.get(path)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["type"].endswith("session-not-found")
    assert (await api.delete(f"sessions/{session_id}")).status_code == 404


async def test_messages_are_listed_oldest_first_in_pages(api):
    texts = [f"mensagem {n}" for n in range(7)]
    session, _ = conversation(texts)
    # Three more at one instant: the cursor must order them by id, not lose them.
    instant = now() + dt.timedelta(seconds=1)
    tied = sorted(
        (MessageFactory.create(session=session, sent_at=instant, text=f"junto {n}") for n in range(3)),
        key=lambda m: m["_id"],
    )

    pages = await api.walk(f"sessions/{session['_id']}/messages", limit=2)

    assert [len(page) for page in pages] == [2, 2, 2, 2, 2]
    listed = [item["text"] for page in pages for item in page]
    assert listed == texts + [m["text"] for m in tied]
    assert {item["direction"] for page in pages for item in page} == {"in"}


async def test_a_message_is_read_by_id_only_within_its_session(api):
    session, messages = conversation(["oi"])
    other = SessionFactory.create()

    assert (await api.get(f"sessions/{session['_id']}/messages/{messages[0]['_id']}")).json()["text"] == "oi"
    assert (await api.get(f"sessions/{other['_id']}/messages/{messages[0]['_id']}")).status_code == 404
    assert (await api.get(f"sessions/{session['_id']}/messages/nope")).status_code == 404


# --- agent replies -------------------------------------------------------------


async def test_an_agent_reply_is_stored_and_sent_to_the_contact(api, mongo, nats_server):
    session, _ = conversation(
        ["Olá", "Meu pedido atrasou"], contact_identifier="4242", chat_id="4242", start=minutes_ago(60)
    )
    SessionFactory.create(last_message_at=minutes_ago(5))

    response = await api.post(f"sessions/{session['_id']}/messages", json={"text": "Já verifiquei, chega amanhã."})

    assert response.status_code == 201
    reply = response.json()
    assert reply["direction"] == "out"
    assert reply["text"] == "Já verifiquei, chega amanhã."
    location = response.headers["Location"]
    assert location == f"/v1/sessions/{session['_id']}/messages/{reply['id']}"
    assert (await api.get(location.removeprefix("/v1/"))).json() == reply
    messages = (await api.get(f"sessions/{session['_id']}/messages")).json()["items"]
    assert [m["text"] for m in messages][-1] == reply["text"]
    listed = (await api.get("sessions")).json()["items"]
    assert listed[0]["id"] == str(session["_id"]), "a reply is activity"
    assert listed[0]["message_count"] == 3
    assert listed[0]["last_message_preview"] == reply["text"]
    delivery = await eventually_async(
        lambda: published(nats_server.url, f"agent:{reply['id']}"),
        message="agent reply on the outbound stream",
    )
    assert (delivery[0].chat_id, delivery[0].text, delivery[0].kind) == ("4242", reply["text"], "agent")
    await eventually_async(lambda: mongo.outbox.count_documents({}) == 0, message="outbox relayed")


async def test_an_agent_reply_retried_with_its_idempotency_key_is_stored_and_sent_once(api, mongo, nats_server):
    session, _ = conversation(["Olá"], contact_identifier="4343", chat_id="4343", start=minutes_ago(60))
    path, key = f"sessions/{session['_id']}/messages", {"Idempotency-Key": "reply-7f3a"}

    first = await api.post(path, json={"text": "Chega amanhã."}, headers=key)
    again = await api.post(path, json={"text": "Chega amanhã."}, headers=key)  # the client saw a 503, say
    other = await api.post(path, json={"text": "Outra coisa."}, headers=key)
    fresh = await api.post(path, json={"text": "Chega amanhã."}, headers={"Idempotency-Key": "reply-8b1c"})

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Location"] == first.headers["Location"]
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
    assert mongo.messages.count_documents({"session_id": session["_id"], "direction": "out"}) == 2
    assert mongo.sessions.find_one({"_id": session["_id"]})["message_count"] == 3
    await eventually_async(lambda: mongo.outbox.count_documents({}) == 0, message="outbox relayed")
    sent = [m.key for m in await outbound_messages_async(nats_server.url) if m.chat_id == "4343"]
    assert sorted(sent) == sorted([f"agent:{first.json()['id']}", f"agent:{fresh.json()['id']}"])


@pytest.mark.parametrize("header", ["", "x" * 201, "chave com acentuação"])
async def test_a_malformed_idempotency_key_is_a_400_problem(api, header):
    session, _ = conversation(["Olá"], contact_identifier="4444", chat_id="4444")
    response = await api.post(
        f"sessions/{session['_id']}/messages", json={"text": "oi"}, headers={"Idempotency-Key": header.encode()}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0] == {
        "field": "Idempotency-Key",
        "in": "header",
        "message": "1 to 200 printable ASCII characters",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   \n "}, "text"),
        ({"text": 42}, "text"),
        ({"text": None}, "text"),
        ({"text": "x" * 4097}, "text"),
        ({"text": "oi", "chat_id": "1"}, "chat_id"),
    ],
)
async def test_invalid_agent_replies_are_400_problems_naming_the_field(api, body, field):
    session = SessionFactory.create()

    response = await api.post(f"sessions/{session['_id']}/messages", json=body)

    assert response.status_code == 400
    problem = response.json()
    assert problem["type"].endswith("invalid-body")
    assert field in [error["field"] for error in problem["errors"]]
    assert (await api.get(f"sessions/{session['_id']}")).json()["message_count"] == session["message_count"]


async def test_agent_reply_bodies_must_be_json_objects_of_sane_size(api):
    path = f"sessions/{SessionFactory.create()['_id']}/messages"

    assert (await api.post(path, content=b'{"text": "oi"}')).status_code == 415
    assert (
        await api.post(path, content=b"text=oi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    ).status_code == 415
    assert (await api.post(path, content=b'{"text": ', headers={"Content-Type": "application/json"})).status_code == 400
    assert (await api.post(path, json=["oi"])).status_code == 400
    assert (await api.post(path, json={"text": "x" * 4096})).status_code == 201
    too_big = await api.post(path, json={"text": "x" * 70_000})
    assert too_big.status_code == 413
    assert too_big.headers["Content-Type"] == "application/problem+json"


async def test_replies_to_unknown_or_unreachable_sessions_are_refused(api):
    imported = SessionFactory.create(chat_id=None)

    assert (await api.post("sessions/000000000000000000000000/messages", json={"text": "oi"})).status_code == 404
    response = await api.post(f"sessions/{imported['_id']}/messages", json={"text": "oi"})
    assert response.status_code == 409
    assert response.json()["type"].endswith("no-chat")


# --- finishing -----------------------------------------------------------------


async def test_finishing_deletes_the_session_and_its_messages_and_promises_a_goodbye(api, mongo, nats_server):
    session, _ = conversation(["oi", "tchau"], contact_identifier="5151", chat_id="5151")
    other, _ = conversation(["continua"])

    response = await api.delete(f"sessions/{session['_id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert (await api.get(f"sessions/{session['_id']}")).status_code == 404
    assert mongo.messages.count_documents({"session_id": session["_id"]}) == 0
    assert mongo.messages.count_documents({"session_id": other["_id"]}) == 1
    assert ids((await api.get("sessions")).json()["items"]) == [str(other["_id"])]
    goodbye = await eventually_async(
        lambda: published(nats_server.url, f"goodbye:{session['_id']}"),
        message="goodbye published",
    )
    assert (goodbye[0].chat_id, goodbye[0].text, goodbye[0].kind) == ("5151", DEFAULT_GOODBYE, "goodbye")
    assert (await api.delete(f"sessions/{session['_id']}")).status_code == 404


async def test_finishing_an_imported_session_needs_no_chat(api, mongo):
    imported = SessionFactory.create(chat_id=None)

    assert (await api.delete(f"sessions/{imported['_id']}")).status_code == 204
    assert mongo.sessions.count_documents({}) == 0
    assert mongo.outbox.count_documents({}) == 0


# --- authentication and methods --------------------------------------------------


def documented_routes() -> list[tuple[str, str]]:
    """Every operation of the OpenAPI document, its path parameters filled in: the routes that need the token."""
    document = json.loads((ROOT / "server" / "openapi.json").read_text())
    routes = []
    for path, item in document["paths"].items():
        concrete = re.sub(r"\{seq\}", "0", re.sub(r"\{\w+_id\}", "0" * 24, path)).removeprefix("/v1/")
        routes += [(method.upper(), concrete) for method in item if method != "parameters"]
    return sorted(routes)


ROUTES = documented_routes()


async def test_the_routes_checked_for_the_token_cover_the_document():
    assert len(ROUTES) >= 11
    assert ("PUT", "imports/000000000000000000000000/chunks/0") in ROUTES


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789abcdef", "Basic dGVzdDp0ZXN0", "Bearer", "test-api-token-0123456789abcdef"],
)
async def test_every_route_needs_the_bearer_token(api, method, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    api.http.headers.pop("Authorization")

    response = await api.request(method, path, headers=headers, json={"text": "oi"} if method == "POST" else None)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["type"].endswith("unauthorized")


async def test_health_stays_open(api):
    api.http.headers.pop("Authorization")
    assert (await api.http.get(f"{api.base_url}/health")).status_code == 200


async def test_undocumented_methods_are_405_problems_saying_what_is_allowed(api):
    response = await api.request("PUT", "sessions", check=False)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert response.headers["Content-Type"] == "application/problem+json"
    assert (await api.request("PATCH", "sessions/000000000000000000000000", check=False)).headers[
        "Allow"
    ] == "GET, DELETE"


async def test_the_openapi_document_is_served_as_kept_in_the_repository(api):
    from tests.harness import ROOT

    response = await api.get("openapi.json")

    assert response.status_code == 200
    assert response.content == (ROOT / "server" / "openapi.json").read_bytes()
    assert response.json()["openapi"].startswith("3.1")
