"""Driving a running stack from outside, and reading what its containers show."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.containers.podman import Podman
from tests.harness import FakeTelegramClient

REPLY = "Reply: mensagem recebida"
VIOLATION = " Violation - "  # how nats-server logs a refused publish or subscription


def replies(telegram: FakeTelegramClient, chat_id: int, text: str = REPLY) -> int:
    return sum(message["text"] == text for message in telegram.sent(chat_id))


class Background:
    """A loop (`_run`) on a thread of its own from `with` to its end; `_stop` says when to end."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:  # pragma: no cover - each kind has its own
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class Writer(Background):
    """Contacts that keep writing, from several chats in turn, on a schedule, until stopped."""

    def __init__(self, telegram: FakeTelegramClient, chats: list[int], interval: float) -> None:
        super().__init__()
        self.telegram, self.chats, self.interval = telegram, chats, interval
        self.sent: Counter[int] = Counter()

    def _run(self) -> None:
        n, due = 0, time.monotonic()
        while not self._stop.is_set():
            chat = self.chats[n % len(self.chats)]
            self.telegram.send_as_user(chat, f"mensagem {n}", first_name=f"Contato{chat}")
            self.sent[chat] += 1
            n += 1
            due += self.interval  # the time a send takes does not slow the rate
            self._stop.wait(max(0.0, due - time.monotonic()))

    def all_answered(self) -> bool:
        return all(replies(self.telegram, chat) >= self.sent[chat] for chat in self.chats)

    def answered(self) -> dict[int, int]:
        return {chat: replies(self.telegram, chat) for chat in self.chats}


class ReplyWatch(Background):
    """Samples how many replies Telegram received, to find the longest wait between two of them."""

    def __init__(self, telegram: FakeTelegramClient, interval: float = 0.2) -> None:
        super().__init__()
        self.telegram, self.interval = telegram, interval
        self.samples: list[tuple[float, int]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.telegram.stats()["sent"]))
            self._stop.wait(self.interval)

    def longest_gap(self) -> float:
        """The longest time the count of replies stood still."""
        longest, since, last = 0.0, None, None
        for at, count in self.samples:
            if count != last:
                if since is not None:
                    longest = max(longest, at - since)
                since, last = at, count
        return longest


# Run in a server container, as its own NATS user (from its NATS_URL and password file):
# what JetStream still holds for the server and the bot.
BACKLOG = """
import asyncio, json, os
from urllib.parse import urlsplit
import nats
async def main():
    urls = [urlsplit(url.strip()) for url in os.environ["NATS_URL"].split(",")]
    password = open(os.environ["NATS_PASSWORD_FILE"]).read().strip()
    nc = await nats.connect([f"nats://{url.hostname}:{url.port}" for url in urls], user=urls[0].username,
                            password=password, inbox_prefix="_INBOX_server")
    js = nc.jetstream()
    inbound = (await js.stream_info("BALCAO_INBOUND")).state.messages
    outbound = (await js.stream_info("BALCAO_OUTBOUND")).state.messages
    consumer = await js.consumer_info("BALCAO_INBOUND", "server-inbound")
    await nc.close()
    print(json.dumps([inbound, consumer.num_pending + consumer.num_ack_pending, outbound]))
asyncio.run(main())
"""


def settle(podman: Podman, server: str, observe: Callable[[], Any], quiet: float = 3.0, timeout: float = 240.0) -> Any:
    """Wait until JetStream holds nothing for either process (inbound taken and acknowledged,
    outbound sent) and `observe()` stays the same for `quiet` s; its last value. Only then
    does comparing what was sent with what arrived prove that nothing came twice."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        held = json.loads(podman.run("exec", server, "python", "-c", BACKLOG).stdout)
        current = (held, observe())
        if current != last:
            last, since = current, time.monotonic()
        elif held == [0, 0, 0] and time.monotonic() - since >= quiet:
            return current[1]
        time.sleep(0.5)
    raise AssertionError(f"the stack did not settle in {timeout} s (last: {last!r})")


def assert_hardened(podman: Podman, service: str, container: str, limits: tuple[int, int] | None = None) -> None:
    """Read-only root, no capability, no privilege gain, not root, limited, secrets as files:
    from `podman inspect`, and from inside, for the container's main process."""
    config = podman.inspect(container)
    host = config["HostConfig"]
    assert host["ReadonlyRootfs"] is True, service
    assert config["EffectiveCaps"] in (None, []), (service, config["EffectiveCaps"])
    assert "no-new-privileges" in host["SecurityOpt"], (service, host["SecurityOpt"])
    assert host["Memory"] > 0 and host["PidsLimit"] > 0, service
    if limits is not None:
        assert (host["Memory"], host["PidsLimit"]) == limits, service
    user = config["Config"]["User"]
    assert user and user.split(":")[0] not in ("0", "root"), (service, user)
    env = dict(item.partition("=")[::2] for item in config["Config"]["Env"])
    assert not [k for k in env if re.search("PASSWORD|TOKEN|SECRET", k) and not k.endswith("_FILE")], env
    status = podman.run("exec", container, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0" * 16 and fields["CapBnd"].strip() == "0" * 16, service
    assert fields["NoNewPrivs"].strip() == "1", service
    assert fields["Uid"].split()[0] != "0", service
    write = podman.run("exec", container, "sh", "-c", "touch /probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, (service, write.stderr)


def resident(podman: Podman, container: str) -> int:
    """Resident memory of every process of the container (the host's /proc), in bytes."""
    pids = podman.run("top", container, "hpid").stdout.split()[1:]
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue  # gone since it was listed (a health check's process)
        total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    return total


def started_at(podman: Podman, container: str) -> float:
    """When the container last started, as a time.time() value."""
    stamp = podman.inspect(container)["State"]["StartedAt"]  # RFC 3339 with nanoseconds
    whole, _, fraction = stamp.partition(".")
    digits = "".join(ch for ch in fraction if ch.isdigit())
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(f"0.{digits or 0}")


def violations(log: str) -> list[str]:
    return [line for line in log.splitlines() if VIOLATION in line]
