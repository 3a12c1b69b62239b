"""NATS_URL lists and NATS_REPLICAS: parsing, masking, and streams brought to the replication asked for."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from bot import config as bot_config
from contract.messaging import INBOUND_CONSUMER, INBOUND_STREAM, INBOUND_SUBJECT, OUTBOUND_STREAM
from devstack.cluster import NatsCluster
from runtime import jetstream, logs
from runtime.environment import ConfigError
from server import config as server_config

SERVER_ENV = {"API_TOKEN": "x" * 32, "MONGODB_URI": "mongodb://db/balcao"}


def test_nats_url_takes_the_members_of_a_cluster() -> None:
    urls = "nats://n1:4222, nats://n2:4222 ,tls://n3:4222"
    settings = server_config.load({**SERVER_ENV, "NATS_URL": urls, "NATS_REPLICAS": "3"})
    assert jetstream.split_urls(settings.nats_url) == ["nats://n1:4222", "nats://n2:4222", "tls://n3:4222"]
    assert settings.nats_replicas == 3
    assert bot_config.load({"TELEGRAM_BOT_TOKEN": "1:abc", "NATS_URL": urls}).nats_replicas == 1


def test_a_bad_member_is_named_by_position_without_echoing_the_value() -> None:
    with pytest.raises(ConfigError) as raised:
        server_config.load({**SERVER_ENV, "NATS_URL": "nats://a:4222,http://user:s3cretpw@b:4222"})
    assert "NATS_URL" in str(raised.value) and "entry 2" in str(raised.value)
    assert "s3cretpw" not in str(raised.value)


@pytest.mark.parametrize("value", ["0", "6", "three"])
def test_nats_replicas_is_one_to_five(value: str) -> None:
    with pytest.raises(ConfigError, match="NATS_REPLICAS"):
        server_config.load({**SERVER_ENV, "NATS_URL": "nats://n1:4222", "NATS_REPLICAS": value})


def test_credentials_of_every_member_are_masked() -> None:
    urls = "nats://alice:first-secret@n1:4222,nats://bob:second-secret@n2:4222,nats://token-abcdef@n3:4222"
    assert set(logs.url_credentials(urls)) == {"first-secret", "second-secret", "token-abcdef"}
    settings = server_config.load({**SERVER_ENV, "NATS_URL": urls})
    line = logs.formatter("text", settings.secrets).format(
        logging.LogRecord("t", logging.INFO, __file__, 1, "connecting to %s", (urls,), None)
    )
    assert not any(secret in line for secret in ("first-secret", "second-secret", "token-abcdef"))


def test_a_mongodb_host_list_is_one_url() -> None:
    assert logs.url_credentials("mongodb://u:pass-word@h1:27017,h2:27017/db?replicaSet=rs0") == ["pass-word"]


async def _inbound_with(url: str, replicas: int, messages: int) -> None:
    nc = await nats.connect(servers=jetstream.split_urls(url))
    js = nc.jetstream()
    await jetstream.ensure_streams(js, replicas=replicas)
    await js.add_consumer(
        INBOUND_STREAM,
        ConsumerConfig(durable_name=INBOUND_CONSUMER, ack_policy=AckPolicy.EXPLICIT, filter_subject=INBOUND_SUBJECT),
    )
    for n in range(messages):
        await js.publish(INBOUND_SUBJECT, f"m{n}".encode())
    await nc.close()


def test_more_replicas_than_servers_is_reported_naming_the_stream(clean_nats) -> None:
    async def ask() -> None:
        nc = await nats.connect(clean_nats.url)
        try:
            await jetstream.ensure_streams(nc.jetstream(), replicas=3)
        finally:
            await nc.close()

    with pytest.raises(jetstream.ReplicationError, match=r"cannot create stream BALCAO_INBOUND with 3 replica"):
        asyncio.run(ask())


def test_an_existing_stream_that_cannot_grow_is_reported(clean_nats) -> None:
    asyncio.run(_inbound_with(clean_nats.url, 1, 2))

    async def grow() -> None:
        nc = await nats.connect(clean_nats.url)
        try:
            await jetstream.ensure_replicas(nc.jetstream(), INBOUND_STREAM, 3)
        finally:
            await nc.close()

    refused = r"BALCAO_INBOUND has 1 replica\(s\) and cannot be changed to 3"
    with pytest.raises(jetstream.ReplicationError, match=refused):
        asyncio.run(grow())


def test_streams_and_consumers_grow_to_three_replicas_with_their_data(tmp_path: Path) -> None:
    cluster = NatsCluster(data_dir=tmp_path / "nats", log_dir=tmp_path)
    cluster.start()
    try:
        asyncio.run(_inbound_with(cluster.urls, 1, 5))

        async def grow_and_look() -> tuple:
            nc = await nats.connect(servers=jetstream.split_urls(cluster.urls))
            js = nc.jetstream()
            try:
                await jetstream.ensure_streams(js, replicas=3)  # as a restart with NATS_REPLICAS=3 does
                inbound = await js.stream_info(INBOUND_STREAM)
                outbound = await js.stream_info(OUTBOUND_STREAM)
                consumer = await js.consumer_info(INBOUND_STREAM, INBOUND_CONSUMER)
                await jetstream.ensure_streams(js, replicas=3)  # and again: nothing to change
                return (
                    inbound.config.num_replicas,
                    inbound.state.messages,
                    outbound.config.num_replicas,
                    consumer.config.num_replicas,
                    consumer.num_pending,
                )
            finally:
                await nc.close()

        assert asyncio.run(grow_and_look()) == (3, 5, 3, 3, 5)
    finally:
        cluster.stop()


def test_split_urls_drops_blanks() -> None:
    assert jetstream.split_urls("nats://a:1,, nats://b:2 ,") == ["nats://a:1", "nats://b:2"]
    assert dataclasses.is_dataclass(jetstream.STREAMS[0])
