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


def test_a_file_message_round_trips_with_its_file_and_an_edit_has_its_own_dedup_id():
    from contract.messaging import InboundFile

    kept = InboundFile(name="fatura.pdf", mime_type="application/pdf", size=1234, object_name="telegram/42/7")
    message = inbound(kind="document", file=kept, text="")
    assert InboundMessage.from_bytes(message.to_bytes()) == message
    place = inbound(kind="location", location={"latitude": -23.5, "longitude": -46.6})
    assert InboundMessage.from_bytes(place.to_bytes()) == place
    edit = inbound(edited_at="2026-01-02T03:05:00+00:00", edit_update_id=99)
    assert edit.is_edit and edit.dedup_id == "telegram:42:7:edit:99" != inbound().dedup_id
    assert InboundMessage.from_bytes(edit.to_bytes()) == edit


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"kind": "poll"}, "kind must be one of"),
        ({"file": {"name": "x" * 256, "mime_type": "a/b", "size": 1}}, "file name is 256 characters long"),
        ({"file": {"name": "a", "mime_type": "a/" + "b" * 200, "size": 1}}, "file mime_type is 202"),
        ({"file": {"name": "a", "mime_type": "a/b", "size": -1}}, "file size must be"),
        ({"file": {"name": "a", "mime_type": "a/b", "size": 1, "available": "yes"}}, "available must be"),
        ({"file": "telegram/1/2"}, "file must be an object"),
        ({"location": {"latitude": 91, "longitude": 0}}, "latitude must be a number"),
        ({"contact": {"phone_number": "1" * 33}}, "phone_number is 33 characters"),
        ({"contact": {"user_id": "abc"}}, "user_id must be a string of"),
        ({"edit_update_id": "1"}, "edit_update_id must be a whole number"),
    ],
)
def test_every_new_field_is_bounded(changes, problem):
    body = {**json.loads(inbound().to_bytes()), **changes}
    with pytest.raises(PayloadError, match=problem):
        InboundMessage.from_bytes(json.dumps(body).encode())


def test_the_wire_form_holds_every_field_nested_files_included():
    from dataclasses import asdict

    from contract.messaging import InboundFile, OutboundFile

    kept = InboundFile(name="fatura.pdf", mime_type="application/pdf", size=1234, object_name="telegram/42/7")
    card = {"phone_number": "+55 11", "first_name": "Ana", "last_name": "", "user_id": "9"}
    payloads = [
        inbound(kind="document", file=kept, text="a fatura"),
        inbound(kind="contact", contact=card),
        inbound(edited_at="2026-01-02T03:05:00+00:00", edit_update_id=99),
        OutboundMessage(
            key="agent:1",
            chat_id="42",
            text="segue",
            kind="agent",
            meta={"session_id": "s", "nested": {"list": [1, "dois"]}},
            file=OutboundFile(object_name="files/1", name="a.png", mime_type="image/png", size=3, send_as="photo"),
        ),
    ]
    for payload in payloads:
        assert json.loads(payload.to_bytes()) == asdict(payload)
