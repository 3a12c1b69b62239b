"""The write concern the compose files state is the one the real server writes with.

podman-compose.yml (and the cluster file) give the server a `MONGODB_URI` that asks
for `w: majority, j: true`. Here a real server process gets that URI's options,
pointed at the test's MongoDB-wire server through a recorder that reads every
command on the wire: each write the intake, the outbox and a finish make must
carry exactly that write concern.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import bson
import pytest
import yaml

from tests.harness import ROOT, ApiClient, eventually

REPLY = "Reply: mensagem recebida"
WRITES = {"insert", "update", "delete", "findAndModify"}
OP_MSG = 2013


def compose_uri_options(path: str) -> str:
    """The query string of the server's MONGODB_URI in a compose file."""
    spec = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    server = spec["services"].get("server") or spec["services"]["server1"]
    return urlsplit(server["environment"]["MONGODB_URI"]).query


class WireRecorder:
    """A TCP relay in front of a MongoDB-wire server that keeps each OP_MSG command document sent to it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.commands: list[dict] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        pending = b""
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
                if record:
                    pending = self._read_messages(pending + chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def _read_messages(self, data: bytes) -> bytes:
        """Record each whole message in `data`; what is left of a message still arriving."""
        while len(data) >= 16:
            length, _, _, opcode = struct.unpack_from("<iiii", data)
            if len(data) < length:
                break
            if opcode == OP_MSG and data[20] == 0:  # flag bits, then the body section (kind 0)
                size = struct.unpack_from("<i", data, 21)[0]
                self.commands.append(bson.decode(data[21 : 21 + size]))
            data = data[length:]
        return data

    def writes(self) -> list[dict]:
        return [command for command in list(self.commands) if WRITES & command.keys()]

    def close(self) -> None:
        self._closing = True
        self._listener.close()


@pytest.fixture
def recorder(mongodb_uri: str) -> Iterator[WireRecorder]:
    if "," in urlsplit(mongodb_uri).netloc:
        pytest.fail("the recorder relays one MongoDB server; MONGODB_URI names several")
    parts = urlsplit(mongodb_uri)
    running = WireRecorder((parts.hostname or "127.0.0.1", parts.port or 27017))
    yield running
    running.close()


@pytest.mark.parametrize("compose_file", ["podman-compose.yml", "podman-compose.cluster.yml"])
def test_the_server_writes_with_the_write_concern_compose_states(stack, telegram, mongodb_uri, recorder, compose_file):
    options = compose_uri_options(compose_file)
    assert dict(parse_qsl(options))["w"] == "majority" and dict(parse_qsl(options))["journal"] == "true"
    # Only the write options travel: the cluster's replicaSet names a set the test server is not.
    # directConnection: the driver must stay on the recorder, not move to the address
    # the server advertises.
    kept = "&".join(f"{key}={value}" for key, value in parse_qsl(options) if key in {"w", "journal"})
    kept += "&directConnection=true"
    parts = urlsplit(mongodb_uri)
    uri = urlunsplit(parts._replace(netloc=f"127.0.0.1:{recorder.port}", query=kept))
    stack.server(MONGODB_URI=uri)
    stack.bot()

    telegram.send_as_user(8101, "Olá", first_name="Rita")
    eventually(lambda: any(m["text"] == REPLY for m in telegram.sent(8101)), timeout=30, message="reply")
    api = ApiClient(stack.api_url)
    try:
        session = api.get("sessions").json()["items"][0]
        assert api.delete(f"sessions/{session['id']}").status_code == 204
    finally:
        api.close()
    eventually(lambda: len(telegram.sent(8101)) == 2, timeout=30, message="goodbye")

    writes = recorder.writes()
    kinds = {next(iter(WRITES & command.keys())) for command in writes}
    assert {"insert", "update", "delete"} <= kinds, kinds  # intake, counts, outbox, finish
    for command in writes:
        assert command.get("writeConcern") == {"w": "majority", "j": True}, command
