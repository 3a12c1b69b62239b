"""The docs point at what exists: every relative link, anchor and quoted command.

A page that links a moved file, a heading that was renamed, or a `make` target,
module or `balcao` command that is gone misleads the reader who follows it, so
each of those is checked against the tree: links against the files and their
headings, `make <target>` against the Makefile's rules, `python -m <module>`
against what imports, `balcao <command>` against the Click group.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from tests.harness import ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "tests" / "README.md", ROOT / "data" / "README.md", *ROOT.glob("docs/*.md")])

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
MAKE = re.compile(r"(?<![\w/.-])make((?:\s+[A-Za-z_][A-Za-z0-9_]*=\S*)*)\s+([a-z][a-z0-9_.-]*)")
PYTHON_M = re.compile(r"(?<![\w-])python(?:3(?:\.\d+)?)?\s+-m\s+([A-Za-z_][\w.]*)")
BALCAO = re.compile(r"(?<![\w/.@-])balcao((?:\s+[a-z][a-z0-9_-]*)+)")
MAKE_RULE = re.compile(r"^([A-Za-z0-9_.-][A-Za-z0-9_. -]*?)\s*::?(?!=)")


@dataclass(frozen=True)
class Text:
    """A page split into prose (where links live) and code (where commands are quoted)."""

    prose: list[tuple[int, str]]
    code: list[tuple[int, str]]
    headings: list[str]


def read(path: Path) -> Text:
    prose: list[tuple[int, str]] = []
    code: list[tuple[int, str]] = []
    headings: list[str] = []
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if fenced:
            code.append((number, line))
            continue
        code.extend((number, span) for _, span in INLINE_CODE.findall(line))
        outside = INLINE_CODE.sub("", line)
        prose.append((number, outside))
        heading = HEADING.match(line)
        if heading:
            headings.append(heading.group(2))
    return Text(prose, code, headings)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in read(path).headings:
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> Iterator[str]:
    """Each relative link in `path` whose file, or whose anchor in that file, does not exist."""
    for number, line in read(path).prose:
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{shown(path)}:{number}: {target}"
            if not linked.exists():
                yield f"{where}: no such file"
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                yield f"{where}: no heading #{anchor}"


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        rule = MAKE_RULE.match(line)
        if rule and not line.startswith("\t") and "=" not in line.split(":", 1)[0]:
            targets.update(name for name in rule.group(1).split() if not name.startswith(("$", ".")))
    return targets


def balcao_group() -> click.Group:
    from cli import root

    # The commands join the group when the program starts (`main`).
    register = getattr(root, "register", None)
    if register is not None:
        register()
    return root.cli


def balcao_command_missing(words: list[str]) -> str | None:
    """The first word of `balcao <words...>` that names no command; None when they all do."""
    command: click.Command = balcao_group()
    for word in words:
        if not isinstance(command, click.Group):
            return None  # the rest are the command's arguments
        sub = command.get_command(click.Context(command), word)
        if sub is None:
            return word
        command = sub
    return None


def missing_commands(path: Path) -> Iterator[str]:
    """Each `make`, `python -m` or `balcao` command quoted in `path` that does not exist."""
    targets = make_targets()
    for number, code in read(path).code:
        where = f"{shown(path)}:{number}"
        for match in MAKE.finditer(code):
            if match.group(2) not in targets:
                yield f"{where}: make {match.group(2)}: no such target in the Makefile"
        for module in PYTHON_M.findall(code):
            if importlib.util.find_spec(module) is None:
                yield f"{where}: python -m {module}: no such module"
        for words in BALCAO.findall(code):
            missing = balcao_command_missing(words.split())
            if missing is not None:
                yield f"{where}: balcao {words.strip()}: no command {missing!r}"


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(path: Path) -> None:
    assert list(broken_links(path)) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_quoted_command_exists(path: Path) -> None:
    assert list(missing_commands(path)) == []


def test_the_docs_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {"README.md", "tests/README.md", "docs/operations.md", "docs/api.md"} <= names


def test_a_broken_link_a_missing_heading_and_missing_commands_are_reported(tmp_path: Path) -> None:
    (tmp_path / "api.md").write_text("# The REST API\n", encoding="utf-8")
    (tmp_path / "operations.md").write_text("# Operations\n\n## Stream limits\n", encoding="utf-8")
    text = "\n".join(
        [
            "# A page",
            "[ok](api.md#the-rest-api) [gone](nowhere.md) [bad anchor](operations.md#no-such-heading)",
            "[ok too](operations.md#stream-limits)",
            "[self](#a-page) [web](https://example.com/x) `[in code](nowhere.md)`",
            "`make test` `make no-such-target` `BALCAO_NATS_NODES=3 make run`",
            "```sh",
            "python -m bench.intake --help",
            "python -m no_such_module_here",
            "balcao sessions list --limit 20",
            "balcao sessions vanish",
            "balcao teleport",
            "```",
        ]
    )
    probe = tmp_path / "probe.md"
    probe.write_text(text, encoding="utf-8")
    links = list(broken_links(probe))
    commands = list(missing_commands(probe))
    assert [entry.split(": ", 1)[1] for entry in links] == [
        "nowhere.md: no such file",
        "operations.md#no-such-heading: no heading #no-such-heading",
    ]
    assert [entry.split(": ", 1)[1] for entry in commands] == [
        "make no-such-target: no such target in the Makefile",
        "python -m no_such_module_here: no such module",
        "balcao sessions vanish: no command 'vanish'",
        "balcao teleport: no command 'teleport'",
    ]


def test_headings_become_the_anchors_github_gives_them() -> None:
    assert slug("Replies during NATS failures") == "replies-during-nats-failures"
    assert slug("What to watch in /metrics") == "what-to-watch-in-metrics"
    assert slug("Real time: the event stream") == "real-time-the-event-stream"
    assert slug("The `balcao` command") == "the-balcao-command"
