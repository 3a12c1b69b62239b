"""The chaos soak, short: about 1,000 messages (a tenth of them documents) while the server,
the bot and nats-server are SIGKILLed.

`python -m bench.chaos` is the long run (10,000 messages from 500 contacts). This
one keeps the suite's budget: the load alone lasts about 35 s at 30 messages/s,
and the replies owed then drain at Telegram's 30/s, so it gets its own timeout,
larger than the soak's settling limit, so a stuck run fails on its checks.
"""

from __future__ import annotations

import re

import pytest

from bench import chaos


# Coverage is paused here and off in the soak's processes (bench/chaos.py): it
# SIGKILLs them, so they never save what was measured, and the load it drives
# in this process is its own code, not the product's.
@pytest.mark.no_cover
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
    assert re.search(r"^9 passed, 0 failed$", report, re.M), report
    assert re.search(r"PASS  each stored file kept whole in the file store: [1-9]", report), report
    assert code == 0, report


# How the soak tells the documented residual window (a bot SIGKILLed between
# Telegram's acceptance and its delivered marker) from a real duplicate. Times in s.
@pytest.mark.parametrize(
    ("bot_kills", "nats_kills", "explained"),
    [
        ([], [], 0),  # nobody died: a repeat is a bug
        ([101.0], [], 1),  # the bot died a second after Telegram accepted
        ([99.0], [], 1),  # ... or just before, with the request already written
        ([97.0], [], 0),  # died before the request: the marker was never owed
        ([130.0], [], 0),  # died 30 s later: the marker had long been written
        ([130.0], [110.0], 1),  # ... unless NATS was killed meanwhile and the marker waited for it
        ([130.0], [140.0], 0),  # NATS killed after the bot: no excuse
        ([160.0], [110.0], 0),  # died after the repeat: it did not cause it
    ],
)
def test_a_repeat_is_the_residual_window_only_if_the_bot_died_before_its_marker(
    bot_kills, nats_kills, explained
) -> None:
    assert chaos.residual_repeats([150.0, 100.0], bot_kills, nats_kills) == explained


def test_each_repeat_needs_its_own_kill() -> None:
    # Three sends of the same text, one kill: one repeat explained, the other a bug.
    assert chaos.residual_repeats([100.0, 150.0, 200.0], [101.0], []) == 1
    assert chaos.residual_repeats([100.0, 150.0, 200.0], [101.0, 151.0], []) == 2


def test_the_ledger_gives_the_classifier_each_victims_kills_as_recorded() -> None:
    """The kills are recorded under the names kill_at_random draws; a name it never
    records (once "nats-server" for nats) would leave the classifier no kills to go by."""
    ledger = chaos.Ledger(kill_times=[("nats", 110.0), ("bot", 130.0), ("server", 131.0)])

    assert (ledger.killed("bot"), ledger.killed("nats")) == ([130.0], [110.0])
    with pytest.raises(ValueError, match="nats-server"):
        ledger.killed("nats-server")
    # The repeat after a bot kill 30 s on is explained by the NATS kill between them.
    assert chaos.residual_repeats([100.0, 150.0], ledger.killed("bot"), ledger.killed("nats")) == 1
