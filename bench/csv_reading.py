"""CSV reading benchmark: the import format's reader, as the CLI and the server run it, against pandas.

The same generated CSV file is read three ways, in memory, best of `--repeat`:
the CLI's chunked reader (`cli.readers.read_chunks`, records into JSON chunk
envelopes), the server's upload parser (`server.importing.parsers`, records as
dicts) and, as a baseline, pandas' C reader (`read_csv(chunksize=...)`, rows
into tuples only: no line numbers, no layout, no envelopes). The import itself
(HTTP, validation, upserts) is `bench.imports`; this isolates the reading.

    .venv/bin/python -m bench.csv_reading [--sessions 20000] [--messages 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable

import pandas as pd

from bench import method
from cli.generate import generate_sessions
from cli.readers import read_chunks
from contract.importwriter import write_sessions
from server.importing.parsers import open_parser

CHUNK_RECORDS = 1000
PIECE_BYTES = 64 * 1024


def best_of(repeat: int, read: Callable[[bytes], int], data: bytes) -> tuple[float, int]:
    best, records = float("inf"), 0
    for _ in range(repeat):
        started = time.perf_counter()
        records = read(data)
        best = min(best, time.perf_counter() - started)
    return best, records


def cli_reader(data: bytes) -> int:
    return sum(chunk.records for chunk in read_chunks(io.BytesIO(data), "csv", CHUNK_RECORDS))


def server_parser(data: bytes) -> int:
    parser = open_parser("csv")
    records = 0
    for start in range(0, len(data), PIECE_BYTES):
        records += len(parser.feed(data[start : start + PIECE_BYTES]))
    return records + len(parser.close())


def pandas_c_reader(data: bytes) -> int:
    frames = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, chunksize=CHUNK_RECORDS, engine="c")
    return sum(len(list(frame.itertuples(index=False, name=None))) for frame in frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    method.add_results_argument(parser)
    args = parser.parse_args(argv)
    with method.recorded("csv_reading", method.results_folder(args.results), argv) as record:
        record.figures = {"sessions": args.sessions, "layouts": read_layouts(args)}


def read_layouts(args: argparse.Namespace) -> list[dict]:
    layouts = []
    for layout in ("csv", "csv-messages"):
        out = io.StringIO()
        write_sessions(generate_sessions(args.sessions, messages_per_session=args.messages), out, layout)
        data = out.getvalue().encode()
        baseline, _ = best_of(args.repeat, pandas_c_reader, data)
        print(f"{layout}: {args.sessions:,} sessions, {len(data) / 1e6:.1f} MB")
        readers = {}
        for name, read in (("cli reader", cli_reader), ("server parser", server_parser), ("pandas C", pandas_c_reader)):
            seconds, records = best_of(args.repeat, read, data) if read is not pandas_c_reader else (baseline, 0)
            rate = len(data) / 1e6 / seconds
            readers[name] = {"seconds": seconds, "mb_per_second": rate, "times_pandas": seconds / baseline}
            print(f"  {name:14} {seconds:6.2f} s  {rate:5.1f} MB/s  {seconds / baseline:4.1f}x pandas C")
        layouts.append({"layout": layout, "megabytes": len(data) / 1e6, "readers": readers})
    return layouts


if __name__ == "__main__":
    main(sys.argv[1:])
