"""Who may open the live event stream: the token checks before the WebSocket upgrade.

Only the HTTP exchange is under test, so one server serves the module (the
stream's contents are tested end to end in tests/e2e/test_events.py).
"""

from __future__ import annotations

import httpx
import pytest
from websockets.sync.client import connect

from tests.harness import API_TOKEN, upgrade_headers


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
def test_a_bad_or_misplaced_token_is_refused_before_the_upgrade(api_server, query, headers):
    response = httpx.get(
        f"http://127.0.0.1:{api_server.port}/v1/events" + (f"?{query}" if query else ""),
        headers=upgrade_headers(**headers),
        timeout=15,
    )
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["status"] == 401
    if "token=" in query:
        assert "query string" in response.json()["detail"]


def test_a_browser_authenticates_with_a_subprotocol_that_is_never_echoed(api_server):
    url = f"ws://127.0.0.1:{api_server.port}/v1/events"
    with connect(url, subprotocols=["balcao.v1", f"bearer.{API_TOKEN}"], open_timeout=15) as ws:
        assert ws.subprotocol == "balcao.v1"
        assert API_TOKEN not in str(ws.response.headers)
