"""Who may open the live event stream: the token checks before the WebSocket upgrade.

Only the HTTP exchange is under test, so the app serves the module in process
(the stream's contents are tested end to end in tests/e2e/test_events.py).
"""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.harness import API_TOKEN, upgrade_headers

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the tests share the module's in-process app


@pytest.mark.parametrize(
    "query, headers",
    [
        ("", {}),
        ("", {"Authorization": "Bearer wrong-token-0123456789"}),
        (f"token={API_TOKEN}", {}),
        (f"access_token={API_TOKEN}", {"Authorization": f"Bearer {API_TOKEN}"}),
        ("", {"Sec-WebSocket-Protocol": "balcao.v1, bearer.wrong-token-0123456789"}),
    ],
    ids=["no-token", "wrong-token", "query-token", "query-token-beside-header", "wrong-subprotocol-token"],
)
async def test_a_bad_or_misplaced_token_is_refused_before_the_upgrade(app_server, query, headers):
    async with httpx.AsyncClient(timeout=15) as client:
        response = await client.get(
            f"{app_server.url}/v1/events" + (f"?{query}" if query else ""), headers=upgrade_headers(**headers)
        )
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401
    if "token=" in query:
        assert "query string" in response.json()["detail"]


async def test_a_browser_authenticates_with_a_subprotocol_that_is_never_echoed(app_server):
    url = f"ws://127.0.0.1:{app_server.port}/v1/events"
    async with connect(url, subprotocols=["balcao.v1", f"bearer.{API_TOKEN}"], open_timeout=15) as ws:
        assert ws.subprotocol == "balcao.v1"
        assert API_TOKEN not in str(ws.response.headers)
