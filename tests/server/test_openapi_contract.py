"""The OpenAPI document against the code and against the live server.

The document in the repository is the contract: every /v1 route is in it and
everything in it is served, and a bounded schemathesis run against the app
(served in process, on the real MongoDB-wire server and NATS) finds no 5xx
and no answer that breaks it.
"""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import pytest
from bson import ObjectId
from nats.aio.client import Client

from devstack.processes import unmeasured_environ
from server import config
from server.app import Services, make_app
from server.database import Database
from tests.harness import API_TOKEN, ROOT, run_client
from tests.server.factories import MessageFactory, SessionFactory, conversation

DOCUMENT = ROOT / "server" / "openapi.json"
# The ids the document gives as examples, so schemathesis also reaches the 2xx paths.
EXAMPLE_SESSION = ObjectId("65f1c0ffee00000000000001")
EXAMPLE_MESSAGE = ObjectId("65f1c0ffee00000000000002")
HOOKS = "tests.server.schemathesis_hooks"
# Every check, in every generation mode, on every operation. The full run
# (40 examples per operation, seed 7) takes many minutes on a busy machine; the
# suite's run uses fewer examples. The coverage phase's edge cases (empty,
# longest, wrong type, each constraint broken) do not depend on the count.
EXAMPLES = 5
SEED = 7


def served_routes() -> set[tuple[str, str]]:
    """(path template, method) of every /v1 route of the application."""
    settings = config.load({"API_TOKEN": API_TOKEN, "MONGODB_URI": "mongodb://unused", "NATS_URL": "nats://unused"})
    # Neither is connected: building the routes uses neither.
    application = make_app(Services.build(settings, Database(settings.mongodb_uri), Client()))
    routes = set()
    for rule in application.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern.removesuffix("$")
        if pattern.startswith("/v1/"):
            template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
            routes |= {(template, method.lower()) for method in rule.target.SUPPORTED_METHODS}
    return routes


EVENTS_PATH = "/v1/events"


def documented_routes() -> set[tuple[str, str]]:
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"] == "3.1.0"
    assert document["security"] == [{"bearer": []}]
    return {(path, method) for path, item in document["paths"].items() for method in item if method != "parameters"}


def test_everything_documented_is_served():
    assert documented_routes() <= served_routes()


def test_every_route_is_documented():
    assert served_routes() <= documented_routes()


def test_the_examples_in_the_document_are_the_ones_seeded_here():
    text = DOCUMENT.read_text()
    assert str(EXAMPLE_SESSION) in text and str(EXAMPLE_MESSAGE) in text


# Some 600 requests, each a round trip to SecantusDB: about two minutes on two busy cores.
@pytest.mark.timeout(420)
@pytest.mark.asyncio(loop_scope="module")
async def test_schemathesis_finds_no_server_error_and_no_contract_violation(api, tmp_path: Path):
    """Every check on (the schema is exact enough for positive_data_acceptance too), every operation."""
    session, _ = conversation(["Olá", "Preciso de ajuda"], id=EXAMPLE_SESSION, contact_name="João Silva")
    MessageFactory.create(session=session, id=EXAMPLE_MESSAGE)
    SessionFactory.create_batch(5)
    SessionFactory.create(chat_id=None)
    schemathesis = Path(sysconfig.get_path("scripts")) / "schemathesis"

    run = await run_client(
        [
            str(schemathesis),
            "run",
            str(DOCUMENT),
            "--url",
            api.base_url,
            "--header",
            f"Authorization: Bearer {API_TOKEN}",
            "--checks",
            "all",
            "--mode",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            # A stream, not a request and answer: a WebSocket upgrade (which the
            # fuzzer cannot make) or an SSE stream that never ends. Its refusals
            # are fuzzed by the no-token tests; its behaviour by tests/e2e/test_events.py.
            "--exclude-path",
            EVENTS_PATH,
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(tmp_path / "schemathesis.junit.xml"),
        ],
        cwd=tmp_path,
        timeout=600,
        # The fuzzer is not the product: a measured run (coverage's subprocess
        # patch) would only trace its generator and slow every request it makes.
        env=unmeasured_environ(
            SCHEMATHESIS_HOOKS=HOOKS,
            PYTHONPATH=str(ROOT),
            BALCAO_CONTRACT_URL=api.base_url,
            BALCAO_CONTRACT_TOKEN=API_TOKEN,
        ),
    )

    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    fuzzed = {route for route in documented_routes() if route[0] != EVENTS_PATH}
    assert tested and int(tested[1]) == len(fuzzed), run.stdout[-3000:]
