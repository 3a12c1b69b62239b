"""The root command group; each command lives in its own module."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="balcao")
def cli() -> None:
    """Balcão: customer service over Telegram."""


def register() -> None:
    from cli.generate import generate
    from cli.imports import import_sessions
    from cli.sessions import sessions
    from cli.watch import reply, watch

    cli.add_command(generate)
    cli.add_command(import_sessions)
    cli.add_command(sessions)
    cli.add_command(watch)
    cli.add_command(reply)


def main() -> None:
    register()
    cli(prog_name="balcao")
