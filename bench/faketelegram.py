"""Fake Bot API benchmark: big files both ways at once, and polling what was sent under load.

Starts the fake Bot API as its own process (flood control off) and

- files: injects FILES generated files of SIZE_MB MiB from as many contacts, downloads them
  all at once through the download path, then uploads as many through sendDocument at once,
  checks every sha256, and prints the fake's peak RSS (VmHWM) before and after;
- polling: records SENDS sendMessage calls across CHATS chats, then times /_test/stats,
  /_test/sent?chat_id=... and /_test/sent (all) at a tenth and at all of the sends.

    .venv/bin/python -m bench.faketelegram [--files 20] [--size-mb 20] [--sends 10000] [--chats 500]

Targets: peak RSS grows by less than one file's size while all the files move; stats and one
chat's sent list cost the same with ten times the sends.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from devstack.faketelegram.files import generated_chunks
from devstack.processes import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "42:bench-faketelegram-token"
MIB = 1024 * 1024
FIRST_CONTACT = 800_000


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def generated_sha256(seed: int, size: int) -> str:
    hashed = hashlib.sha256()
    for chunk in generated_chunks(seed, size):
        hashed.update(chunk)
    return hashed.hexdigest()


async def download(http: httpx.AsyncClient, file_path: str) -> str:
    hashed = hashlib.sha256()
    async with http.stream("GET", f"/file/bot{TOKEN}/{file_path}") as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            hashed.update(chunk)
    return hashed.hexdigest()


async def upload(http: httpx.AsyncClient, contact: int, seed: int, size: int) -> str:
    async def body() -> AsyncIterator[bytes]:
        yield f'--b\r\nContent-Disposition: form-data; name="chat_id"\r\n\r\n{contact}\r\n'.encode()
        yield b'--b\r\nContent-Disposition: form-data; name="document"; filename="f.bin"\r\n\r\n'
        for chunk in generated_chunks(seed, size):
            yield chunk
        yield b"\r\n--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    response = await http.post(f"/bot{TOKEN}/sendDocument", content=body(), headers=headers)
    response.raise_for_status()
    return str(response.json()["result"]["document"]["file_id"])


async def bench_files(http: httpx.AsyncClient, pid: int, files: int, size: int) -> bool:
    contacts = [FIRST_CONTACT + n for n in range(files)]
    for contact in contacts:
        await http.post("/_test/users", json={"id": contact, "first_name": f"C{contact}"})
    # One small file each way first, so what grows afterwards is the big files' doing.
    await upload(http, contacts[0], 0, 65536)
    before = peak_rss(pid)

    injected = []
    for seed, contact in enumerate(contacts):
        message = {"user": {"id": contact, "first_name": f"C{contact}"}, "kind": "document"}
        message["file"] = {"size": size, "seed": seed}
        injected.append((await http.post("/_test/messages", json=message)).json()["file"])
    started = time.monotonic()
    downloaded = await asyncio.gather(*(download(http, file["file_path"]) for file in injected))
    download_time = time.monotonic() - started
    after_downloads = peak_rss(pid)
    started = time.monotonic()
    file_ids = await asyncio.gather(*(upload(http, c, 1000 + n, size) for n, c in enumerate(contacts)))
    upload_time = time.monotonic() - started
    after_uploads = peak_rss(pid)

    sent = {m["upload"]["file_id"]: m["upload"]["sha256"] for m in (await http.get("/_test/sent")).json()["messages"]}
    intact = downloaded == [generated_sha256(seed, size) for seed in range(files)] and [
        sent[file_id] for file_id in file_ids
    ] == [generated_sha256(1000 + n, size) for n in range(files)]
    volume = files * size / MIB
    print(f"files: {files} x {size / MIB:.0f} MiB each way, all at once; every sha256 intact: {intact}")
    print(f"  downloads: {download_time:5.1f} s ({volume / download_time:6.0f} MiB/s)")
    print(f"  uploads:   {upload_time:5.1f} s ({volume / upload_time:6.0f} MiB/s)")
    print(
        f"  fake's peak RSS: {before / MIB:.1f} MiB before, {after_downloads / MIB:.1f} after the downloads, "
        f"{after_uploads / MIB:.1f} after the uploads (+{(after_uploads - before) / MIB:.1f} MiB)"
    )
    return intact and after_uploads - before < size


async def record_sends(http: httpx.AsyncClient, first: int, count: int, chats: int) -> None:
    queue = list(range(first, first + count))

    async def worker() -> None:
        while queue:
            n = queue.pop()
            chat = FIRST_CONTACT + n % chats
            response = await http.post(f"/bot{TOKEN}/sendMessage", data={"chat_id": chat, "text": f"m{n}"})
            response.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(8)))


async def poll_times(http: httpx.AsyncClient, path: str, params: dict[str, str], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        (await http.get(path, params=params)).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


async def bench_polling(http: httpx.AsyncClient, sends: int, chats: int) -> bool:
    for n in range(chats):
        await http.post("/_test/users", json={"id": FIRST_CONTACT + n, "first_name": f"C{n}"})
    polls = {
        "stats": ("/_test/stats", {}),
        "one chat's sent": ("/_test/sent", {"chat_id": str(FIRST_CONTACT)}),
        "all sent": ("/_test/sent", {}),
    }
    figures: dict[int, dict[str, tuple[float, float]]] = {}
    recorded = 0
    for target in (sends // 10, sends):
        await record_sends(http, recorded, target - recorded, chats)
        recorded = target
        figures[target] = {name: await poll_times(http, *poll, repeat=200) for name, poll in polls.items()}
    print(f"polling, {chats} chats, median / p99 of 200 requests:")
    for name in polls:
        row = "  ".join(
            f"{count:6d} sends: {figures[count][name][0]:6.2f} / {figures[count][name][1]:6.2f} ms" for count in figures
        )
        print(f"  {name:16s} {row}")
    small, large = figures[sends // 10], figures[sends]
    # Constant: within 3x or a millisecond, whichever is larger (a busy machine jitters).
    return all(large[name][0] <= max(3 * small[name][0], small[name][0] + 1) for name in ("stats", "one chat's sent"))


async def run(args: argparse.Namespace, base_url: str, pid: int) -> bool:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        files_ok = await bench_files(http, pid, args.files, args.size_mb * MIB)
        await http.post("/_test/reset")
        await http.post("/_test/flood_control", json={"enabled": False})
        polling_ok = await bench_polling(http, args.sends, args.chats)
    return files_ok and polling_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20, help="files moved each way at once")
    parser.add_argument("--size-mb", type=int, default=20, help="size of each file, MiB")
    parser.add_argument("--sends", type=int, default=10000, help="sendMessage calls recorded before polling")
    parser.add_argument("--chats", type=int, default=500, help="chats the sends go to")
    args = parser.parse_args()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.faketelegram", "--port", str(port), "--token", TOKEN, "--no-flood-control"],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, process)
        print(f"load average before: {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
        ok = asyncio.run(run(args, f"http://127.0.0.1:{port}", process.pid))
        print(f"load average after:  {' '.join(f'{load:.2f}' for load in os.getloadavg())}")
    finally:
        process.terminate()
        process.wait(10)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
