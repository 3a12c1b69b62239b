"""The root command group; each command lives in its own module, imported when it runs.

`balcao --help` lists the commands from the table below without importing any
of them: `import` pulls in pandas, and a listing should cost nothing. A test
checks each line of the table against the command's own help.
"""

from __future__ import annotations

import importlib

import click

# name: (module:attribute of the command, its one line in `balcao --help`)
COMMANDS = {
    "generate": ("cli.generate:generate", "Write a file of synthetic sessions in one of the import formats."),
    "import": (
        "cli.imports:import_sessions",
        "Import the sessions in FILE (JSON array, NDJSON or CSV), announcing the result in a channel.",
    ),
    "reply": ("cli.watch:reply", "Send TEXT to the contact of SESSION, as an agent."),
    "sessions": ("cli.sessions:sessions", "List, search and finish open sessions."),
    "watch": (
        "cli.watch:watch",
        "Follow sessions live: one line per event, resuming by itself after a dropped connection.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are found in COMMANDS and imported only when asked for by name."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), f"{module}:{attribute} is not a command"
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's own listing, from the table instead of the loaded commands."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # A bare Command shortens the line exactly as the real one would.
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="balcao")
def cli() -> None:
    """Balcão: customer service over Telegram."""


def main() -> None:
    cli(prog_name="balcao")
