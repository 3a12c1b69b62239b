"""The Bruno collection in bruno/, run with the Bruno CLI against the app served in process.

`make install` puts the pinned `@usebruno/cli` under .tools/bruno; the run fails
when any request's assertion or test fails.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.harness import API_TOKEN, ROOT, run_client
from tests.server.factories import SessionFactory, conversation, now

BRU = ROOT / ".tools" / "bruno" / "node_modules" / ".bin" / "bru"
COLLECTION = ROOT / "bruno"


@pytest.mark.asyncio(loop_scope="module")
async def test_the_bruno_collection_passes_against_a_live_server(api, tmp_path: Path):
    assert BRU.exists(), f"{BRU} is missing: run `make install` (it installs the Bruno CLI with npm)"
    conversation(["Olá, boa tarde", "Meu pedido não chegou"], contact_name="João Silva", start=now())
    for _ in range(3):
        SessionFactory.create(last_message_at=now().replace(year=2024))
    report = tmp_path / "bruno.junit.xml"

    run = await run_client(
        [
            str(BRU),
            "run",
            "--env",
            "local",
            "--env-var",
            f"baseUrl={api.base_url}",
            "--env-var",
            f"token={API_TOKEN}",
            "--reporter-junit",
            str(report),
        ],
        cwd=COLLECTION,
        timeout=120,
    )

    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    suites = ElementTree.parse(report).getroot()
    cases = suites.findall(".//testcase")
    failures = suites.findall(".//failure") + suites.findall(".//error")
    assert cases and not failures, ElementTree.tostring(suites, encoding="unicode")[-4000:]
    requests = {path.stem for path in COLLECTION.glob("*.bru") if path.name != "collection.bru"}
    assert len(requests) == 15
    assert all(name in run.stdout for name in requests), run.stdout[-4000:]
