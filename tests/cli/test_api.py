"""The CLI's API client: what it retries, how long it waits, and the errors users see."""

from __future__ import annotations

import httpx
import pytest

from cli.api import ApiClient, ApiFailure, UserError


def client(*answers: httpx.Response | Exception, retries: int = 3) -> tuple[ApiClient, list[float], list]:
    pending = list(answers)
    sent: list[httpx.Request] = []
    waits: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    api = ApiClient(
        "http://api.test/", " token ", retries=retries, sleep=waits.append, transport=httpx.MockTransport(handle)
    )
    return api, waits, sent


def problem(status: int, detail: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"type": "x", "title": "t", "status": status, "detail": detail}, headers=headers)


def test_transient_failures_are_retried_with_growing_waits():
    api, waits, sent = client(
        httpx.Response(200),
        problem(503, "busy"),
        httpx.ReadTimeout("slow"),
        problem(502, "gateway"),
        httpx.Response(200, json={"ok": True}),
    )
    api.request("GET", "/v1/imports/x")  # the server has answered once: it exists

    assert api.request("PUT", "/v1/imports/x/chunks/0").json() == {"ok": True}
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2]
    assert sent[0].headers["Authorization"] == "Bearer token"


def test_retry_after_is_honoured():
    api, waits, _ = client(problem(429, "slow down", **{"Retry-After": "7"}), httpx.Response(200))

    api.request("GET", "/v1/sessions")

    assert 7 <= waits[0] <= 7 * 1.25


def test_giving_up_after_the_retries_says_what_failed():
    api, waits, _ = client(*[problem(503, "busy")] * 3, retries=2)

    with pytest.raises(ApiFailure, match="failed 3 times, last with HTTP 503"):
        api.request("GET", "/v1/sessions")
    assert len(waits) == 2


def test_a_server_lost_mid_request_is_waited_for_when_it_refuses_connections_while_restarting():
    """It stored the request and died answering: the retry must not take it for a wrong URL."""
    api, waits, sent = client(
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("refused"),
        httpx.Response(201, json={"id": "x"}),
    )

    assert api.request("POST", "/v1/imports", ok=(201,)).json() == {"id": "x"}
    assert len(sent) == 3 and len(waits) == 2


def test_an_unreachable_server_at_the_start_is_the_users_to_fix():
    api, waits, _ = client(httpx.ConnectError("refused"))

    with pytest.raises(UserError, match="cannot reach the API at http://api.test") as raised:
        api.request("GET", "/v1/sessions")
    assert raised.value.exit_code == 2 and waits == []


def test_a_refused_token_and_bad_input_exit_2_with_the_servers_words():
    api, _, _ = client(problem(401, "no"), problem(400, "channel 'x': expected @name"), problem(409, "ended"))

    with pytest.raises(UserError, match="refused the token"):
        api.request("GET", "/v1/sessions")
    with pytest.raises(UserError, match="expected @name"):
        api.request("POST", "/v1/imports")
    with pytest.raises(ApiFailure, match="HTTP 409: ended") as raised:
        api.request("POST", "/v1/imports/x/complete")
    assert raised.value.exit_code == 1 and raised.value.problem["detail"] == "ended"


def test_a_server_error_is_not_retried():
    # A record the server cannot handle answers 500 every time: retrying, then resuming, looped for ever.
    api, waits, sent = client(problem(500, "bug"), httpx.Response(200))

    with pytest.raises(ApiFailure, match="HTTP 500: bug"):
        api.request("PUT", "/v1/imports/x/chunks/0")
    assert waits == [] and len(sent) == 1
