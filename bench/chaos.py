"""Chaos soak: the real stack under load while its processes are SIGKILLed at random.

Runs nats-server, a MongoDB-wire server (SecantusDB, or MONGODB_URI), the fake
Bot API with flood control on, one server and one bot. CONTACTS contacts send
MESSAGES messages in all; meanwhile an operator finishes sessions and answers
as an agent over the REST API, and the CLI imports a file of sessions in chunks
(resuming after every failure). Every few seconds the server, the bot or
nats-server is killed with SIGKILL and started again on the same port and data.

Then, once the system has settled, it checks what Balcão promises:

- every message stored exactly once, in its contact's open session (messages
  of finished sessions are gone with them), and each session's counters equal
  to what is stored; every `--media-every`th message is a document whose
  caption is its text, and each one stored has its bytes in the file store;
- every contact got exactly one automatic reply per message it sent, one
  goodbye per finished session and each agent reply exactly once;
- the import has one announcement and a report equal to what is stored;
- nothing is left in progress (updates, streams, outbox, import jobs).

It prints the counts and `N passed, M failed`, and exits 1 if anything failed.

    .venv/bin/python -m bench.chaos [--messages 10000] [--contacts 500] [--rate 30]
                                    [--kill-every 6] [--seed 1] [--import-sessions 300]

Telegram's limits bound the run: one automatic reply per message at 30/s is
at least MESSAGES/30 seconds (10,000 messages: over 5.5 minutes).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pymongo

from devstack.processes import NatsServer, SecantusServer, free_port, unmeasured_environ, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BOT_TOKEN = "77:chaos-bot-token"
API_TOKEN = "chaos-api-token-0123456789abcdef"
REPLY = "Reply: mensagem recebida"
GOODBYE = "Seu atendimento foi finalizado. Obrigado pelo contato!"
CHANNEL = "@importacoes"
FIRST_CONTACT = 900_000
# A send accepted this shortly before the bot was SIGKILLed may lack its marker:
# the marker is one KV write after Telegram's answer, retried while NATS is away
# (the soak kills nats-server too). And a request the bot wrote just before its
# death can still be accepted a moment after it, by a fake slowed by the load.
RESIDUAL_BEFORE = 5.0
RESIDUAL_AFTER = 2.0
# Contacts the agent keeps aside (not writing) at once, and for how long at most,
# waiting for the intake to store all they sent before replying or finishing.
AGENT_ASIDE = 20
AGENT_PATIENCE = 600.0
# Contacts' documents are a few hundred KiB: several chunks each in the file store.
MEDIA_BYTES = 300_000


@dataclass
class Service:
    """A project process that the chaos kills and restarts with the same environment."""

    module: str
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen | None = None
    kills: int = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Run under the suite, coverage would trace a process that ends by
                # SIGKILL and so never saves what it measured.
                env=unmeasured_environ(**self.env, PYTHONUNBUFFERED="1"),
            )
        if self.port:
            wait_for_port(self.port, 60, self.popen)
        ensure_ours(self.popen, self.module)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Ledger:
    """What was done to the system, so the checks know what is owed."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    # Messages since the contact's last finish: what its open session must hold.
    open_texts: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    finishes: collections.Counter = field(default_factory=collections.Counter)
    agent_replies: dict[int, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    paused: set[int] = field(default_factory=set)
    kills: list[str] = field(default_factory=list)
    kill_times: list[tuple[str, float]] = field(default_factory=list)  # time.monotonic(): system-wide on Linux
    import_done: bool = False
    import_attempts: int = 0

    def killed(self, victim: str) -> list[float]:
        """When `victim` (one of VICTIMS) was SIGKILLed."""
        if victim not in VICTIMS:
            raise ValueError(f"no victim {victim!r}; the soak kills {', '.join(VICTIMS)}")
        return [at for name, at in self.kill_times if name == victim]


# What the soak SIGKILLs, as the ledger records it.
VICTIMS = ("server", "bot", "nats")


class Chaos:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.random = random.Random(args.seed)
        self.ledger = Ledger()
        self.stopping = threading.Event()
        self.sending_done = threading.Event()
        self.problems: list[str] = []

    # -- the stack ----------------------------------------------------------------------

    def start(self) -> None:
        self.nats = NatsServer(data_dir=self.work / "nats", log_file=self.work / "nats.log")
        self.nats.start()
        self.external_mongo = os.environ.get("MONGODB_URI")
        self.mongo_server = None
        if not self.external_mongo:
            self.mongo_server = SecantusServer(data_dir=self.work / "mongo", log_file=self.work / "mongo.log")
            self.mongo_server.start()
        self.mongodb_uri = self.external_mongo or self.mongo_server.uri
        self.mongo_client = pymongo.MongoClient(self.mongodb_uri, tz_aware=True)
        self.mongo = self.mongo_client.get_default_database()
        telegram_port = free_port()
        with open(self.work / "faketelegram.log", "ab") as log:
            self.fake = subprocess.Popen(
                [sys.executable, "-m", "devstack.faketelegram", "--port", str(telegram_port), "--token", BOT_TOKEN],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=unmeasured_environ(),
            )
        wait_for_port(telegram_port, 30, self.fake)
        self.telegram_url = f"http://127.0.0.1:{telegram_port}"
        self.telegram = httpx.Client(base_url=self.telegram_url, timeout=30)
        self.telegram.post("/_test/channels", json={"username": CHANNEL}).raise_for_status()
        http_port = free_port()
        env = {
            "NATS_URL": self.nats.url,
            "MONGODB_URI": self.mongodb_uri,
            "API_TOKEN": API_TOKEN,
            "HTTP_PORT": str(http_port),
            "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
            "TELEGRAM_API_BASE_URL": self.telegram_url,
            "TELEGRAM_POLL_TIMEOUT": "1",
            "BOT_DELIVERY_ACK_WAIT": "5",
            # A batch in hand when its server is killed comes back in seconds, not 30.
            "INTAKE_ACK_WAIT": "5",
            "LOG_LEVEL": "warning",
        }
        self.api_url = f"http://127.0.0.1:{http_port}"
        self.server = Service("server", env, self.work / "server.log", port=http_port)
        self.bot = Service("bot", env, self.work / "bot.log")
        self.server.start()
        self.bot.start()

    def stop(self) -> None:
        self.telegram.close()
        self.mongo_client.close()
        for service in (self.bot, self.server):
            service.stop()
        self.fake.terminate()
        self.fake.wait(10)
        self.nats.stop()
        if self.mongo_server is not None:
            self.mongo_server.stop()

    # -- the load -----------------------------------------------------------------------

    def send_messages(self) -> None:
        """Contacts write at about `rate` messages a second, each its own sequence."""
        args = self.args
        interval = 1.0 / args.rate
        client = httpx.Client(base_url=self.telegram_url, timeout=30)
        next_at = time.monotonic()
        n = 0
        while n < args.messages and not self.stopping.is_set():
            contact = FIRST_CONTACT + self.random.randrange(args.contacts)
            with self.ledger.lock:
                paused = contact in self.ledger.paused
            if paused:
                time.sleep(0.001)
                continue
            with self.ledger.lock:
                text = f"c{contact} m{len(self.ledger.sent[contact])}"
                self.ledger.sent[contact].append(text)
                self.ledger.open_texts[contact].append(text)
                message: dict = {"user": {"id": contact, "first_name": f"C{contact}"}, "text": text}
                if args.media_every and n % args.media_every == 0:
                    # A document whose caption is the text, so every check by text holds for it too.
                    message |= {"kind": "document", "file": {"size": MEDIA_BYTES + n, "seed": n}}
                # The fake takes it at once, whatever is down: Telegram holds it.
                client.post("/_test/messages", json=message).raise_for_status()
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        client.close()
        self.sending_done.set()

    def operate(self) -> None:
        """An agent answering and finishing sessions over the API, one contact at a time."""
        api = httpx.Client(base_url=f"{self.api_url}/v1", timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"})
        with api:
            self._operate(api)

    def _operate(self, api: httpx.Client) -> None:
        """Set contacts aside, then act on whichever has all its messages stored first.

        The intake can lag minutes behind the load while processes are killed:
        waiting for one contact at a time would leave the agent idle the whole
        run (a 10,000-message run once finished no session at all). A few
        contacts are kept aside at once (they stop writing), and each turn acts
        on the one set aside longest whose open session holds all it sent.
        """
        turn = 0
        aside: dict[int, float] = {}  # contact -> when it was set aside
        try:
            while not self.sending_done.is_set() and not self.stopping.is_set():
                time.sleep(self.args.operate_every)
                now = time.monotonic()
                with self.ledger.lock:
                    candidates = [c for c, texts in self.ledger.open_texts.items() if texts and c not in aside]
                    if candidates and len(aside) < AGENT_ASIDE:
                        contact = self.random.choice(sorted(candidates))
                        self.ledger.paused.add(contact)
                        aside[contact] = now
                for contact in sorted(aside, key=aside.__getitem__):
                    session = self.quiet_session_now(contact)
                    if session is None and now - aside[contact] < AGENT_PATIENCE:
                        continue
                    del aside[contact]
                    try:
                        if session is not None:
                            turn += 1
                            if turn % 2:
                                self.reply_as_agent(api, contact, session)
                            else:
                                self.finish(api, contact, session)
                    finally:
                        with self.ledger.lock:
                            self.ledger.paused.discard(contact)
                    break
        finally:
            with self.ledger.lock:
                self.ledger.paused.difference_update(aside)

    def quiet_session_now(self, contact: int) -> dict | None:
        """The contact's open session if it holds everything the contact sent, else None."""
        with self.ledger.lock:
            expected = len(self.ledger.open_texts[contact])
        try:
            session = self.mongo.sessions.find_one({"contact_identifier": str(contact)})
            if session is None:
                return None
            stored = self.mongo.messages.count_documents({"session_id": session["_id"], "direction": "in"})
        except pymongo.errors.PyMongoError:
            return None
        return session if stored >= expected else None

    def call(self, api: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response | None:
        """Retry through crashes; None if the server never answered."""
        for _ in range(120):
            try:
                response = api.request(method, path, **kwargs)
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            if response.status_code == 503:
                time.sleep(0.5)
                continue
            return response
        return None

    def reply_as_agent(self, api: httpx.Client, contact: int, session: dict) -> None:
        with self.ledger.lock:
            text = f"agente c{contact} r{len(self.ledger.agent_replies[contact])}"
        response = self.call(
            api,
            "POST",
            f"sessions/{session['_id']}/messages",
            json={"text": text},
            headers={"Idempotency-Key": text.replace(" ", "-")},
        )
        if response is not None and response.status_code == 201:
            with self.ledger.lock:
                self.ledger.agent_replies[contact].append(text)
        elif response is not None:
            self.problems.append(f"agent reply to {contact}: {response.status_code} {response.text[:200]}")

    def finish(self, api: httpx.Client, contact: int, session: dict) -> None:
        first = True
        for _ in range(120):
            response = self.call(api, "DELETE", f"sessions/{session['_id']}")
            if response is None:
                break
            # A 404 after a try the crash cut short: that try finished it.
            if response.status_code == 204 or (response.status_code == 404 and not first):
                with self.ledger.lock:
                    self.ledger.finishes[contact] += 1
                    self.ledger.open_texts[contact] = []
                return
            first = False
            if response.status_code != 404:
                self.problems.append(f"finish {contact}: {response.status_code} {response.text[:200]}")
                return
        self.problems.append(f"finish {contact}: the server never answered")

    def import_file(self) -> None:
        """The CLI imports a file in chunks, resuming after each failure, as its user would."""
        from cli.generate import generate_sessions
        from contract.importwriter import write_sessions

        out = io.StringIO()
        write_sessions(
            generate_sessions(self.args.import_sessions, messages_per_session=1, seed=self.args.seed), out, "json"
        )
        path = self.work / "import.json"
        path.write_text(out.getvalue(), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "cli",
            "import",
            str(path),
            "--channel",
            CHANNEL,
            "--chunk-size",
            "50",
            "--state-dir",
            str(self.work / "import-state"),
        ]
        env = unmeasured_environ(BALCAO_API_URL=self.api_url, BALCAO_API_TOKEN=API_TOKEN)
        time.sleep(5)
        state = self.work / "import-state"
        done = None
        for _ in range(60):
            self.ledger.import_attempts += 1
            # Resume once the CLI has saved its state; a run cut off before that starts over.
            resume = ["--resume"] if state.exists() and any(state.glob("*.json")) else []
            done = subprocess.run([*command, *resume], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                self.ledger.import_done = True
                return
            if self.stopping.is_set():
                break
            time.sleep(1)
        if done is not None:
            self.problems.append(f"import never finished; the CLI's last words: {done.stderr.strip()[-300:]}")

    def kill_at_random(self) -> None:
        while not self.sending_done.wait(self.random.uniform(0.5, 1.5) * self.args.kill_every):
            victim = self.random.choice(VICTIMS)
            self.ledger.kills.append(victim)
            self.ledger.kill_times.append((victim, time.monotonic()))
            if victim == "nats":
                self.nats.process.send_signal(signal.SIGKILL)
                self.nats.process.wait()
                time.sleep(self.random.uniform(0.2, 1.5))
                self.nats.start()
                ensure_ours(self.nats.process, "nats-server")
            else:
                service = self.server if victim == "server" else self.bot
                service.kill()
                time.sleep(self.random.uniform(0.2, 1.5))
                service.start()

    # -- settling and checking ---------------------------------------------------------

    def owed_sends(self) -> int:
        ledger = self.ledger
        return (
            sum(len(texts) for texts in ledger.sent.values())
            + sum(ledger.finishes.values())
            + sum(len(texts) for texts in ledger.agent_replies.values())
            + int(ledger.import_done)
        )

    def settle(self, timeout: float) -> float:
        """Wait until nothing moves: every owed send made and nothing left in flight.

        The count of sends alone can reach what is owed while work is still
        queued (a repeat from the residual window makes up for a reply not yet
        sent), so the streams and the outbox must be empty too.
        """
        started = time.monotonic()
        last, still_since = -1, time.monotonic()
        while time.monotonic() - started < timeout:
            sent = self.telegram.get("/_test/stats").json()["sent"]
            if sent != last:
                last, still_since = sent, time.monotonic()
            elif sent >= self.owed_sends() and time.monotonic() - still_since > 10 and not self.in_flight():
                break
            elif time.monotonic() - still_since > 60:
                break  # stuck short of what is owed: the checks will say what is missing
            time.sleep(1)
        return time.monotonic() - started

    def in_flight(self) -> int:
        """Updates, stream messages and outbox entries not yet worked off."""
        return (
            len(self.telegram.get("/_test/updates/pending").json()["updates"])
            + stream_messages(self.nats.url, "INBOUND")
            + stream_messages(self.nats.url, "OUTBOUND")
            + self.mongo.outbox.count_documents({})
        )

    def check(self) -> list[tuple[str, bool, str]]:
        ledger, mongo = self.ledger, self.mongo
        sent = self.telegram.get("/_test/sent").json()["messages"]
        by_chat: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for message in sent:
            by_chat[message["chat"]["id"]][message["text"]] += 1
        results = []

        # Messages: exactly once, in the contact's open session.
        sessions = {s["_id"]: s for s in mongo.sessions.find()}
        stored: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        stale = 0
        counts: collections.Counter = collections.Counter()
        for message in mongo.messages.find({}, {"session_id": 1, "text": 1, "direction": 1}):
            counts[message["session_id"]] += 1
            session = sessions.get(message["session_id"])
            if session is None:
                stored[-1][message["text"]] += 1  # orphan: its session is gone
            elif message["direction"] == "in":
                stored[int(session["contact_identifier"])][message["text"]] += 1
        lost = duplicated = misplaced = 0
        for contact, texts in ledger.open_texts.items():
            for text in texts:
                found = stored[contact][text]
                lost += found == 0
                duplicated += max(0, found - 1)
        chat_contacts = set(ledger.sent)
        orphaned = sum(stored[-1].values())
        for contact, texts in stored.items():
            if contact == -1 or contact not in chat_contacts:
                continue
            expected = set(ledger.open_texts.get(contact, []))
            misplaced += sum(count for text, count in texts.items() if text not in expected)
        stale_examples = []
        for session in sessions.values():
            if session.get("message_count") != counts[session["_id"]]:
                stale += 1
                stale_examples.append(
                    f"contact {session['contact_identifier']}: message_count "
                    f"{session.get('message_count')}, {counts[session['_id']]} stored"
                )
        total = sum(len(t) for t in ledger.sent.values())
        kept = sum(len(t) for t in ledger.open_texts.values())
        results.append(
            (
                "messages stored exactly once",
                not (lost or duplicated or misplaced or orphaned),
                f"{total} sent, {kept} owed to open sessions: {lost} lost, {duplicated} duplicated, "
                f"{misplaced} in a session they do not belong to (e.g. kept past a finish), "
                f"{orphaned} orphaned (their session deleted)",
            )
        )
        results.append(
            (
                "session counters equal what is stored",
                stale == 0,
                f"{len(sessions)} sessions, {stale} with a stale message_count"
                + (f" ({'; '.join(stale_examples[:3])})" if stale_examples else ""),
            )
        )

        # Replies, goodbyes, agent replies: exactly what is owed, per contact. A send
        # beyond that is the documented residual window only if the bot was SIGKILLed
        # just after Telegram accepted it (before its delivered marker): any other
        # extra send, and every missing one, fails.
        accepted = collections.defaultdict(list)
        for attempt in self.telegram.get("/_test/attempts").json()["attempts"]:
            if attempt["method"] == "sendMessage" and attempt["status"] == 200:
                accepted[(str(attempt["chat_id"]), attempt["text"])].append(attempt["at"])
        bot_kills, nats_kills = ledger.killed("bot"), ledger.killed("nats")

        def tally(contact: int, text: str, owed: int, into: collections.Counter) -> None:
            got = by_chat[contact][text]
            into["missing"] += max(0, owed - got)
            surplus = max(0, got - owed)
            if surplus:
                near_kill = residual_repeats(accepted[(str(contact), text)], bot_kills, nats_kills)
                into["residual"] += min(surplus, near_kill)
                into["extra"] += max(0, surplus - near_kill)

        replies, goodbyes, agent = collections.Counter(), collections.Counter(), collections.Counter()
        for contact in ledger.sent:
            tally(contact, REPLY, len(ledger.sent[contact]), replies)
            tally(contact, GOODBYE, ledger.finishes[contact], goodbyes)
            for text in ledger.agent_replies.get(contact, []):
                tally(contact, text, 1, agent)

        def verdict(counts: collections.Counter) -> tuple[bool, str]:
            return (
                counts["missing"] == 0 and counts["extra"] == 0,
                f"{counts['missing']} missing, {counts['extra']} extra, {counts['residual']} repeated by "
                f"a bot SIGKILLed between Telegram's acceptance and the marker (residual window)",
            )

        ok, detail = verdict(replies)
        results.append(
            (
                "one automatic reply per message",
                ok,
                f"{sum(c[REPLY] for c in by_chat.values())} replies for {total} messages: {detail}",
            )
        )
        finishes = sum(ledger.finishes.values())
        ok, detail = verdict(goodbyes)
        results.append(("one goodbye per finished session", ok, f"{finishes} finished: {detail}"))
        agents = sum(len(t) for t in ledger.agent_replies.values())
        ok, detail = verdict(agent)
        results.append(("each agent reply delivered once", ok, f"{agents} agent replies: {detail}"))
        stored_agent = collections.Counter(m["text"] for m in mongo.messages.find({"direction": "out"}, {"text": 1}))
        doubled = sum(count - 1 for count in stored_agent.values() if count > 1)
        results.append(
            (
                "each agent reply stored once",
                doubled == 0,
                f"{sum(stored_agent.values())} stored (finished sessions take theirs along), {doubled} duplicated",
            )
        )

        # Contacts' files: each one stored has its bytes kept, whole.
        documents = list(mongo.messages.find({"kind": "document"}, {"file": 1}))
        kept = stored_objects(self.nats.url)
        unkept = [doc for doc in documents if not doc["file"].get("available")]
        missing = [doc for doc in documents if kept.get(doc["file"].get("object_name")) != doc["file"]["size"]]
        referenced = {doc["file"].get("object_name") for doc in documents}
        results.append(
            (
                "each stored file kept whole in the file store",
                bool(documents) and not unkept and not missing,
                f"{len(documents)} documents stored, {len(unkept)} not kept, {len(missing)} missing or of "
                f"another size in the store; {len(set(kept) - referenced)} objects no stored message names "
                f"(of messages finished before they were stored, or put again after their finish)",
            )
        )

        # The import.
        jobs = list(mongo.import_jobs.find())
        announcements = by_chat_name(sent, CHANNEL)
        job = jobs[0] if jobs else {}
        counts_ok = False
        detail = f"{len(jobs)} jobs, {len(announcements)} announcements, {ledger.import_attempts} CLI runs"
        if ledger.import_done and len(jobs) == 1:
            imported = mongo.sessions.count_documents({"chat_id": {"$exists": False}})
            job_counts = job.get("counts", {})
            reported = sum(job_counts.get(k, 0) for k in ("created", "updated", "unchanged"))
            counts_ok = (
                job.get("status") == "succeeded"
                and reported == imported == self.args.import_sessions
                and job_counts.get("received") == self.args.import_sessions
            )
            detail += f", status {job.get('status')}, report {job_counts}, {imported} imported sessions stored"
        results.append(
            (
                "import reported as stored, announced once",
                ledger.import_done and counts_ok and len(announcements) == 1,
                detail,
            )
        )

        # Nothing in progress.
        leftovers = {
            "pending updates": len(self.telegram.get("/_test/updates/pending").json()["updates"]),
            "outbox entries": mongo.outbox.count_documents({}),
            "running imports": mongo.import_jobs.count_documents({"status": "running"}),
            "inbound waiting": stream_messages(self.nats.url, "INBOUND"),
            "outbound waiting": stream_messages(self.nats.url, "OUTBOUND"),
        }
        results.append(
            (
                "nothing left in progress",
                not any(leftovers.values()),
                ", ".join(f"{k} {v}" for k, v in leftovers.items()),
            )
        )
        return results

    def figures(self) -> str:
        stats = self.telegram.get("/_test/stats").json()
        return (
            f"telegram: {stats['sent']} messages sent, {stats['by_status'].get('429', 0)} sends met a 429 "
            f"(a restarted bot starts its pacing afresh)"
        )


class PortTaken(RuntimeError):
    """Another program took a port while its process was down: the run means nothing."""


def ensure_ours(process: subprocess.Popen, name: str) -> None:
    # On a shared machine another program may bind a port in the moment between
    # a kill and the restart; the open port would then not be ours.
    time.sleep(0.3)
    if process.poll() is not None:
        raise PortTaken(f"{name} exited with {process.returncode} on restart (port taken?)")


def by_chat_name(sent: list[dict], name: str) -> list[dict]:
    return [m for m in sent if m["chat"].get("username", "").lower() == name.lstrip("@").lower()]


def residual_repeats(accepted: list[float], bot_kills: list[float], nats_kills: list[float]) -> int:
    """How many repeats of one send (Telegram accepted it at each of `accepted`) the residual window explains.

    A repeat is the window's only if the bot was SIGKILLed after Telegram accepted
    the send before it (up to RESIDUAL_AFTER earlier, for a request already written)
    and before the repeat, while the delivered marker could still be unwritten:
    within RESIDUAL_BEFORE of the acceptance, or later if nats-server was killed in
    between (the marker write retries until NATS is back).
    """

    def died_before_marker(at: float, resent_at: float) -> bool:
        for kill in bot_kills:
            if not at - RESIDUAL_AFTER <= kill <= resent_at:
                continue
            if kill - at <= RESIDUAL_BEFORE or any(at - RESIDUAL_AFTER <= down <= kill for down in nats_kills):
                return True
        return False

    times = sorted(accepted)
    return sum(died_before_marker(at, resent) for at, resent in zip(times, times[1:]))


def stream_messages(nats_url: str, stream: str) -> int:
    import asyncio

    import nats

    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            from contract import messaging

            name = {"INBOUND": messaging.INBOUND_STREAM, "OUTBOUND": messaging.OUTBOUND_STREAM}[stream]
            return (await nc.jetstream().stream_info(name)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def stored_objects(nats_url: str) -> dict[str, int]:
    """The files in the file store: name -> size."""
    import asyncio

    import nats
    from nats.js.errors import NotFoundError

    async def listing() -> dict[str, int]:
        nc = await nats.connect(nats_url)
        try:
            from contract import messaging

            store = await nc.jetstream().object_store(messaging.FILES_BUCKET)
            return {info.name: info.size for info in await store.list(ignore_deletes=True)}
        except NotFoundError:  # no bucket, or nothing in it
            return {}
        finally:
            await nc.close()

    return asyncio.run(listing())


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="balcao-chaos-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        chaos = Chaos(args, work)
        started = time.monotonic()
        chaos.start()
        try:
            threads = [
                threading.Thread(target=target, name=target.__name__, daemon=True)
                for target in (chaos.send_messages, chaos.operate, chaos.import_file, chaos.kill_at_random)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            loaded = time.monotonic() - started
            settled = chaos.settle(args.settle_timeout)
            results = chaos.check()
            figures = chaos.figures()
        finally:
            chaos.stopping.set()
            chaos.stop()
        kills = collections.Counter(chaos.ledger.kills)
        print(f"chaos soak: {args.messages} messages from {args.contacts} contacts at {args.rate}/s, seed {args.seed}")
        print(
            f"load ran {loaded:.0f} s, settled in {settled:.0f} s; SIGKILLs: server {kills['server']}, "
            f"bot {kills['bot']}, nats-server {kills['nats']}"
        )
        print(figures)
        for problem in chaos.problems:
            print(f"  note: {problem}")
        failed = 0
        for name, ok, detail in results:
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        print(f"{len(results) - failed} passed, {failed} failed")
        if failed and not args.keep:
            for log in ("server.log", "bot.log"):
                text = (work / log).read_text(errors="replace")
                print(f"--- last lines of {log} ---\n" + "\n".join(text.splitlines()[-15:]))
        return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages the contacts send in all")
    parser.add_argument("--contacts", type=int, default=500, help="contacts sending them")
    parser.add_argument("--rate", type=float, default=30.0, help="messages sent per second")
    parser.add_argument("--kill-every", type=float, default=6.0, help="mean seconds between SIGKILLs")
    parser.add_argument(
        "--operate-every", type=float, default=1.0, help="seconds between agent actions (reply or finish)"
    )
    parser.add_argument("--import-sessions", type=int, default=300, help="sessions in the imported file")
    parser.add_argument(
        "--settle-timeout", type=float, default=900.0, help="seconds to wait for owed sends after the load"
    )
    parser.add_argument("--media-every", type=int, default=10, help="every Nth message is a document (0: texts only)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (contacts, kills)")
    parser.add_argument("--keep", metavar="DIR", help="keep data and logs in DIR")
    return parser.parse_args(argv)


def main() -> None:
    sys.exit(run(parse_args()))


if __name__ == "__main__":
    main()
