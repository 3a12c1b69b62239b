"""The real processes under test: server and bot subprocesses, and clients to watch them."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import free_port, unmeasured_environ, wait_for_port
from runtime import failpoints

ROOT = Path(__file__).resolve().parent.parent
BOT_TOKEN = "123456:TEST-token-for-the-fake-bot-api"
API_TOKEN = "test-api-token-0123456789abcdef-0123456789"


def eventually(
    check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.2, message: str = "condition"
) -> Any:
    """Poll until `check()` returns something truthy; its last value on success.

    Checks read the database, NATS or the fake Bot API, each a round trip that
    costs those servers CPU: five a second keep a test responsive, and the
    workers that share the cores busy with tests instead of polls.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} not met after {timeout} s (last: {last!r})")


@dataclass
class Process:
    """A project process (`python -m NAME`) started with its own environment."""

    module: str
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    # False for a process the test will SIGKILL: coverage saves what it measured
    # at exit, so tracing one that never exits cleanly only costs CPU. A fail
    # point armed to kill says so on its own.
    measured: bool = True
    popen: subprocess.Popen | None = field(default=None, init=False)
    signalled: int | None = field(default=None, init=False)

    def start(self) -> Process:
        armed = failpoints.parse(self.env.get(failpoints.ENV, "")).values()
        measured = self.measured and all(point.action != "kill" for point in armed)
        extra = {**self.env, "PYTHONUNBUFFERED": "1"}
        environ = {**os.environ, **extra} if measured else unmeasured_environ(**extra)
        self.signalled = None
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", self.module], env=environ, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        if self.port:
            wait_for_port(self.port, 30, self.popen)
        return self

    def send(self, sig: int) -> None:
        """Send `sig` if the process runs and was not sent it already (stop() after
        send() waits; it does not signal twice)."""
        if self.popen is not None and self.popen.poll() is None and self.signalled != sig:
            self.popen.send_signal(sig)
            self.signalled = sig

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.popen is None:
            return None
        self.send(sig)
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        code, self.popen = self.popen.returncode, None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class FakeTelegramClient:
    """The test-only side of the fake Bot API, over HTTP."""

    def __init__(self, base_url: str, verify: ssl.SSLContext | bool = True) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=10, verify=verify)

    def send_as_user(
        self,
        user_id: int,
        text: str | None = None,
        first_name: str = "Contato",
        last_name: str | None = None,
        kind: str = "text",
        **content: Any,
    ) -> dict:
        """Writes as a contact. ``text`` is the text, or a media message's caption; ``content``
        takes the rest of /_test/messages: ``file`` (``{"ref": store_file(...)["ref"]}``, or
        ``{"size": N, "seed": S}``, plus any field Telegram gives the kind, lies included),
        ``entities``, ``location``, ``contact``, ``chat_id``. The answer has update_id,
        message_id and, for a file, its file_id, file_path, real size and sha256."""
        user = {"id": user_id, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        body: dict[str, Any] = {"user": user, "kind": kind, **content}
        if text is not None:
            body["text"] = text
        response = self.http.post("/_test/messages", json=body)
        response.raise_for_status()
        return response.json()

    def edit_as_user(self, chat_id: int, message_id: int, text: str | None) -> dict:
        """An edited_message of what the contact sent: a new text or caption."""
        body = {"chat_id": chat_id, "message_id": message_id, "text": text}
        response = self.http.post("/_test/edits", json=body)
        response.raise_for_status()
        return response.json()

    def store_file(self, content: bytes) -> dict:
        """Bytes for a file message to come: {"ref", "size", "sha256"}."""
        response = self.http.post("/_test/files", content=content)
        response.raise_for_status()
        return response.json()

    def file_info(self, file_id: str) -> dict:
        response = self.http.get(f"/_test/files/{file_id}")
        response.raise_for_status()
        return response.json()

    def forget_file(self, file_id: str) -> None:
        """The file becomes unavailable, as when its message is deleted."""
        self.http.delete(f"/_test/files/{file_id}").raise_for_status()

    def inject_update(self, update: dict) -> dict:
        response = self.http.post("/_test/updates", json={"update": update})
        response.raise_for_status()
        return response.json()

    def sent(self, chat_id: int | str | None = None) -> list[dict]:
        params = {} if chat_id is None else {"chat_id": str(chat_id)}
        response = self.http.get("/_test/sent", params=params)
        response.raise_for_status()
        return response.json()["messages"]

    def attempts(self, chat_id: int | str | None = None) -> list[dict]:
        params = {} if chat_id is None else {"chat_id": str(chat_id)}
        response = self.http.get("/_test/attempts", params=params)
        response.raise_for_status()
        return response.json()["attempts"]

    def pending_updates(self) -> list[dict]:
        response = self.http.get("/_test/updates/pending")
        response.raise_for_status()
        return response.json()["updates"]

    def add_fault(self, **fault: Any) -> None:
        self.http.post("/_test/faults", json=fault).raise_for_status()

    def add_user(self, user_id: int, first_name: str = "Contato") -> None:
        self.http.post("/_test/users", json={"id": user_id, "first_name": first_name}).raise_for_status()

    def add_channel(self, username: str, title: str = "Canal") -> None:
        self.http.post("/_test/channels", json={"username": username, "title": title}).raise_for_status()

    def add_group(self, chat_id: int, title: str = "Grupo") -> None:
        self.http.post("/_test/groups", json={"id": chat_id, "title": title}).raise_for_status()

    def migrate_group(self, chat_id: int) -> int:
        """Makes the group a supergroup; returns the supergroup's id."""
        response = self.http.post(f"/_test/groups/{chat_id}/migrate", json={})
        response.raise_for_status()
        return int(response.json()["id"])

    def reset(self) -> None:
        self.http.post("/_test/reset").raise_for_status()

    def deliveries(self, update_id: int) -> int:
        """How many times getUpdates handed this update out."""
        response = self.http.get(f"/_test/updates/{update_id}/deliveries")
        response.raise_for_status()
        return response.json()["deliveries"]

    def stats(self) -> dict:
        response = self.http.get("/_test/stats")
        response.raise_for_status()
        return response.json()

    def set_flood_control(self, enabled: bool) -> None:
        self.http.post("/_test/flood_control", json={"enabled": enabled}).raise_for_status()


async def _reset_jetstream(url: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    js = nc.jetstream()
    for stream in await js.streams_info():
        try:
            await js.delete_stream(stream.config.name)
        except NotFoundError:
            pass
    await nc.close()


def reset_jetstream(url: str) -> None:
    asyncio.run(_reset_jetstream(url))


def stack_env(nats_url: str, mongodb_uri: str, telegram_url: str) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "MONGODB_URI": mongodb_uri,
        "API_TOKEN": API_TOKEN,
        "TELEGRAM_BOT_TOKEN": BOT_TOKEN,
        "TELEGRAM_API_BASE_URL": telegram_url,
        "TELEGRAM_POLL_TIMEOUT": "1",
        "LOG_LEVEL": "info",
    }


def new_port() -> int:
    return free_port()


class ApiClient:
    """The /v1 API of a running server, called the way agents call it.

    Every answer to a documented route is validated against the OpenAPI document
    on the way, so each API test also checks the contract; `check=False` is for
    the few requests that probe what the document leaves out.
    """

    def __init__(self, base_url: str, token: str | None = API_TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=f"{base_url}/v1/", headers=headers, timeout=30)
        # Loaded here, not on the first answer: that may come inside a test's
        # timed wait, and loading takes seconds on a busy machine.
        openapi_schema()

    def request(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if check:
            conforms_to_openapi(response)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def walk(self, path: str, **params: Any) -> list[list[dict]]:
        """Every page of a listing, following `next_cursor` to the end."""
        pages: list[list[dict]] = []
        cursor = None
        while True:
            response = self.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages

    def close(self) -> None:
        self.http.close()


class AsyncApiClient:
    """The /v1 API of a server running in the test's own event loop: `await api.get("sessions")`.

    As ApiClient, every answer to a documented route is validated against the
    OpenAPI document on the way (`check=False` for requests that probe what it
    leaves out).
    """

    def __init__(self, base_url: str, port: int, token: str | None = API_TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.port = port
        # The server shares this process's CPU; a whole upload answered at its end
        # takes minutes on a machine as busy as CI's can be.
        self.http = httpx.AsyncClient(base_url=f"{base_url}/v1/", headers=headers, timeout=180)
        openapi_schema()

    async def request(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        if check:
            conforms_to_openapi(response)
        return response

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kwargs)

    async def walk(self, path: str, **params: Any) -> list[list[dict]]:
        """Every page of a listing, following `next_cursor` to the end."""
        pages: list[list[dict]] = []
        cursor = None
        while True:
            response = await self.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            body = response.json()
            pages.append(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                return pages

    async def close(self) -> None:
        await self.http.aclose()


async def eventually_async(
    check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.2, message: str = "condition"
) -> Any:
    """`eventually` for a test whose event loop also runs the server: waits without blocking it.

    `check` may return an awaitable (a read of NATS, say), which is awaited.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{message} not met after {timeout} s (last: {last!r})")


async def run_client(
    args: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a client program (Bruno, schemathesis) to its end without blocking the event loop,
    which serves the in-process app it talks to; its output as text."""
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(
        args, process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


@functools.cache
def openapi_schema() -> Any:
    """The OpenAPI document as schemathesis reads it, once per process."""
    import schemathesis  # heavy; only API tests need it

    return schemathesis.openapi.from_path(ROOT / "server" / "openapi.json")


def conforms_to_openapi(response: httpx.Response) -> None:
    """Raise unless the response is what the OpenAPI document says its route answers."""
    request = response.request
    operation = openapi_schema().find_operation_by_path(request.method, request.url.path)
    assert operation is not None, f"{request.method} {request.url.path} is not in the OpenAPI document"
    operation.validate_response(response)


async def outbound_messages_async(url: str) -> list:
    """`outbound_messages`, for a test whose event loop runs the server."""
    import nats
    from nats.js.errors import NotFoundError

    from contract.messaging import OUTBOUND_STREAM, OutboundMessage

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            state = (await js.stream_info(OUTBOUND_STREAM)).state
        except NotFoundError:
            return []
        found: list = []
        if not state.messages:
            return found  # an empty new stream says first 0, last 0, and 0 is no sequence
        for sequence in range(max(state.first_seq, 1), state.last_seq + 1):
            try:
                found.append(OutboundMessage.from_bytes((await js.get_msg(OUTBOUND_STREAM, sequence)).data))
            except NotFoundError:
                continue  # consumed and removed: the stream is a work queue
        return found
    finally:
        await nc.close()


def outbound_messages(nats_url: str) -> list:
    """What the server published on the outbound stream and no bot has taken yet."""
    return asyncio.run(outbound_messages_async(nats_url))


def inbound_waiting(nats_url: str) -> int:
    """Inbound messages not acknowledged yet (the inbound stream is a work queue)."""
    from contract.messaging import INBOUND_STREAM

    async def count() -> int:
        import nats

        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(INBOUND_STREAM)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


async def _jetstream_backlog(url: str) -> tuple[int, int, int]:
    """(inbound messages, inbound unacknowledged or undelivered, outbound messages)."""
    import nats
    from nats.js.errors import NotFoundError

    from contract.messaging import INBOUND_CONSUMER, INBOUND_STREAM, OUTBOUND_STREAM

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            inbound = (await js.stream_info(INBOUND_STREAM)).state.messages
            outbound = (await js.stream_info(OUTBOUND_STREAM)).state.messages
        except NotFoundError:
            return 0, 0, 0
        try:
            consumer = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
            waiting = consumer.num_pending + consumer.num_ack_pending
        except NotFoundError:
            waiting = inbound
        return inbound, waiting, outbound
    finally:
        await nc.close()


def settle(nats_url: str, observe: Callable[[], Any], quiet: float = 3.0, timeout: float = 100.0) -> Any:
    """Wait until JetStream holds nothing in flight and `observe()` stays the same for `quiet` s.

    Nothing in the inbound stream or its consumer (pending or unacknowledged),
    nothing left on the outbound stream (the bot took it all), and what the test
    counts unchanged over the interval: only then are `==` assertions fair.
    Returns the last `observe()`.
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = (asyncio.run(_jetstream_backlog(nats_url)), observe())
        if current != last:
            last, since = current, time.monotonic()
        elif current[0] == (0, 0, 0) and time.monotonic() - since >= quiet:
            return current[1]
        time.sleep(0.25)
    raise AssertionError(f"the system did not settle in {timeout} s (last: {last!r})")


def sigkill(server: Any) -> None:
    """End a devstack server (nats-server, SecantusDB) with SIGKILL: no shutdown, no flush.

    As a power cut or the OOM killer would; `server.start()` brings it back on the
    same port and data.
    """
    process = server.process
    if process is None:
        return
    process.kill()
    process.wait()
    server.process = None


def whole_records(truncated: bytes) -> list[dict]:
    """The records a JSON array cut short holds whole, read independently of the product's parsers:
    what an import that stopped at that byte has read (a record is whole at its closing brace)."""
    text, decoder, found = truncated.decode(errors="ignore"), json.JSONDecoder(), []
    at = text.index("[") + 1
    while True:
        while at < len(text) and text[at] in " \r\n\t,":
            at += 1
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return found
        found.append(record)


def failpoint_fired(log: Path, point: str) -> bool:
    """Whether the fail point `point` wrote its line to the log `log` (BALCAO_FAILPOINTS_LOG)."""
    return log.exists() and any(line.startswith(f"{point} ") for line in log.read_text().splitlines())


def upgrade_headers(**extra: str) -> dict[str, str]:
    """A WebSocket upgrade request's headers, to send with a plain HTTP client and read the refusal."""
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **extra,
    }
