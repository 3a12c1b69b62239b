"""Attacks on the bot's webhook listener, sent to a real bot process in webhook mode.

The listener faces the internet as the API does: a caller without the secret
must not get its body read, a body may not pass 64 KiB, a slow body is cut
off, and one address cannot hold every connection.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx

from bot import webhook
from tests.e2e.test_webhook import HEADER, SECRET, start_webhook_bot, update
from tests.harness import eventually

KIB = 1024
PROBLEM = "https://balcao.dev/problems/"


def connect(port: int | None, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def post_head(path: str, length: int, secret: str | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {length}"]
    if secret is not None:
        lines.append(f"{HEADER}: {secret}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(sock: socket.socket, timeout: float) -> int | None:
    """The status of the response on `sock`, or None if none came (or the peer closed first)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (TimeoutError, ConnectionError):
        return None
    return int(data.split(b" ", 2)[1])


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed `sock` while a byte a second trickles in; None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(1.0)
    while time.monotonic() - start < seconds:
        try:
            sock.sendall(b"x")
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
    return None


def test_a_caller_without_the_secret_is_refused_before_its_body_is_read(stack):
    bot, url = start_webhook_bot(stack)
    port, path = urlsplit(url).port, urlsplit(url).path
    for secret in (None, "wrong", SECRET + "x"):
        sock = connect(port)
        try:
            sock.sendall(post_head(path, 1024 * KIB, secret))  # a megabyte announced, none of it sent
            assert status_of(sock, timeout=5) == 403, secret
        finally:
            sock.close()
    # Another method is Tornado's 405, with no body either (Telegram would run a JSON one).
    other = httpx.get(url, headers={HEADER: SECRET}, timeout=10)
    assert (other.status_code, other.content) == (405, b"")
    assert bot.running


def test_an_update_over_64_kib_is_refused_and_a_slow_one_cut_off(stack, mongo):
    bot, url = start_webhook_bot(stack)
    port, path = urlsplit(url).port, urlsplit(url).path
    padded = json.dumps(update(990101, 9701, "x" * (100 * KIB))).encode()
    sock = connect(port)
    try:
        sock.sendall(post_head(path, len(padded), SECRET) + padded)
        assert status_of(sock, timeout=10) == 413
    finally:
        sock.close()

    slow = connect(port)
    try:
        slow.sendall(post_head(path, 1000, SECRET))
        closed = closed_within(slow, webhook.BODY_TIMEOUT + 10)
    finally:
        slow.close()
    assert closed is not None and closed < webhook.BODY_TIMEOUT + 5, f"still open after {webhook.BODY_TIMEOUT + 10} s"
    time.sleep(1)
    assert mongo.messages.count_documents({}) == 0
    assert bot.running


def test_one_address_cannot_hold_every_webhook_connection(stack):
    bot, url = start_webhook_bot(stack)
    port, path = urlsplit(url).port, urlsplit(url).path
    extra = 10
    socks = [connect(port, "127.0.0.7") for _ in range(webhook.MAX_CONNECTIONS_PER_ADDRESS + extra)]
    try:
        refused = [status_of(sock, timeout=5) for sock in socks[-extra:]]
        assert refused == [429] * extra
        # Another address (Telegram's next connection) is still served: `{}` is no update.
        other = connect(port, "127.0.0.8")
        try:
            other.sendall(post_head(path, 2, SECRET) + b"{}")
            assert status_of(other, timeout=10) == 400
        finally:
            other.close()
    finally:
        for sock in socks:
            sock.close()
    eventually(lambda: bot.running, message="the bot still runs")
