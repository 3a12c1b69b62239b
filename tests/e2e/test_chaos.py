"""The chaos soak, short: about 1,000 messages while the server, the bot and nats-server are SIGKILLed.

`python -m bench.chaos` is the long run (10,000 messages from 500 contacts). This
one keeps the suite's budget: the load alone lasts about 35 s at 30 messages/s,
and the replies owed then drain at Telegram's 30/s, so it gets its own timeout,
larger than the soak's settling limit, so a stuck run fails on its checks.
"""

from __future__ import annotations

import re

import pytest

from bench import chaos


@pytest.mark.timeout(300)
def test_short_chaos_soak_loses_and_doubles_nothing(capsys) -> None:
    code = chaos.run(
        chaos.parse_args(
            [
                "--messages",
                "1000",
                "--contacts",
                "100",
                "--rate",
                "30",
                "--kill-every",
                "4",
                "--import-sessions",
                "100",
                "--settle-timeout",
                "150",
                "--seed",
                "7",
            ]
        )
    )
    report = capsys.readouterr().out
    kills = re.search(r"SIGKILLs: server (\d+), bot (\d+), nats-server (\d+)", report)
    assert kills is not None, report
    assert sum(int(n) for n in kills.groups()) >= 3, report  # a few kills, not a calm run
    # The agent acted while processes died, or the finish and reply checks prove nothing.
    finished = re.search(r"(\d+) finished:", report)
    answered = re.search(r"(\d+) agent replies:", report)
    assert finished is not None and int(finished.group(1)) >= 1, report
    assert answered is not None and int(answered.group(1)) >= 1, report
    assert re.search(r"^8 passed, 0 failed$", report, re.M), report
    assert code == 0, report
