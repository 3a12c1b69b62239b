# Balcão: `make run` starts the system on embedded defaults (Python and make only),
# `make test` runs every test (it needs Node.js 20 for the Bruno CLI too).
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Any CPython from 3.11 on works. PYTHON=/path/to/python overrides the search,
# which takes the newest python3.X on the PATH that starts and is recent enough.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
SUITABLE_PYTHON = $(firstword $(foreach py,$(PYTHON_CANDIDATES),$(shell command -v $(py) >/dev/null 2>&1 && \
  $(py) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(py))))
# Searched on first use only, and once: most runs find .venv/ in place.
ifeq ($(origin PYTHON),undefined)
PYTHON = $(eval PYTHON := $(SUITABLE_PYTHON))$(PYTHON)
endif

.PHONY: install install-test run test lint bench clean

$(INSTALLED): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Balcão needs Python 3.11 or newer (3.11, 3.12 and 3.13 are tested);" \
	  "none of $(PYTHON_CANDIDATES) on the PATH is. Install one, or run make PYTHON=/path/to/python3.11+" >&2; exit 1; }
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) -V 2>&1))"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,bot,cli,dev]'
	@touch $@

# The Bruno CLI that runs the collection in bruno/ (tests/server/test_bruno.py);
# npm installs the pinned version under .tools/, never globally. Only the tests
# need it, so only `make test` (and install-test) installs it.
BRUNO_CLI_VERSION := 4.1.0
BRUNO_CLI := .tools/bruno/.installed-$(BRUNO_CLI_VERSION)

$(BRUNO_CLI):
	@command -v npm >/dev/null 2>&1 || { echo "make test needs Node.js 20 and npm for the Bruno CLI" \
	  "(make run does not); install Node.js 20 and run make test again" >&2; exit 1; }
	npm install --prefix .tools/bruno --save-exact --no-audit --no-fund --loglevel=error \
	  @usebruno/cli@$(BRUNO_CLI_VERSION)
	@touch $@

install: $(INSTALLED)

# The venv and the Bruno CLI side by side: pip keeps a core busy while npm
# mostly waits on the registry, so a fresh clone is ready about half a minute sooner.
install-test:
	@$(MAKE) --no-print-directory -j2 $(INSTALLED) $(BRUNO_CLI)

run: install
	$(PY) -m devstack

# The linters first: they take seconds, the suite minutes. Workers: the tests
# wait on child processes about half their time, so two workers per core keep
# the cores busy (2 to 8 workers); each starts servers of its own.
# PYTEST_WORKERS=0 runs them in one process. Coverage counts the product alone
# (fail_under in pyproject.toml); devstack/, the test infrastructure, is shown apart.
CORES := $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
PYTEST_WORKERS ?= $(shell w=$$(( $(CORES) * 2 )); [ $$w -gt 8 ] && w=8; [ $$w -lt 2 ] && w=2; echo $$w)
# Bytecode caches are written even where PYTHONDONTWRITEBYTECODE is set (as in
# many containers): each server and bot the tests start would otherwise compile
# the project again, and each worker rewrite every test module's asserts.
test: install-test lint
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --cov --cov-report= --cov-fail-under=0 $(PYTEST_ARGS)
	@echo "--- coverage of the product (server, bot, cli, contract, runtime) ---"
	$(PY) -m coverage report --omit='devstack/*'
	@echo "--- coverage of the test infrastructure (devstack, not counted) ---"
	$(PY) -m coverage report --include='devstack/*' --fail-under=0

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Every benchmark at modest sizes; each writes bench/results/<name>.json, and
# docs/benchmarks.md is rendered from those (with how long each run took).
# README's Benchmarks section says how to run them at full size.
BENCH_MESSAGES ?= 1000
BENCH_SESSIONS ?= 5000
BENCH_LIST_SESSIONS ?= 20000
bench: install
	$(PY) -m bench.intake --messages $(BENCH_MESSAGES) --durability nats-sync mongo-journal
	$(PY) -m bench.replies
	$(PY) -m bench.imports --sessions $(BENCH_SESSIONS)
	$(PY) -m bench.sessions --sessions $(BENCH_LIST_SESSIONS)
	$(PY) -m bench.eventlatency
	$(PY) -m bench.outbound --messages 600 --chats 200 --burst 20
	$(PY) -m bench.csv_reading
	$(PY) -m bench.report

clean:
	rm -rf var .coverage .coverage.* htmlcov

# --- container stack ---------------------------------------------------------
PODMAN_COMPOSE ?= $(if $(wildcard $(VENV)/bin/podman-compose),$(VENV)/bin/podman-compose,podman-compose)
COMPOSE := $(PODMAN_COMPOSE) -f podman-compose.yml
SECRETS := secrets
# Generated on first use, each a random 43-character URL-safe string, which
# NATS_URL needs no percent-encoding for. The bot token is the one given.
GENERATED_SECRETS := $(addprefix $(SECRETS)/,api_token mongodb_root_password mongodb_app_password \
                     nats_server_password nats_bot_password)

.PHONY: up down logs image-cli

# BUILDAH_FORMAT=docker: podman builds OCI images by default, and OCI has no
# HEALTHCHECK, so the image's /health probe would be dropped with a warning.
up: $(GENERATED_SECRETS) $(SECRETS)/telegram_bot_token
	BUILDAH_FORMAT=docker $(COMPOSE) up -d --build
	@echo "the /v1 bearer token is in $(SECRETS)/api_token"

# The command-line image (pandas, no server): `podman run --rm localhost/balcao-cli --help`.
image-cli:
	podman build --target cli -t localhost/balcao-cli:latest -f Containerfile .

# Volumes survive; `$(COMPOSE) down -v` also deletes MongoDB and JetStream data.
down:
	$(COMPOSE) down

# `make logs SERVICE=bot` follows one service.
logs:
	$(COMPOSE) logs -f $(SERVICE)

# The directory's 0700 keeps other host users out. The files stay 0644:
# rootless podman shows them root-owned inside the container, where the
# processes run as uid 10001 and must still read them.
$(SECRETS):
	install -d -m 700 $@

$(GENERATED_SECRETS): | $(SECRETS)
	@umask 022 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@
	@echo "generated $@"

# Copied with printenv, so the token is on no command line that make echoes
# or that `ps` shows, and it is never printed.
$(SECRETS)/telegram_bot_token: | $(SECRETS)
	@if [ -z "$$TELEGRAM_BOT_TOKEN" ]; then \
	  echo "missing $@: put the @BotFather token in it (mode 644), or run make up once with TELEGRAM_BOT_TOKEN set" >&2; \
	  exit 1; \
	fi
	@umask 022 && printenv TELEGRAM_BOT_TOKEN > $@.tmp && mv $@.tmp $@
	@echo "wrote $@ from TELEGRAM_BOT_TOKEN"
