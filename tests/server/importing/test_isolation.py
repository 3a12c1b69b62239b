"""The import machinery knows nothing of HTTP: its refusals are its own, the handlers answer them.

Each module under server/importing/ is imported with Tornado, the handlers and
server/problems.py made unimportable, so neither a direct import nor one
through another module can bring HTTP into the import domain.
"""

from __future__ import annotations

import subprocess
import sys

from tests.harness import ROOT

HTTP_ONLY = ("tornado", "server.problems", "server.handlers", "server.app")


def test_every_import_module_loads_without_http():
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {HTTP_ONLY!r}: sys.modules[name] = None  # any import of it raises\n"
        "import server.importing\n"
        "names = [m.name for m in pkgutil.iter_modules(server.importing.__path__)]\n"
        "for name in names: importlib.import_module('server.importing.' + name)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 10  # upload, jobs, chunks, parsers, feed, ...
