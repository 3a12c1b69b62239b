"""Metrics and logs of the real processes: what /metrics counts, JSON lines, no token in logs."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import free_port
from tests.harness import BOT_TOKEN, eventually

REPLY = "Reply: mensagem recebida"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Sample name and sorted labels -> value."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def replies(telegram, chat_id: int) -> int:
    return sum(1 for m in telegram.sent(chat_id) if m["text"] == REPLY)


def test_server_and_bot_count_what_they_did(stack, telegram):
    stack.server()
    bot_metrics = free_port()
    stack.bot(BOT_METRICS_PORT=str(bot_metrics))
    telegram.add_fault(method="sendMessage", chat_id=9302, error_code=403, times=-1)
    for n in range(3):
        telegram.send_as_user(9301, f"contando {n}")
    telegram.send_as_user(9302, "bloqueado")
    eventually(lambda: replies(telegram, 9301) == 3, message="three replies")

    def server_replied() -> dict | None:
        found = scrape(f"{stack.api_url}/metrics")
        return found if found.get(("balcao_outbound_published_total", (("kind", "reply"),))) == 4 else None

    # The blocked chat's message may still be in flight when the others' replies arrive.
    eventually(server_replied, message="four replies published")
    httpx.get(f"{stack.api_url}/ready", timeout=10).raise_for_status()
    server = scrape(f"{stack.api_url}/metrics")
    assert server[("balcao_messages_stored_total", ())] == 4
    assert server[("balcao_outbound_published_total", (("kind", "reply"),))] == 4
    assert server[("balcao_intake_latency_seconds_count", ())] == 4
    assert server[("balcao_intake_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    ready = (("method", "GET"), ("route", "/ready"), ("status", "200"))
    assert server[("balcao_http_request_duration_seconds_count", ready)] == 1

    def bot() -> dict:
        found = scrape(f"http://127.0.0.1:{bot_metrics}/metrics")
        return found if found[("balcao_bot_outbound_parked_total", (("kind", "reply"),))] else None

    counted = eventually(bot, message="the blocked chat's reply parked")
    assert counted[("balcao_bot_inbound_relayed_total", ())] == 4
    assert counted[("balcao_bot_outbound_sent_total", (("kind", "reply"),))] == 3
    assert counted[("balcao_bot_outbound_failures_total", (("reason", "forbidden"),))] == 1
    assert counted[("balcao_bot_outbound_parked_total", (("kind", "reply"),))] == 1


def test_json_logs_at_debug_level_never_show_the_bot_token(stack, telegram):
    server = stack.server(LOG_FORMAT="json")
    bot = stack.bot(LOG_FORMAT="json", LOG_LEVEL="debug")
    telegram.add_fault(method="sendMessage", chat_id=9402, error_code=400, times=-1)
    telegram.send_as_user(9401, "olá")
    telegram.send_as_user(9402, "chat que some")
    eventually(lambda: replies(telegram, 9401), message="reply")
    eventually(lambda: "parked" in bot.log_text(), message="the failed send logged")
    httpx.get(f"{stack.api_url}/nowhere", timeout=10)
    assert server.stop() == 0 and bot.stop() == 0

    for process in (server, bot):
        lines = process.log_text().splitlines()
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    bot_log = bot.log_text()
    # Debug output is really on: PTB logs every Bot API call, URL included.
    assert "Calling Bot API endpoint `sendMessage`" in bot_log
    assert "Set Bot API URL" in bot_log
    assert BOT_TOKEN not in bot_log
    assert BOT_TOKEN.split(":")[1] not in bot_log
    assert '"logger": "tornado.access"' in server.log_text()
