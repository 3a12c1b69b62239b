"""HTTP latency is labelled by route name or pattern, never by raw path; /metrics serves it."""

from __future__ import annotations

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient
from tornado.web import Application, url

from devstack.processes import free_port
from runtime.httpserver import GuardedHTTPServer
from server.handlers import base, metrics
from server.handlers.base import JsonHandler
from server.problems import ApiError

HISTOGRAM = "balcao_http_request_duration_seconds"


class ThingHandler(JsonHandler):
    def get(self, thing_id: str) -> None:
        if thing_id == "0" * 24:
            raise ApiError(404, "no such thing", kind="not-found")
        self.write_json({"id": thing_id})


class PlainHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"ok": True})


@pytest_asyncio.fixture
async def api():
    app = Application(
        [
            url(r"/v1/things/([0-9a-f]{24})", ThingHandler, name="thing"),
            (r"/plain", PlainHandler),
            *metrics.default_handlers,
        ],
        default_handler_class=base.NotFoundHandler,
        log_function=metrics.log_request,
    )
    server = GuardedHTTPServer(app)
    port = free_port()
    server.listen(port, "127.0.0.1")
    client = AsyncHTTPClient(force_instance=True)

    async def fetch(path: str, method: str = "GET"):
        return await client.fetch(
            f"http://127.0.0.1:{port}{path}", method=method, raise_error=False, allow_nonstandard_methods=True
        )

    yield fetch
    client.close()
    server.stop()
    await server.close_all_connections()


def count(**labels: str) -> float:
    return REGISTRY.get_sample_value(f"{HISTOGRAM}_count", labels) or 0.0


@pytest.mark.asyncio
async def test_requests_are_counted_by_route_never_by_path(api) -> None:
    thing = {"method": "GET", "route": "thing"}
    before = {status: count(**thing, status=status) for status in ("200", "404")}
    plain_before = count(method="GET", route="/plain", status="200")
    unmatched_before = count(method="GET", route="unmatched", status="404")

    for n in range(1, 4):
        assert (await api(f"/v1/things/{n:024x}")).code == 200
    assert (await api(f"/v1/things/{0:024x}")).code == 404
    assert (await api("/plain")).code == 200
    assert (await api("/nothing/here")).code == 404

    assert count(**thing, status="200") == before["200"] + 3
    assert count(**thing, status="404") == before["404"] + 1
    assert count(method="GET", route="/plain", status="200") == plain_before + 1
    assert count(method="GET", route="unmatched", status="404") == unmatched_before + 1


@pytest.mark.asyncio
async def test_unknown_methods_do_not_mint_label_values(api) -> None:
    before = count(method="OTHER", route="/plain", status="405")
    assert (await api("/plain", method="BREW")).code == 405
    assert count(method="OTHER", route="/plain", status="405") == before + 1


@pytest.mark.asyncio
async def test_metrics_endpoint_serves_prometheus_text_without_auth(api) -> None:
    await api("/plain")
    response = await api("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(response.body.decode())}
    for name in (
        "balcao_http_request_duration_seconds",
        "balcao_intake_latency_seconds",
        "balcao_messages_stored",
        "balcao_outbound_published",
        "balcao_import_records",
    ):
        assert name in families, name
    routes = {sample.labels.get("route") for sample in families[HISTOGRAM].samples}
    assert not any("000000" in (route or "") for route in routes), routes
