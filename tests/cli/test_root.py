"""The root group: commands found by name and imported only when they run; the CLI's own dependencies only."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cli.root import COMMANDS, cli
from tests.harness import ROOT

COMMAND_MODULES = sorted({target.partition(":")[0] for target, _ in COMMANDS.values()})


def imported_after(*args: str, blocked: tuple[str, ...] = ()) -> set[str]:
    """Run `balcao ARGS` in a fresh interpreter; the modules loaded by then."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # any import of it raises\n"
        "from cli.root import cli\n"
        f"try: cli({list(args)!r}, prog_name='balcao')\n"
        "except SystemExit as exc: assert exc.code in (0, None), exc.code\n"
        "print(*sorted(sys.modules), sep='\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_help_lists_every_command_without_importing_any():
    loaded = imported_after("--help")
    assert "pandas" not in loaded
    assert not set(COMMAND_MODULES) & loaded


def test_a_command_imports_its_own_module_only():
    loaded = imported_after("generate", "--help")
    assert "cli.generate" in loaded
    assert not (set(COMMAND_MODULES) - {"cli.generate"}) & loaded
    assert "pandas" not in loaded


def test_help_reads_as_it_would_with_every_command_loaded():
    """The table's one-liners are the commands' own: Click's listing of the loaded commands matches."""
    eager = click.Group("balcao", help=cli.help, context_settings=cli.context_settings, params=cli.params)
    for name in cli.list_commands(click.Context(cli)):
        command = cli.get_command(click.Context(cli), name)
        assert command is not None and command.name == name
        eager.add_command(command)

    lazy_help = CliRunner().invoke(cli, ["--help"], prog_name="balcao")
    eager_help = CliRunner().invoke(eager, ["--help"], prog_name="balcao")

    assert lazy_help.exit_code == eager_help.exit_code == 0
    assert lazy_help.output == eager_help.output
    assert "import    Import the sessions in FILE" in lazy_help.output


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["nope"], prog_name="balcao")
    assert result.exit_code == 2
    assert "No such command 'nope'" in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_cli_image_runs_every_command_without_the_server_or_the_bot(name):
    """The cli image carries contract, runtime and cli, and the cli extra's packages only:
    each command loads without the server's or the bot's dependencies, nor nats-py."""
    blocked = ("server", "bot", "devstack", "tornado", "mongoengine", "pymongo", "bson", "telegram")
    loaded = imported_after(name, "--help", blocked=(*blocked, "prometheus_client", "nats"))
    assert COMMANDS[name][0].partition(":")[0] in loaded
