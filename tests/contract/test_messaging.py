"""The payloads on the wire: round trips, de-duplication ids, malformed input."""

import json

import pytest

from contract.messaging import InboundMessage, OutboundMessage, PayloadError


def inbound(**changes) -> InboundMessage:
    fields = dict(
        platform="telegram",
        contact_identifier="42",
        chat_id=42,
        message_id=7,
        name="João Silva",
        text="Olá",
        sent_at="2026-01-02T03:04:05+00:00",
    )
    return InboundMessage(**{**fields, **changes})


def test_inbound_round_trip_keeps_accents_and_fields():
    message = inbound()
    data = message.to_bytes()
    assert "João".encode() in data  # not \\u-escaped: readable in `nats stream view`
    assert InboundMessage.from_bytes(data) == message


def test_dedup_id_depends_on_chat_and_message_only():
    assert inbound().dedup_id == "telegram:42:7"
    assert inbound(text="other").dedup_id == inbound().dedup_id
    assert inbound(message_id=8).dedup_id != inbound().dedup_id


def test_outbound_round_trip_and_defaults():
    message = OutboundMessage(key="goodbye:1", chat_id="@suporte", text="Fim", kind="goodbye", meta={"a": "b"})
    assert OutboundMessage.from_bytes(message.to_bytes()) == message
    minimal = OutboundMessage.from_bytes(b'{"key": "k", "chat_id": -100123, "text": "t"}')
    assert (minimal.chat_id, minimal.kind, minimal.meta) == ("-100123", "reply", {})


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({"platform": "telegram"}).encode(), "lacks contact_identifier, chat_id, message_id, text"),
        (
            json.dumps(
                {"platform": "t", "contact_identifier": "1", "chat_id": "x", "message_id": 1, "text": "a"}
            ).encode(),
            "bad field",
        ),
    ],
)
def test_malformed_inbound_payloads_are_rejected(data, problem):
    with pytest.raises(PayloadError, match=problem):
        InboundMessage.from_bytes(data)


def test_outbound_meta_must_be_an_object():
    with pytest.raises(PayloadError, match="meta"):
        OutboundMessage.from_bytes(b'{"key": "k", "chat_id": "1", "text": "t", "meta": [1]}')
