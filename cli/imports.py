"""`import`: feed a session file of any size into one import job, resumably.

The file is read in chunks (cli.readers) and each chunk is sent as
`PUT /v1/imports/{id}/chunks/{seq}`. The server applies a chunk once: sending
it again (a retry after a lost answer, a resume) changes nothing. The import
is started with an Idempotency-Key saved beforehand, so a start whose answer was
lost (the server died after storing the job) finds the same job when asked
again, by this run's retries or by the next run, instead of leaving one running
that nobody feeds. After each acknowledged chunk the job id and the count of
chunks are saved in a small state file, keyed by the file's path, size and
modification time; `--resume` reads it, asks the server which chunk comes next,
reads past the chunks the server holds, and goes on. `POST
/v1/imports/{id}/complete` ends the import and has its summary announced in the
channel.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from cli.api import ApiClient, ApiFailure, UserError, api_options
from cli.readers import (
    Chunk,
    FileBroken,
    FileUnreadable,
    check_file,
    detect_format,
    read_ahead,
    read_chunks,
)
from contract.importformat import CHUNK_MEDIA_TYPE, KINDS
from contract.values import CHANNEL_RULE, channel_ref

DEFAULT_STATE_DIR = Path("~/.cache/balcao/imports")
SHOWN_ERRORS = 10


@dataclass
class ImportState:
    """What a resume needs: saved before the import is started, and after every acknowledged chunk."""

    file: str
    size: int
    mtime_ns: int
    api_url: str
    job_id: str  # "" until the server's answer to the start arrived
    file_format: str
    chunk_size: int
    chunks_sent: int = 0
    records_sent: int = 0
    channel: str = ""
    idempotency_key: str = ""


class StateFile:
    def __init__(self, directory: Path, file: Path) -> None:
        stat = file.stat()
        self.identity = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        digest = hashlib.sha256(json.dumps(self.identity).encode()).hexdigest()[:32]
        self.path = directory.expanduser() / f"{digest}.json"

    def load(self) -> ImportState | None:
        try:
            state = ImportState(**json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise UserError(f"the saved progress {self.path} is unreadable ({exc}); delete it to start over") from None
        return state if (state.file, state.size, state.mtime_ns) == self.identity else None

    def save(self, state: ImportState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(state)), encoding="utf-8")
        os.replace(partial, self.path)  # atomic: a crash leaves the old state or the new one

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def check_channel(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The channel in the spelling the server stores (the import format's rule)."""
    if value is None:
        return None
    channel = channel_ref(value)
    if channel is None:
        raise click.BadParameter(CHANNEL_RULE)
    return channel


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option(
    "--channel",
    callback=check_channel,
    help="Telegram channel or group that gets the summary: @name or numeric id. Required unless --resume.",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["auto", *KINDS]),
    default="auto",
    show_default=True,
    help="json: an array; ndjson: one session per line; csv: either CSV layout; auto: from the content.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows (CSV, NDJSON) or items (JSON) per chunk sent to the server.",
)
@click.option("--resume", is_flag=True, help="Continue the interrupted import of this file.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where progress is saved for --resume.",
)
@api_options
def import_sessions(
    file: Path, channel: str | None, file_format: str, chunk_size: int, resume: bool, state_dir: Path, api: ApiClient
) -> None:
    """Import the sessions in FILE (JSON array, NDJSON or CSV), announcing the result in a channel."""
    state_file = StateFile(state_dir, file)
    saved = state_file.load()
    if resume and saved is None:
        raise UserError(f"nothing to resume: no interrupted import of {file} is saved in {state_dir}")
    if (
        saved is not None
        and not saved.job_id
        and saved.api_url == api.url
        and (resume or channel in (None, saved.channel))
    ):
        # The last run saved its key and asked this server to start the import, but never heard back.
        click.echo("the last run's start of this import was not answered; asking again", err=True)
        state, next_chunk = _start(api, file, saved, state_file, fresh=False), 0
    elif saved is not None and resume:
        resumed, next_chunk = _resumed(api, saved, state_file)
        if resumed is None:
            return
        state = resumed
        if chunk_size != state.chunk_size:
            click.echo(f"resuming with the chunk size of the first run, {state.chunk_size}", err=True)
    else:
        if channel is None:
            raise click.UsageError("--channel is required (unless --resume)")
        if saved is not None and saved.job_id:
            click.echo(
                f"note: import {saved.job_id} of this file was interrupted; starting a new one "
                "(--resume continues it instead)",
                err=True,
            )
        pending = ImportState(
            *state_file.identity,
            api_url=api.url,
            job_id="",
            file_format=_format_of(file, file_format),
            chunk_size=chunk_size,
            channel=channel,
            idempotency_key=str(uuid.uuid4()),
        )
        state, next_chunk = _start(api, file, pending, state_file, fresh=True), 0
    try:
        report = _send(api, file, state, state_file, next_chunk)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted after {state.chunks_sent} chunks; run the same command with --resume to continue", err=True
        )
        raise click.exceptions.Exit(130) from None
    state_file.forget()
    _print_report(report)
    if report["status"] != "succeeded":
        raise click.exceptions.Exit(1)


def _format_of(file: Path, requested: str) -> str:
    try:
        detected = detect_format(file) if requested == "auto" else requested
        check_file(file, detected)
    except FileUnreadable as exc:
        raise UserError(str(exc)) from None
    return detected


def _start(api: ApiClient, file: Path, state: ImportState, state_file: StateFile, fresh: bool) -> ImportState:
    """Start the import with the state's key, saved first: asked again, the server answers the same job.

    A `fresh` key the server refused, or never got, started nothing and is
    forgotten; one from an earlier run is kept, as that run's try may have
    started the import.
    """
    while True:
        state_file.save(state)
        try:
            job = api.request(
                "POST",
                "/v1/imports",
                ok=(201,),
                json={"channel": state.channel, "source": file.name},
                headers={"Idempotency-Key": state.idempotency_key},
                on_retry=lambda reason: click.echo(f"starting the import: {reason}", err=True),
            ).json()
        except UserError:
            if fresh:
                state_file.forget()
            raise
        if job["status"] == "running":
            break
        # The server gave the key's import up meanwhile (abandoned, nothing in it): start one with a new key.
        state.idempotency_key = str(uuid.uuid4())
    state.job_id = job["id"]
    state_file.save(state)
    click.echo(f"import {state.job_id} started; announcing to {job['channel']}", err=True)
    return state


def _resumed(api: ApiClient, state: ImportState, state_file: StateFile) -> tuple[ImportState | None, int]:
    if state.api_url != api.url:
        raise UserError(f"the import was started against {state.api_url}; resume it there (--api-url)")
    response = api.request("GET", f"/v1/imports/{state.job_id}", ok=(200, 404))
    if response.status_code == 404:
        state_file.forget()
        raise UserError(
            f"import {state.job_id} no longer exists on the server; run the import again "
            "without --resume (what it stored is not duplicated)"
        )
    job = response.json()
    if job["status"] != "running":
        state_file.forget()
        click.echo(f"import {state.job_id} had already ended", err=True)
        _print_report(job)
        return None, 0
    click.echo(f"resuming import {state.job_id} at chunk {job['next_chunk']}", err=True)
    return state, job["next_chunk"]


def _send(api: ApiClient, file: Path, state: ImportState, state_file: StateFile, next_chunk: int) -> dict[str, Any]:
    size = file.stat().st_size
    seq, records, failure = 0, 0, None
    started = time.monotonic()
    sent_now = 0  # records sent in this run, for the rate
    with (
        open(file, "rb") as handle,
        click.progressbar(
            length=max(size, 1),
            label="importing",
            file=sys.stderr,
            item_show_func=lambda text: text,
            show_eta=True,
            show_percent=True,
        ) as bar,
    ):
        chunks = read_ahead(read_chunks(handle, state.file_format, state.chunk_size))
        try:
            for chunk in chunks:
                if seq >= next_chunk:
                    _put_chunk(api, state.job_id, seq, chunk, bar)
                    sent_now += chunk.records
                records += chunk.records
                seq += 1
                if seq > next_chunk:
                    state.chunks_sent, state.records_sent = seq, records
                    state_file.save(state)
                rate = sent_now / max(time.monotonic() - started, 1e-6)
                bar.update(chunk.position - bar.pos, f"{records:,} records, {rate:,.0f}/s")
        except FileUnreadable as exc:
            raise UserError(str(exc)) from None
        except FileBroken as exc:
            failure = {"message": exc.message, "offset": exc.offset, "line": exc.line}
            click.echo(f"\n{file.name}: {exc.message}; the {records:,} records before were sent", err=True)
    completion: dict[str, Any] = {"chunks": seq}
    if failure:
        completion["failure"] = failure
    return api.request("POST", f"/v1/imports/{state.job_id}/complete", json=completion).json()


def _put_chunk(api: ApiClient, job_id: str, seq: int, chunk: Chunk, bar: Any) -> None:
    first = json.loads(chunk.lines[0])["record"]

    def retrying(reason: str) -> None:
        click.echo(f"\nchunk {seq}: {reason}", err=True)

    try:
        api.request(
            "PUT",
            f"/v1/imports/{job_id}/chunks/{seq}",
            content=chunk.body(),
            headers={"Content-Type": CHUNK_MEDIA_TYPE},
            on_retry=retrying,
        )
    except ApiFailure as exc:
        raise ApiFailure(
            f"chunk {seq} (records from {first}) was not stored: {exc.message}; "
            "progress is saved: run the same command with --resume"
        ) from None


def _print_report(report: dict[str, Any]) -> None:
    counts = report["counts"]
    click.echo(
        f"import {report['id']} {report['status']}: {counts['received']:,} records, "
        f"{counts['created']:,} created, {counts['updated']:,} updated, "
        f"{counts['unchanged']:,} unchanged, {counts['rejected']:,} rejected "
        f"in {report['duration_seconds']:.1f} s"
    )
    for error in report["errors"][:SHOWN_ERRORS]:
        where = f"record {error['record']}" + (f" (line {error['line']})" if error.get("line") else "")
        field = f" {error['field']}:" if error.get("field") else ""
        click.echo(f"  {where}:{field} {error['message']}")
    if len(report["errors"]) > SHOWN_ERRORS or report.get("errors_truncated"):
        click.echo(f"  … see GET /v1/imports/{report['id']} for more")
    if report.get("failure"):
        click.echo(f"  failed: {report['failure']['message']}")
