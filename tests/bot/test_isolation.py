"""The bot process must not carry the server's dependencies.

python-telegram-bot itself imports tornado opportunistically (for its own webhook
server) whenever tornado is installed, so the check runs the bot with tornado,
mongoengine and pymongo made unimportable: if any bot code needed them, it fails.
The one exception is bot/webhook.py, which needs Tornado (extra `bot-webhook`)
and is imported only in webhook mode, from inside bot.main.main(), with the
guarded HTTP server it runs on (runtime/httpserver.py, shared with the server).
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("tornado", "mongoengine", "pymongo", "bson", "server")
WEBHOOK_MODULES = (ROOT / "bot" / "webhook.py", ROOT / "runtime" / "httpserver.py")


def test_bot_imports_and_builds_without_server_dependencies():
    code = (
        "import sys\n"
        f"for name in {SERVER_ONLY!r}: sys.modules[name] = None  # any import of it raises\n"
        "import bot.main, bot.relay, bot.delivery\n"
        "from bot.config import load\n"
        "settings = load({'TELEGRAM_BOT_TOKEN': '1:x', 'NATS_URL': 'nats://127.0.0.1:4222'})\n"
        "application = bot.main.build_application(settings)\n"
        "print(type(application).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Application"


def test_no_bot_contract_or_runtime_module_imports_server_dependencies():
    offenders = []
    for path in [
        *ROOT.joinpath("bot").rglob("*.py"),
        *ROOT.joinpath("contract").rglob("*.py"),
        *ROOT.joinpath("runtime").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            allowed = {"tornado"} if path in WEBHOOK_MODULES else set()
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in SERVER_ONLY and n.split(".")[0] not in allowed
            ]
    assert offenders == []


def test_webhook_module_is_imported_only_inside_functions():
    """A module-level import of bot.webhook, or of the HTTP server it runs on,
    would make polling mode need Tornado."""
    offenders = []
    for path in [*ROOT.joinpath("bot").rglob("*.py"), *ROOT.joinpath("runtime").rglob("*.py")]:
        if path in WEBHOOK_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("bot.webhook", "runtime.httpserver"))]
    assert offenders == []
