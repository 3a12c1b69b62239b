"""Files benchmark: the memory of the server and the bot while contacts send big files.

Starts a fresh nats-server and MongoDB-wire server, the fake Bot API (in this
process), Balcão's server and bot. CONTACTS contacts each send one document of
SIZE_MB MiB at once; the bot downloads each and puts it in the file store, the
server stores the messages. Then every file is downloaded at once through
`GET /v1/sessions/{id}/messages/{message_id}/file` and checked against its sha256.
Prints each process's resident memory before, its peak (VmHWM) and the largest
VmRSS sampled during each phase, and the phases' times.

    .venv/bin/python -m bench.media [--contacts 20] [--size-mb 20]

Target: the peaks grow by far less than one file, however many are in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

import httpx

from bench import stack
from bench.faketelegram import generated_sha256, peak_rss
from devstack.faketelegram import FakeTelegram
from devstack.processes import free_port, wait_for_port

TOKEN = "42:bench-media-token"
MIB = 1024 * 1024
FIRST_CONTACT = 700_000
DEADLINE = 900.0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler:
    """The largest VmRSS of each program, sampled every 0.1 s while a phase runs."""

    def __init__(self, programs: list[stack.Program]) -> None:
        self.programs = programs
        self.largest = {program.name: 0 for program in programs}
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            for program in self.programs:
                self.largest[program.name] = max(self.largest[program.name], rss(program.pid))
            await asyncio.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def until(check, programs: list[stack.Program], deadline: float, what: str) -> None:
    while not check():
        for program in programs:
            program.check_running()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not done in {DEADLINE} s")
        await asyncio.sleep(0.2)


async def run(contacts: int, size: int, work: Path) -> list[str]:
    lines = []
    with stack.fresh_stack(work) as running:
        fake = FakeTelegram(TOKEN)
        await fake.start(port=0)
        port = free_port()
        env = stack.balcao_env(
            running, port, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=fake.base_url, TELEGRAM_POLL_TIMEOUT="10"
        )
        server = stack.launch("server", "server", work=work, env=env)
        bot = stack.launch("bot", "bot", work=work, env=env)
        programs = [server, bot]
        database = running.database()
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {stack.API_TOKEN}"}, timeout=300
        )
        try:
            wait_for_port(port, 60, server.popen)
            deadline = time.monotonic() + DEADLINE
            fake.inject_message({"id": FIRST_CONTACT - 1, "first_name": "Aquecimento"}, "primeira")
            await until(lambda: database.messages.count_documents({}) >= 1, programs, deadline, "warm-up")
            await asyncio.sleep(1.0)
            before = {p.name: (rss(p.pid), peak_rss(p.pid)) for p in programs}

            started = time.monotonic()
            with Sampler(programs) as intake:
                for n in range(contacts):
                    fake.inject_message(
                        {"id": FIRST_CONTACT + n, "first_name": f"Contato {n}"},
                        f"arquivo {n}",
                        kind="document",
                        file={"size": size, "seed": n, "file_name": f"arquivo-{n}.bin"},
                    )
                await until(
                    lambda: database.messages.count_documents({"kind": "document"}) >= contacts,
                    programs,
                    deadline,
                    "storing the files",
                )
            kept_in = time.monotonic() - started
            after_intake = {p.name: peak_rss(p.pid) for p in programs}

            documents = list(database.messages.find({"kind": "document"}))
            unkept = [doc for doc in documents if not doc["file"]["available"]]
            started = time.monotonic()
            with Sampler(programs) as downloads:
                digests = await asyncio.gather(*(download(api, doc) for doc in documents))
            served_in = time.monotonic() - started
            after_downloads = {p.name: peak_rss(p.pid) for p in programs}
            wrong = sum(
                digest != generated_sha256(int(doc["text"].split()[-1]), size)
                for doc, digest in zip(documents, digests, strict=True)
            )
        finally:
            await api.aclose()
            for program in reversed(programs):
                program.stop()
            await fake.stop()

    mib = lambda value: f"{value / MIB:.1f} MiB"  # noqa: E731
    lines.append(f"{contacts} contacts each sent a {size / MIB:g} MiB document at once")
    lines.append(
        f"kept (downloaded by the bot, put in the file store, stored) in {kept_in:.1f} s; {len(unkept)} not kept"
    )
    lines.append(
        f"all {len(documents)} downloaded through the API at once in {served_in:.1f} s; {wrong} with a wrong sha256"
    )
    lines.append(
        "| process | RSS before | largest RSS while kept | largest RSS while downloaded | peak (VmHWM) before → after |"
    )
    lines.append("|---|---|---|---|---|")
    for name in ("server", "bot"):
        lines.append(
            f"| {name} | {mib(before[name][0])} | {mib(intake.largest[name])} | {mib(downloads.largest[name])} | "
            f"{mib(before[name][1])} → {mib(after_intake[name])} → {mib(after_downloads[name])} |"
        )
    return lines


async def download(api: httpx.AsyncClient, doc: dict) -> str:
    digest = hashlib.sha256()
    async with api.stream("GET", f"/sessions/{doc['session_id']}/messages/{doc['_id']}/file") as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=20, help="contacts sending one file each, at once")
    parser.add_argument("--size-mb", type=int, default=20, help="each file's size in MiB (the Bot API allows 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="balcao-media-") as work:
        for line in asyncio.run(run(args.contacts, args.size_mb * MIB, Path(work))):
            print(line)


if __name__ == "__main__":
    main()
