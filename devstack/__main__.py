"""`python -m devstack` (what `make run` calls): the whole system on embedded defaults.

Starts nats-server (BALCAO_NATS_NODES=3: a three-node JetStream cluster) and
SecantusDB unless NATS_URL / MONGODB_URI point elsewhere,
then the server, and the bot when a Telegram token is configured. Data stays
under `var/` between runs. Ctrl-C stops everything it started, in order: the bot
and the server first, while NATS and the database still answer their goodbyes,
then NATS and the database.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devstack.cluster import NatsCluster
from devstack.processes import NatsServer, SecantusServer, wait_for_port

log = logging.getLogger("devstack")

ROOT = Path(__file__).resolve().parent.parent
# Where embedded servers keep their data and the generated token between runs.
VAR = Path(os.environ.get("BALCAO_DATA_DIR") or ROOT / "var")


def api_token() -> str:
    """The token from the environment, or one generated once and kept under var/."""
    if os.environ.get("API_TOKEN") or os.environ.get("API_TOKEN_FILE"):
        return ""
    path = VAR / "api_token"
    # Tokens kept from before the server required 32 characters are replaced.
    if not path.exists() or len(path.read_text().strip()) < 32:
        path.write_text(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """No options: the settings come from the environment (docs/operations.md, `.env.example`); `--help` says so."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="The whole system on embedded defaults (what `make run` runs): nats-server and SecantusDB "
        "unless NATS_URL / MONGODB_URI point elsewhere, the server, and the bot when a Telegram token is "
        "configured. Ctrl-C stops the bot and the server first, then NATS and the database.",
        epilog="Settings come from the environment (see docs/operations.md and .env.example); data stays under "
        "BALCAO_DATA_DIR (default var/).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    VAR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[NatsServer | NatsCluster | SecantusServer | subprocess.Popen] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        nodes = int(env.get("BALCAO_NATS_NODES") or 1)
        if not env.get("NATS_URL") and nodes > 1:
            # A JetStream cluster on loopback, to watch a node die (devstack/cluster.py).
            cluster = NatsCluster(data_dir=VAR / "nats-cluster", size=nodes, log_dir=VAR)
            children.append(cluster)
            cluster.start()
            env["NATS_URL"] = cluster.urls
            env.setdefault("NATS_REPLICAS", str(min(nodes, 3)))
        if not env.get("NATS_URL"):
            # Their own sessions keep the terminal's Ctrl-C (SIGINT to the whole
            # foreground process group) from stopping them under a draining server.
            nats = NatsServer(data_dir=VAR / "nats", log_file=VAR / "nats.log", own_session=True)
            nats.start()
            children.append(nats)
            env["NATS_URL"] = nats.url
        if not env.get("MONGODB_URI"):
            mongo = SecantusServer(
                data_dir=VAR / "mongo",
                log_file=VAR / "mongo.log",
                cache_size="4G",
                oplog_max_entries=5_000_000,
                own_session=True,
            )
            mongo.start()
            children.append(mongo)
            env["MONGODB_URI"] = mongo.uri
        token = api_token()
        if token:
            env["API_TOKEN"] = token
        port = int(env.setdefault("HTTP_PORT", "8080"))
        ensure_free(port)

        server = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT)
        children.append(server)
        wait_for_port(port, 30, server)
        has_bot = bool(env.get("TELEGRAM_BOT_TOKEN") or env.get("TELEGRAM_BOT_TOKEN_FILE"))
        if has_bot:
            children.append(subprocess.Popen([sys.executable, "-m", "bot"], env=env, cwd=ROOT))
        announce(port, token, has_bot)

        status = 0
        while not stopping:
            for child in children:
                if isinstance(child, subprocess.Popen) and child.poll() is not None:
                    log.error("%s exited with %s; stopping the stack", name(child), child.returncode)
                    stopping, status = True, 1
            time.sleep(0.2)
        return status
    except (OSError, RuntimeError, TimeoutError) as exc:
        log.error("could not start the stack: %s", exc)
        return 1
    finally:
        log.info("stopping")
        # Newest first: the bot and the server (which a terminal's Ctrl-C has
        # already signalled) drain against a NATS and a database still up.
        for child in reversed(children):
            if isinstance(child, subprocess.Popen):
                stop_app(child)
            else:
                child.stop()


def name(child: subprocess.Popen) -> str:
    """`server` or `bot`, from the `python -m NAME` command line."""
    return str(child.args[-1]) if isinstance(child.args, list) else str(child.args)


def stop_app(child: subprocess.Popen, timeout: float = 30.0) -> None:
    if child.poll() is None:
        child.terminate()  # a second stop signal after Ctrl-C's SIGINT changes nothing
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name(child), timeout)
        child.kill()
        child.wait()


def ensure_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RuntimeError(f"port {port} is in use; set HTTP_PORT to a free port") from None


def announce(port: int, token: str, has_bot: bool) -> None:
    shown = token or "(from API_TOKEN / API_TOKEN_FILE)"
    print(
        f"""
Balcão is running.
  API base URL : http://127.0.0.1:{port}/v1
  API token    : {shown}
  try          : curl -H 'Authorization: Bearer {shown}' http://127.0.0.1:{port}/v1/sessions
  health       : http://127.0.0.1:{port}/health
""",
        flush=True,
    )
    if not has_bot:
        print(
            "  bot          : not started; set TELEGRAM_BOT_TOKEN (or TELEGRAM_BOT_TOKEN_FILE) to enable it\n",
            flush=True,
        )
    print("Press Ctrl-C to stop.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
