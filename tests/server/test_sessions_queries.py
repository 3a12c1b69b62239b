"""The MongoDB queries behind the sessions API, run in this process against the test server.

The query plan test is the one that keeps search and paging honest: every query
the listings issue must be answered from an index, on SecantusDB and on mongod
(run the suite with MONGODB_URI pointing at a mongod to check the latter). The
queries are the `find` commands as the driver sent them, seen by pymongo's
command monitoring.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import monitoring

from contract.messaging import InboundMessage
from server import conversations, sessions
from server.models.sessions import Session, activity_key, activity_time_prefix
from server.sessions import MessagesResume, SessionFilter, SessionsResume
from tests.server import factories
from tests.server.factories import MessageFactory, SessionFactory, now


class FindsSent(monitoring.CommandListener):
    """The `find` commands the driver sends while `recording()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finds: list[dict[str, Any]] | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[dict[str, Any]]]:
        finds: list[dict[str, Any]] = []
        with self._lock:
            self._finds = finds
        try:
            yield finds
        finally:
            with self._lock:
                self._finds = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            with self._lock:
                if self._finds is not None:
                    self._finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# Registered when the module is imported: before any test of the session makes
# the MongoEngine client (a listener reaches only the clients made after it).
FINDS = FindsSent()
monitoring.register(FINDS)


@pytest.fixture
def store(database, mongo):
    """An empty database, reachable both through MongoEngine (the code) and pymongo (the test)."""
    factories.bind(mongo)
    return mongo


def stages(plan: Any) -> list[tuple[str, str | None]]:
    """(stage, index) of every stage in an explain() plan, whatever the server's layout."""
    found = []
    if isinstance(plan, dict):
        if "stage" in plan:
            found.append((plan["stage"], plan.get("indexName")))
        for value in plan.values():
            found += stages(value)
    elif isinstance(plan, list):
        for value in plan:
            found += stages(value)
    return found


def explain(store, find: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The plan of a `find` command as it was sent."""
    cursor = store[find["find"]].find(find.get("filter", {}), find.get("projection"))
    if find.get("sort"):
        cursor = cursor.sort(list(find["sort"].items()))
    if find.get("limit"):
        cursor = cursor.limit(find["limit"])
    return stages(cursor.explain()["queryPlanner"]["winningPlan"])


def names_and_times(count: int) -> list[dict]:
    first = ["Maria", "João", "Ana", "Benjamin", "Mariana", "José", "Paula", "Lucas"]
    last = ["Silva", "Lynch", "Souza", "Costa", "Lima"]
    return [
        SessionFactory.create(
            contact_name=f"{first[n % 8]} {last[n % 5]}",
            platform="telegram" if n % 3 else "whatsapp",
            last_message_at=now() - dt.timedelta(hours=n * 7),
        )
        for n in range(count)
    ]


LISTINGS = [
    (SessionFilter(), {"activity_order"}),
    (SessionFilter(platform="whatsapp"), {"platform_activity", "activity_order"}),
    (SessionFilter(active_since=now() - dt.timedelta(days=5)), {"activity_order"}),
    (SessionFilter(words=("mar",)), {"name_activity", "activity_order"}),
    (SessionFilter(words=("ben", "lyn")), {"name_activity", "activity_order"}),
    (SessionFilter(words=("silva",), platform="telegram"), {"name_activity", "activity_order"}),
]


@pytest.mark.parametrize(("criteria", "indexes"), LISTINGS)
def test_every_listing_query_is_served_by_an_index(store, criteria, indexes):
    names_and_times(40)
    with FINDS.recording() as queries:
        first = sessions.list_sessions(criteria, 3)
        if first.resume:
            sessions.list_sessions(criteria, 3, first.resume)

    assert first.sessions, "the data must exercise the query"
    assert queries, "the listing's finds must be seen"
    for query in queries:
        plan = explain(store, query)
        assert not [stage for stage in plan if stage[0] == "COLLSCAN"], (query, plan)
        used = {index for stage, index in plan if stage == "IXSCAN"}
        assert used and used <= indexes, (query, plan)


def test_message_queries_are_served_by_the_timeline_index(store):
    session = SessionFactory.create()
    instant = now()
    for n in range(5):
        MessageFactory.create(session=session, sent_at=instant + dt.timedelta(seconds=n // 2))
    with FINDS.recording() as firsts:
        first = sessions.list_messages(session["_id"], 2)
    with FINDS.recording() as seconds:
        sessions.list_messages(session["_id"], 2, first.resume)

    assert len(seconds) == 2  # the cursor's own instant, then what follows
    for query in firsts + seconds:
        plan = explain(store, query)
        assert not [stage for stage in plan if stage[0] == "COLLSCAN"], (query, plan)
        assert {index for stage, index in plan if stage == "IXSCAN"} == {"session_timeline"}, plan


def test_search_probes_the_index_with_one_word_and_checks_the_others(store):
    for name in ("Benjamin Lynch", "Lynch Bento", "Benjamin Costa", "David Lynch"):
        SessionFactory.create(contact_name=name)

    with FINDS.recording() as queries:
        page = sessions.list_sessions(SessionFilter(words=("ben", "lynch")), 50)

    assert {s["contact_name"] for s in page.sessions} == {"Benjamin Lynch", "Lynch Bento"}
    assert queries and all(query["filter"]["name_keys"] == "lynch" for query in queries)


def test_a_page_is_read_newest_first_without_the_name_keys(store):
    at = now()
    created = [SessionFactory.create(last_message_at=at - dt.timedelta(minutes=n)) for n in range(5)]
    SessionFactory.create(last_message_at=at - dt.timedelta(days=1))  # outside the range asked for
    since = activity_key(at - dt.timedelta(minutes=10), ObjectId("0" * 24))

    page = Session.objects.newest_first({"activity_key": {"$gte": since}}, 4)

    assert [doc["_id"] for doc in page] == [s["_id"] for s in created[:4]]
    assert all("name_keys" not in doc and doc["contact_name"] for doc in page)


def test_slices_cross_years_of_quiet_and_sessions_dated_in_the_future(store):
    at = now()
    spread = [
        at + dt.timedelta(days=2),
        at - dt.timedelta(seconds=5),
        at - dt.timedelta(days=400),
        at - dt.timedelta(days=3650),
        dt.datetime(1971, 1, 1, tzinfo=dt.UTC),
    ]
    created = [SessionFactory.create(last_message_at=moment) for moment in spread]

    with FINDS.recording() as queries:
        page = sessions.list_sessions(SessionFilter(), 10, now=at)

    assert [s["_id"] for s in page.sessions] == [s["_id"] for s in created]
    assert page.resume is None
    assert len(queries) <= 12, "slices widen fast over empty years"


def test_the_cursor_carries_a_slice_of_the_right_size(store):
    at = now()
    for n in range(60):
        SessionFactory.create(last_message_at=at - dt.timedelta(hours=n))

    with FINDS.recording() as firsts:
        first = sessions.list_sessions(SessionFilter(), 10, now=at)
    with FINDS.recording() as seconds:
        second = sessions.list_sessions(SessionFilter(), 10, first.resume, now=at)

    assert len(firsts) > 2, "the first page had to find the density"
    assert len(seconds) <= 2, "later pages start with a slice of the right size"
    assert second.sessions[0]["activity_key"] < first.sessions[-1]["activity_key"]


def test_a_page_after_a_widened_slice_reads_about_twice_what_it_shows(store):
    # One session now, then a quiet minute, then one every ten seconds: the first
    # one-minute slice holds one session, so the next is eight times wider and
    # holds far more than the page; the next page must not inherit that width.
    at = now().replace(microsecond=0)
    SessionFactory.create(last_message_at=at)
    for n in range(60):
        SessionFactory.create(last_message_at=at - dt.timedelta(seconds=61 + 10 * n))
    limit = 10

    with FINDS.recording() as firsts:
        first = sessions.list_sessions(SessionFilter(), limit, now=at)
    with FINDS.recording() as seconds:
        second = sessions.list_sessions(SessionFilter(), limit, first.resume, now=at)

    assert len(firsts) == 2, "one slice of a minute, then one eight times wider"
    assert first.resume is not None
    # The page took 151 s down to the session after it (61 s, then nine gaps of 10 s).
    assert first.resume.slice_ms == sessions.HINT_MARGIN * 151_000
    assert len(seconds) == 1 and len(second.sessions) == limit
    read = store["sessions"].count_documents(seconds[0]["filter"])
    assert read <= 3 * (limit + 1), f"the second page's slice holds {read} sessions for a page of {limit}"


def test_a_first_page_starts_with_the_slice_the_last_one_took(store):
    at = now()
    for n in range(60):
        SessionFactory.create(last_message_at=at - dt.timedelta(hours=n))
    hints = sessions.SliceHints()

    with FINDS.recording() as firsts:
        first = sessions.list_sessions(SessionFilter(), 10, now=at, hints=hints)
    with FINDS.recording() as again:
        second = sessions.list_sessions(SessionFilter(), 10, now=at, hints=hints)

    assert len(firsts) > 2, "the first page had to find the density"
    assert len(again) == 1, "the same listing's next first page starts at the right width"
    assert [s["_id"] for s in second.sessions] == [s["_id"] for s in first.sessions]
    assert second.resume and first.resume and second.resume.before == first.resume.before


def test_a_rare_name_is_searched_over_all_time_at_once_the_second_time(store):
    at = now()
    rare = [
        SessionFactory.create(contact_name="Zuleica Prado", last_message_at=at - dt.timedelta(days=n * 20))
        for n in range(4)
    ]
    for n in range(30):
        SessionFactory.create(contact_name="Maria Silva", last_message_at=at - dt.timedelta(minutes=n))
    hints = sessions.SliceHints()
    criteria = SessionFilter(words=("zuleica",))

    with FINDS.recording() as firsts:
        first = sessions.list_sessions(criteria, 50, now=at, hints=hints)
    with FINDS.recording() as again:
        second = sessions.list_sessions(criteria, 50, now=at, hints=hints)
    with FINDS.recording() as others:
        sessions.list_sessions(SessionFilter(words=("maria",)), 50, now=at, hints=hints)

    assert [s["_id"] for s in first.sessions] == [s["_id"] for s in rare] == [s["_id"] for s in second.sessions]
    assert len(firsts) > 2 and len(again) == 1
    assert len(others) > 1, "another name does not inherit the hint"


def test_a_slice_hint_too_wide_costs_one_query_and_narrows(store):
    at = now()
    for n in range(40):
        SessionFactory.create(last_message_at=at - dt.timedelta(minutes=n))
    hints = sessions.SliceHints()
    path = '[{}, ""]'
    hints.remember(path, sessions.MAX_SLICE_MS)

    with FINDS.recording() as wide:
        page = sessions.list_sessions(SessionFilter(), 10, now=at, hints=hints)

    assert len(wide) == 1 and len(page.sessions) == 10
    # The 11th session is 10 minutes old: twice that, not all time.
    assert hints.width(path) == pytest.approx(sessions.HINT_MARGIN * 10 * 60_000, abs=2_000)


def test_a_quiet_hour_above_the_newest_session_is_not_doubled_into_the_next_first_page(store):
    # A desk at night: nothing for an hour, then one session every 10 s before it.
    at = now()
    for n in range(200):
        SessionFactory.create(last_message_at=at - dt.timedelta(hours=1, seconds=10 * n))
    hints = sessions.SliceHints()
    limit = 10
    sessions.list_sessions(SessionFilter(), limit, now=at, hints=hints)

    with FINDS.recording() as again:
        page = sessions.list_sessions(SessionFilter(), limit, now=at, hints=hints)

    assert len(again) == 1 and len(page.sessions) == limit
    read = store["sessions"].count_documents(again[0]["filter"])
    assert read <= 2 * (limit + 1) + 1, f"the next first page's slice holds {read} sessions for a page of {limit}"


def test_a_session_active_in_the_future_adds_no_quiet_time(store):
    at = now().replace(microsecond=0)
    SessionFactory.create(last_message_at=at + dt.timedelta(hours=1))  # a clock ahead
    for n in range(20):
        SessionFactory.create(last_message_at=at - dt.timedelta(seconds=10 * n))

    first = sessions.list_sessions(SessionFilter(), 10, now=at)

    # From the future session down to the one after the page (90 s ago), doubled.
    assert first.resume is not None and first.resume.slice_ms == sessions.HINT_MARGIN * 3_690_000


def test_slice_hints_keep_the_paths_used_last():
    hints = sessions.SliceHints(capacity=2)
    hints.remember("a", 5_000)
    hints.remember("b", 6_000)
    assert hints.width("a") == 5_000  # "a" is now the one used last
    hints.remember("c", 7_000)
    hints.remember("d", 10**30)

    assert hints.width("b") == sessions.FIRST_SLICE_MS  # forgotten first
    assert hints.width("a") == sessions.FIRST_SLICE_MS  # then this one
    assert hints.width("c") == 7_000
    assert hints.width("d") == sessions.MAX_SLICE_MS  # clamped


def test_active_since_is_the_floor_of_the_walk(store):
    at = now()
    recent = [SessionFactory.create(last_message_at=at - dt.timedelta(minutes=n)) for n in range(3)]
    SessionFactory.create(last_message_at=at - dt.timedelta(days=30))

    since = at - dt.timedelta(hours=1)
    with FINDS.recording() as queries:
        page = sessions.list_sessions(SessionFilter(active_since=since), 10, now=at)

    assert [s["_id"] for s in page.sessions] == [s["_id"] for s in recent]
    assert queries and all(q["filter"]["activity_key"]["$gte"] >= activity_time_prefix(since) for q in queries)


def test_positions_survive_the_cursor_round_trip(store):
    resume = SessionsResume("00001700000000000" + "a" * 24, 5_000)
    assert SessionsResume.from_position(resume.to_position()) == resume
    clamped = SessionsResume.from_position({"before": resume.before, "slice": 10**30})
    assert clamped.slice_ms == sessions.MAX_SLICE_MS
    with pytest.raises(ValueError):
        SessionsResume.from_position({"before": "zzz", "slice": 1000})
    message = MessagesResume(dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC), ObjectId())
    assert MessagesResume.from_position(message.to_position()) == message
    with pytest.raises(ValueError):
        MessagesResume.from_position({"at": "noon", "id": "x"})


def test_listing_identity_ignores_word_order(store):
    assert SessionFilter(words=("ben", "lyn")).listing() == SessionFilter(words=("lyn", "ben")).listing()
    assert SessionFilter(words=("ben",)).listing() != SessionFilter(words=("ben",), platform="x").listing()


def inbound(message_id: int, name: str = "Rita Lee") -> InboundMessage:
    return InboundMessage(
        platform="telegram",
        contact_identifier="9001",
        chat_id=9001,
        message_id=message_id,
        name=name,
        text=f"mensagem {message_id}",
        sent_at=now().isoformat(),
    )


def test_the_intake_keeps_the_activity_key_current(store):
    conversations.store_inbound([inbound(1)])
    opened = store.sessions.find_one({"contact_identifier": "9001"})
    assert opened["activity_key"] == activity_key(opened["last_message_at"], opened["_id"])

    conversations.store_inbound([inbound(2, name="Rita Lee Jones")])
    touched = store.sessions.find_one({"_id": opened["_id"]})
    assert touched["activity_key"] == activity_key(touched["last_message_at"], opened["_id"])
    assert touched["activity_key"] >= opened["activity_key"]
    assert "jon" in touched["name_keys"]
    page = sessions.list_sessions(SessionFilter(words=("jones",)), 5)
    assert [s["_id"] for s in page.sessions] == [opened["_id"]]


def test_an_agent_reply_to_a_session_finished_meanwhile_is_not_kept(store):
    session = SessionFactory.create()
    sessions.finish(session["_id"])

    assert sessions.add_agent_reply(session, "oi") is None
    assert store.messages.count_documents({}) == 0
    assert sessions.finish(session["_id"]) is False
