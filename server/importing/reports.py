"""What an import job tells: its report over the API, and the summary announced in its channel.

Both read the job as stored (server.importing.jobs), with a running job's
counts so far when a caller has them.
"""

from __future__ import annotations

from typing import Any

from contract import clock
from server.importing.feed import MAX_REPORTED_ERRORS, Tally
from server.importing.jobs import SUCCEEDED, clean_source

# The file's name as the channel's announcement shows it: a client chooses it.
MAX_ANNOUNCED_SOURCE = 80

# Why an import ended early, as the announcement says it (pt-BR, like the bot).
FAILURE_REASONS = {
    "invalid-file": "o arquivo está truncado ou inválido",
    "interrupted": "o envio do arquivo foi interrompido",
    "too-large": "o arquivo passou do tamanho máximo aceito",
    "shutdown": "o servidor foi reiniciado durante a importação",
    "abandoned": "a importação ficou parada por tempo demais",
}


def report(job: dict[str, Any], tally: Tally | None = None) -> dict[str, Any]:
    """The API resource of a job; `tally` gives a running job's counts so far."""
    if tally is None:
        tally = Tally.of(job.get("counts") or {}, job.get("errors") or [])
    started, finished = job["created_at"], job.get("finished_at")
    body: dict[str, Any] = {
        "id": str(job["_id"]),
        "status": job["status"],
        "channel": job["channel"],
        "source": job.get("source") or None,
        "format": job.get("file_format"),
        "mode": job["mode"],
        "counts": tally.counts(),
        "errors": tally.errors,
        # Counts cover every record; the list stops at the first errors.
        "errors_truncated": tally.rejected > 0 and len(tally.errors) >= MAX_REPORTED_ERRORS,
        "failure": _failure_report(job.get("failure"), tally),
        "started_at": clock.rfc3339(started),
        "finished_at": clock.rfc3339(finished) if finished else None,
        "duration_seconds": round(((finished or clock.now()) - clock.aware(started)).total_seconds(), 3),
        "bytes_received": job.get("bytes_received", 0),
    }
    if job["mode"] == "chunks":
        body["next_chunk"] = job.get("next_chunk", 0)
    return body


def _failure_report(failure: dict[str, Any] | None, tally: Tally) -> dict[str, Any] | None:
    if not failure:
        return None
    kept = tally.received - tally.rejected
    return {
        **failure,
        "imported_before_failure": kept,
        "note": f"the {kept} valid records read before this point were imported; nothing after it was read",
    }


def announcement(job: dict[str, Any]) -> str:
    """The channel's summary of an ended import, in Portuguese like everything the bot says."""
    counts = job.get("counts") or {}
    imported = sum(counts.get(outcome, 0) for outcome in ("created", "updated", "unchanged"))
    summary = (
        f"{plural(imported, 'sessão importada', 'sessões importadas')} "
        f"({plural(counts.get('created', 0), 'nova', 'novas')}, "
        f"{plural(counts.get('updated', 0), 'atualizada', 'atualizadas')}, "
        f"{number(counts.get('unchanged', 0))} sem alteração), "
        f"{plural(counts.get('rejected', 0), 'rejeitada', 'rejeitadas')}"
    )
    shown = clean_source(job.get("source") or "")
    if len(shown) > MAX_ANNOUNCED_SOURCE:
        shown = shown[: MAX_ANNOUNCED_SOURCE - 1] + "…"
    source = f" ({shown})" if shown else ""
    if job["status"] == SUCCEEDED:
        return f"Importação concluída{source}: {summary}."
    failure = job.get("failure") or {}
    reason = FAILURE_REASONS.get(failure.get("reason", ""), "ocorreu um erro")
    if failure.get("line") is not None:
        reason += f" (linha {number(failure['line'])})"
    elif failure.get("offset") is not None:
        reason += f" (byte {number(failure['offset'])})"
    return f"Importação interrompida{source}: {reason}. Antes disso: {summary}."


def number(value: int) -> str:
    """1234567 -> "1.234.567", as written in Brazil."""
    return f"{value:,}".replace(",", ".")


def plural(count: int, one: str, many: str) -> str:
    return f"{number(count)} {one if count == 1 else many}"
