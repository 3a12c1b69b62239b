"""The server crashes exactly in each window of its exactly-once promise, and keeps it.

Every test arms a fail point (runtime/failpoints.py) in a real server process,
lets it kill the process there (SIGKILL: no cleanup), starts a fresh server,
lets the whole system settle (JetStream has nothing pending or unacknowledged,
the outbound stream is drained, the counts stay put), and then asserts exact
outcomes: each message stored once, each contact answered exactly as often as
owed, each session's counters equal to what it holds, each import report equal
to what is stored.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime import failpoints
from server.config import DEFAULT_GOODBYE, DEFAULT_REPLY
from tests.harness import ApiClient, eventually, settle


@pytest.fixture
def api(stack) -> Iterator[ApiClient]:
    client = ApiClient(stack.api_url)
    yield client
    client.close()


def fired(log: Path, point: str) -> bool:
    return log.exists() and any(line.startswith(f"{point} ") for line in log.read_text().splitlines())


# The crashed server's batch comes back after the intake's ack wait: the
# shortest allowed, so a test waits seconds for it, not the default half-minute.
ACK_WAIT = "3"


def crash_at(stack, tmp_path: Path, point: str, action: str = "kill"):
    """A server armed to crash at `point`, and the log that says whether it did."""
    log = tmp_path / "failpoints.log"
    server = stack.server(
        BALCAO_FAILPOINTS=f"{point}={action}", BALCAO_FAILPOINTS_LOG=str(log), INTAKE_ACK_WAIT=ACK_WAIT
    )
    return server, log


def wait_for_crash(server, log: Path, point: str) -> None:
    eventually(lambda: fired(log, point), timeout=60, message=f"fail point {point} fired")
    eventually(lambda: not server.running, timeout=30, message="server killed")


def counters_match_what_is_stored(mongo) -> None:
    for session in mongo.sessions.find():
        held = list(mongo.messages.find({"session_id": session["_id"]}).sort([("sent_at", -1), ("_id", -1)]))
        assert session["message_count"] == len(held), session
        if session.get("chat_id") and held:  # imported sessions keep the file's own latest text
            # The last message to arrive, which after a redelivery need not be the last sent.
            assert session["last_message_preview"] in {m["text"] for m in held}


# --- intake --------------------------------------------------------------------------

CONTACTS = [6101, 6102, 6103, 6104]


@pytest.mark.parametrize(
    "point",
    [
        "server.intake.after_messages_inserted",
        "server.intake.after_sessions_updated",
        "server.intake.after_events_published",
        "server.intake.before_ack",
    ],
)
def test_intake_crash_stores_and_answers_every_message_once(stack, telegram, mongo, tmp_path, clean_nats, point):
    server, log = crash_at(stack, tmp_path, point)
    stack.bot()
    texts = {contact: [f"{contact} primeira", f"{contact} segunda"] for contact in CONTACTS}
    for contact in CONTACTS:
        telegram.send_as_user(contact, texts[contact][0], first_name=f"C{contact}")
    wait_for_crash(server, log, point)
    for contact in CONTACTS:
        telegram.send_as_user(contact, texts[contact][1], first_name=f"C{contact}")
    stack.server(INTAKE_ACK_WAIT=ACK_WAIT)  # a fresh replica; the crashed batch comes back to it after the ack wait

    def observed() -> tuple:
        return (
            mongo.messages.count_documents({}),
            len(telegram.sent()),
            tuple(sorted((s["contact_identifier"], s["message_count"]) for s in mongo.sessions.find())),
        )

    settle(clean_nats.url, observed)

    for contact in CONTACTS:
        stored = sorted(m["text"] for m in mongo.messages.find({"text": {"$regex": f"^{contact} "}}))
        assert stored == sorted(texts[contact])
        replies = [m["text"] for m in telegram.sent(contact)]
        assert replies == [DEFAULT_REPLY, DEFAULT_REPLY]
    assert mongo.sessions.count_documents({}) == len(CONTACTS)
    counters_match_what_is_stored(mongo)


# --- the outbox ----------------------------------------------------------------------


def test_outbox_crash_after_publishing_sends_the_goodbye_once(stack, api, telegram, mongo, tmp_path, clean_nats):
    point = "outbox.after_publish_before_forget"
    server, log = crash_at(stack, tmp_path, point)
    stack.bot()
    telegram.send_as_user(6201, "Olá", first_name="Rita")
    eventually(lambda: [m for m in telegram.sent(6201) if m["text"] == DEFAULT_REPLY], message="reply")
    session = mongo.sessions.find_one({"contact_identifier": "6201"})
    try:
        answered = api.delete(f"sessions/{session['_id']}", check=False).status_code == 204
    except httpx.HTTPError:
        answered = False  # the relay's crash may come before the finish answered
    wait_for_crash(server, log, point)
    stack.server()
    if not answered:
        # As a client does with a request that got no answer: send it again. The
        # goodbye is promised again under the same key, and still sent once.
        assert api.delete(f"sessions/{session['_id']}", check=False).status_code in (204, 404)

    settle(clean_nats.url, lambda: (len(telegram.sent()), mongo.outbox.count_documents({})))

    assert [m["text"] for m in telegram.sent(6201)] == [DEFAULT_REPLY, DEFAULT_GOODBYE]
    assert mongo.sessions.count_documents({}) == 0 and mongo.messages.count_documents({}) == 0
    assert mongo.outbox.count_documents({}) == 0


# --- imports -------------------------------------------------------------------------


def chunk_of(first: int, count: int, messages: int = 2) -> bytes:
    lines = []
    for number in range(first, first + count):
        record = {
            "name": f"Importada {number}",
            "platform_type": "Telegram",
            "contact_identifier": 5500 + number,
            "messages": [
                {"id": f"m{number}-{n}", "content": f"mensagem {n} de {number}", "date": f"2024-05-01T12:{n:02d}:00Z"}
                for n in range(messages)
            ],
        }
        lines.append(json.dumps({"record": number, "line": number, "data": record}))
    return ("\n".join(lines) + "\n").encode()


def put_chunk(http: httpx.Client, import_id: str, seq: int, body: bytes) -> httpx.Response | None:
    try:
        return http.put(
            f"imports/{import_id}/chunks/{seq}", content=body, headers={"Content-Type": "application/x-ndjson"}
        )
    except httpx.HTTPError:
        return None  # the server died answering


@pytest.mark.parametrize(
    "point",
    [
        "import.after_sessions_inserted",
        "import.after_messages_inserted",
        "import.chunk.after_batch_record",
    ],
)
def test_chunked_import_crash_then_resume_reports_what_is_stored(
    stack, api, telegram, mongo, tmp_path, clean_nats, point
):
    telegram.add_channel("suporte")
    server, log = crash_at(stack, tmp_path, point)
    stack.bot()
    job = api.post("imports", json={"channel": "@suporte", "source": "crash.csv"}).json()
    chunks = [chunk_of(1, 5), chunk_of(6, 5)]

    assert put_chunk(api.http, job["id"], 0, chunks[0]) is None
    wait_for_crash(server, log, point)
    stack.server()
    # What the CLI's --resume does: ask where to go on, and send from there.
    resume_at = api.get(f"imports/{job['id']}").json()["next_chunk"]
    for seq in range(resume_at, len(chunks)):
        answer = put_chunk(api.http, job["id"], seq, chunks[seq])
        assert answer is not None and answer.status_code == 200, answer and answer.text
    assert put_chunk(api.http, job["id"], 1, chunks[1]).json()["repeated"] is True
    done = api.post(f"imports/{job['id']}/complete", json={"chunks": len(chunks)})
    assert done.status_code == 200, done.text
    settle(clean_nats.url, lambda: len(telegram.sent()))

    report = api.get(f"imports/{job['id']}").json()
    assert report["status"] == "succeeded"
    assert report["counts"]["received"] == 10 and report["counts"]["rejected"] == 0
    # Every session was opened by this import, the crashed chunk's included.
    assert report["counts"]["created"] == mongo.sessions.count_documents({}) == 10
    assert mongo.messages.count_documents({}) == 20
    counters_match_what_is_stored(mongo)
    assert len(telegram.sent("@suporte")) == 1


def test_an_import_ended_by_a_server_that_died_before_announcing_it_is_announced_once(
    stack, api, telegram, mongo, tmp_path, clean_nats
):
    """The job's end is stored, then the server dies before promising the announcement. The
    client never asks again: the next server's reaper finds the announcement owed and sends it."""
    telegram.add_channel("suporte")
    point = "import.finish.after_job_ended"
    server, log = crash_at(stack, tmp_path, point)
    stack.bot()
    job = api.post("imports", json={"channel": "@suporte", "source": "fim.csv"}).json()
    assert put_chunk(api.http, job["id"], 0, chunk_of(1, 3)).status_code == 200
    with pytest.raises(httpx.HTTPError):  # the server dies answering
        api.http.post(f"imports/{job['id']}/complete", json={"chunks": 1})
    wait_for_crash(server, log, point)
    ended = mongo.import_jobs.find_one()
    assert ended["status"] == "succeeded" and ended["announce_pending"] is True
    assert not telegram.sent("@suporte")

    stack.server()
    settle(clean_nats.url, lambda: len(telegram.sent()))

    (announcement,) = telegram.sent("@suporte")
    assert announcement["text"].startswith("Importação concluída (fim.csv): 3 sessões importadas")
    assert "announce_pending" not in mongo.import_jobs.find_one()


def test_sessions_finished_while_an_import_stores_into_them_lose_no_message(
    stack, api, telegram, mongo, tmp_path, clean_nats
):
    """An import resolves each contact's session, then inserts its messages under it; an
    agent's finish in between must not leave them orphans: they land in the contact's next
    session, counted, and the chunk's report says so."""
    telegram.add_channel("suporte")
    point = "import.after_sessions_resolved"
    # Its first pass is chunk 0 (contact 1 new); the second, chunk 1, is held in the window.
    server, log = crash_at(stack, tmp_path, point, action="pause@2")
    stack.bot()
    job = api.post("imports", json={"channel": "@suporte", "source": "corrida.csv"}).json()
    first = put_chunk(api.http, job["id"], 0, chunk_of(1, 1))
    assert first is not None and first.json()["counts"]["created"] == 1, first and first.text
    earlier = mongo.sessions.find_one({"contact_identifier": "5501"})["_id"]

    # Chunk 1: contact 2 is new (nothing of it is stored yet); contact 1 has new messages
    # for the session looked up above.
    second = chunk_of(1, 2, messages=4)
    answers: list = []
    writer = threading.Thread(target=lambda: answers.append(put_chunk(api.http, job["id"], 1, second)))
    writer.start()
    eventually(lambda: fired(log, point), timeout=60, message="import held in the window")
    assert mongo.sessions.find_one({"contact_identifier": "5502"}) is None  # never seen half-made
    assert api.delete(f"sessions/{earlier}").status_code == 204  # the agent finishes it inside the window
    failpoints.resume(str(log), point)
    writer.join(60)
    assert answers and answers[0] is not None and answers[0].status_code == 200, answers
    report = answers[0].json()
    done = api.post(f"imports/{job['id']}/complete", json={"chunks": 2})
    assert done.status_code == 200, done.text

    def observed() -> tuple:
        return mongo.messages.count_documents({}), mongo.sessions.count_documents({}), len(telegram.sent())

    settle(clean_nats.url, observed)

    live = {session["_id"]: session for session in mongo.sessions.find()}
    orphans = [m["text"] for m in mongo.messages.find() if m["session_id"] not in live]
    assert orphans == [], "imported messages left in finished sessions"
    stored = sorted((live[m["session_id"]]["contact_identifier"], m["text"]) for m in mongo.messages.find())
    # The finish came before chunk 1 stored anything: as if it had come before the chunk,
    # the chunk's records (contact 1's earlier messages too) are in each contact's next session.
    assert stored == sorted((f"550{r}", f"mensagem {n} de {r}") for r in (1, 2) for n in range(4))
    assert earlier not in live  # contact 1's next session
    counters_match_what_is_stored(mongo)
    # The chunk's report is what is stored: both records opened the session they are in now.
    assert report["counts"] == {"received": 2, "created": 2, "updated": 0, "unchanged": 0, "rejected": 0}
    assert len(live) == 2
    assert len(telegram.sent("@suporte")) == 1
