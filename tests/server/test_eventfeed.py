"""The live feed's in-process pieces: subject filters as NATS reads them, frames built once."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from contract import eventstream
from server.eventfeed import LiveEvent, _matches

SESSION = "0123456789abcdef01234567"


@pytest.mark.parametrize(
    "kind, platform, session, subject, expected",
    [
        (None, None, None, eventstream.subject(eventstream.MESSAGE_SENT, "telegram", SESSION), True),
        (
            eventstream.MESSAGE_RECEIVED,
            None,
            None,
            eventstream.subject(eventstream.MESSAGE_RECEIVED, "telegram", SESSION),
            True,
        ),
        (
            eventstream.MESSAGE_RECEIVED,
            None,
            None,
            eventstream.subject(eventstream.MESSAGE_SENT, "telegram", SESSION),
            False,
        ),
        (None, "telegram", None, eventstream.subject(eventstream.IMPORT_FINISHED), False),  # platform "-"
        (None, None, SESSION, eventstream.subject(eventstream.SESSION_FINISHED, "telegram", SESSION), True),
        (None, None, SESSION, eventstream.subject(eventstream.SESSION_FINISHED, "telegram", "f" * 24), False),
        (eventstream.IMPORT_FINISHED, None, None, eventstream.subject(eventstream.IMPORT_FINISHED), True),
    ],
)
def test_a_filter_takes_the_events_its_nats_subject_filter_would(kind, platform, session, subject, expected):
    pattern = eventstream.filter_subject(kind, platform, session).split(".")
    assert _matches(pattern, subject.split(".")) is expected


def test_wildcards_follow_nats_rules():
    assert _matches(["a", ">"], ["a", "b", "c"])
    assert not _matches(["a", ">"], ["a"])
    assert not _matches(["a", "*"], ["a", "b", "c"])
    assert not _matches(["a", "*", "c"], ["a", "b"])


@pytest.mark.parametrize("size", [10, 125, 126, 65_535, 65_536, 200_000])
def test_a_shared_websocket_frame_reads_back_as_the_event(size):
    body = eventstream.to_bytes(eventstream.event(eventstream.IMPORT_FINISHED, padding="x" * size))
    event = LiveEvent(42, eventstream.subject(eventstream.IMPORT_FINISHED), body)
    reader = StreamReader()
    reader.feed_data(event.websocket_frame)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
        raise AssertionError("the frame is incomplete")
    except StopIteration as done:
        frame = done.value
    assert frame.opcode == Opcode.TEXT and frame.fin
    assert frame.data == event.data and event.data.startswith(b'{"id":42,')
