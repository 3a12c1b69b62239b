"""The feed reads a network chunk in slices and lets the event loop run between them.

Parsing runs on the server's event loop: a 64 KiB chunk of tiny JSON values is
tens of thousands of parser events, and other requests (`/ready` among them)
must not wait for all of them.
"""

from __future__ import annotations

import asyncio

import pytest

from server.importing.feed import FEED_SLICE, RecordFeed
from server.importing.parsers import ParsedRecord, open_parser

CHUNK = 64 * 1024


class CountingParser:
    """A real JSON parser that remembers the size of each piece it was fed."""

    def __init__(self) -> None:
        self.parser = open_parser("json")
        self.pieces: list[int] = []

    def feed(self, chunk: bytes) -> list[ParsedRecord]:
        self.pieces.append(len(chunk))
        return self.parser.feed(chunk)

    def close(self) -> list[ParsedRecord]:
        return self.parser.close()


def hostile_chunk() -> bytes:
    """The first 64 KiB of a session whose messages are a long list of empty objects."""
    head = b'[{"name": "Bia", "messages": ['
    return head + b"{}," * ((CHUNK - len(head)) // 3)


@pytest.mark.asyncio
async def test_a_chunk_is_parsed_in_slices_with_the_loop_free_between_them() -> None:
    parser = CountingParser()
    feed = RecordFeed(None, parser)  # type: ignore[arg-type]  # no record ends: nothing is written
    chunk = hostile_chunk()
    ticks = 0
    feeding = True

    async def other_requests() -> None:
        nonlocal ticks
        while feeding:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_requests())
    await asyncio.sleep(0)
    before = ticks
    await feed.feed(chunk)
    during = ticks - before
    feeding = False
    await ticker

    assert sum(parser.pieces) == len(chunk)
    assert max(parser.pieces) == FEED_SLICE and len(parser.pieces) == -(-len(chunk) // FEED_SLICE)
    # The loop ran other work between every two slices, not only after the chunk.
    assert during >= len(parser.pieces) - 1
    assert feed.failure is None


@pytest.mark.asyncio
async def test_a_file_that_breaks_in_a_slice_is_not_read_past_it() -> None:
    parser = CountingParser()
    feed = RecordFeed(None, parser)  # type: ignore[arg-type]
    broken = b"[" + b"x" * (3 * FEED_SLICE)

    await feed.feed(broken)

    assert feed.failure is not None
    assert parser.pieces == [FEED_SLICE]
