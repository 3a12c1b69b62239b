"""The OpenAPI document against the code and against the live server.

The document in the repository is the contract: every /v1 route is in it and
everything in it is served, and a bounded schemathesis run against a real
server (real MongoDB-wire server and NATS) finds no 5xx and no answer that
breaks it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sysconfig
from pathlib import Path

from bson import ObjectId

from server import config
from server.app import Services, make_app
from tests.harness import API_TOKEN, ROOT, Process
from tests.server.factories import MessageFactory, SessionFactory, conversation

DOCUMENT = ROOT / "server" / "openapi.json"
# The ids the document gives as examples, so schemathesis also reaches the 2xx paths.
EXAMPLE_SESSION = ObjectId("65f1c0ffee00000000000001")
EXAMPLE_MESSAGE = ObjectId("65f1c0ffee00000000000002")
# Opaque cursors and the characters `q` takes cannot be written as JSON Schema,
# so a schema-valid value may rightly be refused: that one check does not apply.
NOT_APPLICABLE = "positive_data_acceptance"
# The operations this module answers for; uploads and imports are fuzzed beside
# their own tests, with data and time bounds of their own.
OPERATIONS = r"^/v1/(sessions|openapi\.json)"


def served_routes() -> set[tuple[str, str]]:
    """(path template, method) of every /v1 route of the application."""
    settings = config.load({"API_TOKEN": API_TOKEN, "MONGODB_URI": "mongodb://unused",
                            "NATS_URL": "nats://unused"})
    application = make_app(settings, Services(db=None, nats=None, js=None, outbound=None))
    routes = set()
    for rule in application.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern.removesuffix("$")
        if pattern.startswith("/v1/"):
            template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern)
            routes |= {(template, method.lower()) for method in rule.target.SUPPORTED_METHODS}
    return routes


def documented_routes() -> set[tuple[str, str]]:
    document = json.loads(DOCUMENT.read_text())
    assert document["openapi"] == "3.1.0"
    assert document["security"] == [{"bearer": []}]
    return {(path, method) for path, item in document["paths"].items() for method in item
            if method != "parameters"}


def test_everything_documented_is_served():
    assert documented_routes() <= served_routes()


def test_the_sessions_routes_are_documented():
    sessions_routes = {(path, method) for path, method in served_routes()
                       if path.startswith("/v1/sessions") or path == "/v1/openapi.json"}

    assert sessions_routes <= documented_routes()


def test_the_examples_in_the_document_are_the_ones_seeded_here():
    text = DOCUMENT.read_text()
    assert str(EXAMPLE_SESSION) in text and str(EXAMPLE_MESSAGE) in text


def test_schemathesis_finds_no_server_error_and_no_contract_violation(api, api_server: Process, tmp_path: Path):
    session, _ = conversation(["Olá", "Preciso de ajuda"], id=EXAMPLE_SESSION, contact_name="João Silva")
    MessageFactory.create(session=session, id=EXAMPLE_MESSAGE)
    SessionFactory.create_batch(5)
    SessionFactory.create(chat_id=None)
    schemathesis = Path(sysconfig.get_path("scripts")) / "schemathesis"

    run = subprocess.run(
        [str(schemathesis), "run", str(DOCUMENT), "--url", f"http://127.0.0.1:{api_server.port}",
         "--header", f"Authorization: Bearer {API_TOKEN}",
         "--include-path-regex", OPERATIONS, "--checks", "all", "--exclude-checks", NOT_APPLICABLE,
         "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "20", "--seed", "20240501",
         "--workers", "1", "--request-timeout", "10", "--no-color",
         "--report", "junit", "--report-junit-path", str(tmp_path / "schemathesis.junit.xml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
    )

    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    operations = {(path, method) for path, method in documented_routes() if re.match(OPERATIONS, path)}
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    assert tested and int(tested[1]) == len(operations), run.stdout[-3000:]
