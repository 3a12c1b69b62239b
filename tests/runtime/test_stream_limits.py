"""Stream limits from the settings reach JetStream, also on streams that exist (real nats-server)."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError
from prometheus_client import REGISTRY

from contract import messaging
from devstack.processes import NatsServer
from runtime import jetstream
from server import streams

LIMITS = jetstream.StreamLimits(max_bytes=64 * 1024, max_age=3600)


async def _limits(js, name: str) -> tuple[int, float]:
    config = (await js.stream_info(name)).config
    return config.max_bytes, config.max_age


@pytest.mark.asyncio
async def test_new_streams_get_the_configured_limits(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, LIMITS)
    assert await _limits(js, messaging.INBOUND_STREAM) == (64 * 1024, 3600)
    assert await _limits(js, messaging.OUTBOUND_STREAM) == (64 * 1024, 3600)
    # The parked stream keeps its own month; the byte cap applies to it too.
    assert await _limits(js, messaging.PARKED_STREAM) == (64 * 1024, 30 * 24 * 3600)
    await nc.close()


@pytest.mark.asyncio
async def test_existing_streams_are_updated_without_losing_messages(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)  # as released before: no caps
    assert (await _limits(js, messaging.INBOUND_STREAM))[0] == -1
    for n in range(5):
        await js.publish(messaging.INBOUND_SUBJECT, f"kept {n}".encode())

    await jetstream.ensure_streams(js, LIMITS)  # the next start-up, with the settings

    assert await _limits(js, messaging.INBOUND_STREAM) == (64 * 1024, 3600)
    kept = [(await js.get_msg(messaging.INBOUND_STREAM, seq)).data for seq in range(1, 6)]
    assert kept == [f"kept {n}".encode() for n in range(5)]
    # A third start-up with the same settings changes nothing and raises nothing.
    await jetstream.ensure_streams(js, LIMITS)
    assert (await js.stream_info(messaging.INBOUND_STREAM)).state.messages == 5
    await nc.close()


@pytest.mark.asyncio
async def test_a_process_that_does_not_administer_the_streams_leaves_existing_ones_alone(clean_nats) -> None:
    """The bot creates what is missing and changes nothing else: its NATS user may not."""
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, LIMITS)  # the server, first
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=128 * 1024), administer=False)
    assert await _limits(js, messaging.INBOUND_STREAM) == (64 * 1024, 3600)
    await js.delete_stream(messaging.PARKED_STREAM)
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=128 * 1024), administer=False)
    assert (await _limits(js, messaging.PARKED_STREAM))[0] == 128 * 1024  # missing: created
    await nc.close()


@pytest.mark.asyncio
async def test_a_cap_below_what_is_stored_is_not_applied(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js)
    for _ in range(4):
        await js.publish(messaging.INBOUND_SUBJECT, b"x" * 1000)
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=2000))
    info = await js.stream_info(messaging.INBOUND_STREAM)
    # Lowering it now would make JetStream delete the oldest messages.
    assert (info.config.max_bytes, info.state.messages) == (-1, 4)
    await nc.close()


@pytest.mark.asyncio
async def test_a_full_work_queue_refuses_new_messages(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=4096))
    with pytest.raises(APIError, match="maximum bytes"):
        for _ in range(10):
            await js.publish(messaging.INBOUND_SUBJECT, b"x" * 1000)
    assert (await js.stream_info(messaging.INBOUND_STREAM)).state.messages < 10
    await nc.close()


@pytest.mark.asyncio
async def test_operator_settings_other_than_the_limits_are_kept(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    tuned = StreamConfig(
        name=messaging.OUTBOUND_STREAM,
        subjects=[messaging.OUTBOUND_SUBJECT],
        retention="workqueue",
        storage="file",
        duplicate_window=60,
        description="tuned by hand",
    )
    await js.add_stream(config=tuned)
    await jetstream.ensure_streams(js, LIMITS)
    config = (await js.stream_info(messaging.OUTBOUND_STREAM)).config
    assert (config.description, config.duplicate_window) == ("tuned by hand", 60)
    assert (config.max_bytes, config.max_age) == (64 * 1024, 3600)
    await nc.close()


@pytest.mark.asyncio
async def test_stream_fill_is_read_into_the_gauges(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=100_000))
    for _ in range(10):
        await js.publish(messaging.PARKED_SUBJECT, b"p" * 1000)
    stored = (await js.stream_info(messaging.PARKED_STREAM)).state.bytes

    await streams.observe(js)

    def sample(name: str, stream: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"stream": stream})

    assert sample("balcao_stream_messages", messaging.PARKED_STREAM) == 10
    assert sample("balcao_stream_bytes", messaging.PARKED_STREAM) == stored
    assert sample("balcao_stream_fill_ratio", messaging.PARKED_STREAM) == pytest.approx(stored / 100_000)
    assert stored > 10_000  # the ratio is not trivially zero
    assert sample("balcao_stream_bytes", messaging.INBOUND_STREAM) == 0
    await nc.close()


@pytest.mark.asyncio
async def test_caps_the_store_cannot_reserve_are_refused_by_name(tmp_path, caplog) -> None:
    config = tmp_path / "small.conf"
    config.write_text("jetstream { max_file_store: 2MB }\n")
    small = NatsServer(data_dir=tmp_path / "nats", config_file=config)
    small.start()
    try:
        nc = await nats.connect(small.url)
        # nats-server reserves each stream's max_bytes up front: the second 1 MiB cap does not fit.
        with pytest.raises(APIError):
            await jetstream.ensure_streams(nc.jetstream(), jetstream.StreamLimits(max_bytes=1024 * 1024))
        await nc.close()
    finally:
        small.stop()
    refused = [r.getMessage() for r in caplog.records if "cannot be created" in r.getMessage()]
    assert refused and "max_bytes=1048576" in refused[0] and "insufficient storage" in refused[0].lower()


@pytest.mark.asyncio
async def test_the_event_stream_is_brought_to_new_limits(clean_nats) -> None:
    """EVENTS_MAX_AGE_SECONDS and EVENTS_MAX_BYTES changed between two start-ups take effect,
    a smaller cap too (events are a window: the oldest go first)."""
    from contract import eventstream as contract_events
    from server import eventpublishing

    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await eventpublishing.ensure_stream(js, max_age=7 * 24 * 3600, max_bytes=64 * 1024 * 1024)
    for n in range(20):
        await js.publish(contract_events.subject("session.opened", "telegram", str(n)), b"e" * 1000)

    await eventpublishing.ensure_stream(js, max_age=3600, max_bytes=8 * 1024)  # the next start-up

    info = await js.stream_info(contract_events.EVENTS_STREAM)
    assert (info.config.max_age, info.config.max_bytes) == (3600, 8 * 1024)
    assert info.state.bytes <= 8 * 1024 and info.state.last_seq == 20  # cut to the cap, the newest kept
    await nc.close()


@pytest.mark.parametrize(("spare", "created"), [(0, True), (-1, False)])
@pytest.mark.asyncio
async def test_the_streams_reserve_four_stream_caps_and_the_event_cap(tmp_path, spare, created) -> None:
    """What docs/operations.md tells operators to leave free: the four capped streams (inbound,
    outbound, parked, dead letters) at STREAM_MAX_BYTES each, and the events at
    EVENTS_MAX_BYTES; the delivered-key bucket has no cap and reserves nothing."""
    from bot.delivery import delivered_bucket
    from server import eventpublishing

    cap, events_cap = 1024 * 1024, 2 * 1024 * 1024
    config = tmp_path / "store.conf"
    config.write_text(f"jetstream {{ max_file_store: {4 * cap + events_cap + spare} }}\n")
    store = NatsServer(data_dir=tmp_path / "nats", config_file=config)
    store.start()
    try:
        nc = await nats.connect(store.url)
        js = nc.jetstream()
        await jetstream.ensure_streams(js, jetstream.StreamLimits(max_bytes=cap))
        await delivered_bucket(js)
        if created:
            await eventpublishing.ensure_stream(js, max_age=3600, max_bytes=events_cap)
        else:
            with pytest.raises(APIError, match="insufficient storage"):
                await eventpublishing.ensure_stream(js, max_age=3600, max_bytes=events_cap)
        await nc.close()
    finally:
        store.stop()


@pytest.mark.asyncio
async def test_a_parked_stream_declared_before_per_chat_subjects_gets_them(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await js.add_stream(name=messaging.PARKED_STREAM, subjects=[messaging.PARKED_SUBJECT], max_age=30 * 24 * 3600)
    await js.publish(messaging.PARKED_SUBJECT, b"parked before")

    await jetstream.ensure_streams(js, LIMITS)

    info = await js.stream_info(messaging.PARKED_STREAM)
    assert info.config.subjects == [messaging.PARKED_SUBJECT, f"{messaging.PARKED_SUBJECT}.>"]
    await js.publish(messaging.parked_subject("8104"), b"parked now")
    assert (await js.stream_info(messaging.PARKED_STREAM)).state.messages == 2
    await nc.close()


@pytest.mark.asyncio
async def test_parked_and_dead_letter_ages_come_from_the_settings(clean_nats) -> None:
    nc = await nats.connect(clean_nats.url)
    js = nc.jetstream()
    await jetstream.ensure_streams(js, jetstream.StreamLimits(max_age=3600))
    assert (await _limits(js, messaging.DEAD_STREAM))[1] == messaging.DEAD_LETTER_MAX_AGE_SECONDS

    await jetstream.ensure_streams(
        js, jetstream.StreamLimits(max_age=3600, parked_max_age=7200, dead_letter_max_age=10800)
    )

    assert (await _limits(js, messaging.PARKED_STREAM))[1] == 7200
    assert (await _limits(js, messaging.DEAD_STREAM))[1] == 10800
    assert (await _limits(js, messaging.INBOUND_STREAM))[1] == 3600
    await nc.close()
