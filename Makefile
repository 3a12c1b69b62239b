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
# docs/scaling.md says how to run them at full size.
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
# podman-compose from .venv (the dev extra pins it): Debian 12's own 1.0.3 turns
# a CMD health check into a shell string that always fails.
PODMAN_COMPOSE ?= $(VENV)/bin/podman-compose
# More files after podman-compose.yml change what it runs, e.g. the stand-in
# images of a machine without a registry:
#   make up COMPOSE_FILES="podman-compose.yml devstack/standins/podman-compose.standins.yml"
COMPOSE_FILES ?= podman-compose.yml
# podman-compose gives stop_grace_period (30 s) to its own stop and down only:
# each container is also made with it, so a plain `podman stop` (or podman's
# own shutdown) lets the processes drain instead of killing them after 10 s.
STOP_TIMEOUT := 30
PODMAN_COMPOSE_RUN := $(PODMAN_COMPOSE) --podman-run-args=--stop-timeout=$(STOP_TIMEOUT)
COMPOSE := $(PODMAN_COMPOSE_RUN) $(addprefix -f ,$(COMPOSE_FILES))
# The project name, from podman-compose.yml's `name:`.
PROJECT := balcao
SECRETS := secrets
# Generated on first use, each a random 43-character URL-safe string, which
# NATS_URL needs no percent-encoding for. The bot token is the one given.
GENERATED_SECRETS := $(addprefix $(SECRETS)/,api_token mongodb_root_password mongodb_app_password \
                     nats_server_password nats_bot_password)
# PYTHON_IMAGE=... builds on another Python base image than the Containerfile's;
# BUILD_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt lets pip trust a proxy that
# intercepts TLS (a build secret: it is in no image layer).
IMAGE_BUILD_ARGS = $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
                   $(if $(BUILD_CA_BUNDLE),--secret id=ca_bundle$(comma)src=$(BUILD_CA_BUNDLE))
comma := ,

.PHONY: images up down logs up-cluster down-cluster image-cli test-containers test-python313

$(VENV)/bin/podman-compose: $(INSTALLED)

# BUILDAH_FORMAT=docker: podman builds OCI images by default, and OCI has no
# HEALTHCHECK, so the image's /health probe would be dropped with a warning.
images:
	BUILDAH_FORMAT=docker podman build --target server --tag localhost/balcao:latest $(IMAGE_BUILD_ARGS) --file Containerfile .
	BUILDAH_FORMAT=docker podman build --target cli --tag localhost/balcao-cli:latest $(IMAGE_BUILD_ARGS) --file Containerfile .

# MongoDB and NATS first, then the server and the bot once both are healthy:
# podman before 4.6 ignores `condition: service_healthy`, so the order is made
# here, and each health check is run until it passes (where no systemd runs
# them on a timer, nothing else would).
up: $(GENERATED_SECRETS) $(SECRETS)/telegram_bot_token $(PODMAN_COMPOSE) images
	$(COMPOSE) up --detach --no-build mongo nats
	sh deploy/wait-healthy.sh $(PROJECT) 180 mongo nats
	$(COMPOSE) up --detach --no-build --no-deps server bot
	sh deploy/wait-healthy.sh $(PROJECT) 180 server bot
	@echo "the /v1 bearer token is in $(SECRETS)/api_token"

# The clustered stack (podman-compose.cluster.yml) in the same order: the
# MongoDB members and the NATS nodes, the one-shot service that makes the
# members a replica set, then the two server replicas and the bot.
CLUSTER_COMPOSE_FILES ?= podman-compose.cluster.yml
CLUSTER_COMPOSE := $(PODMAN_COMPOSE_RUN) $(addprefix -f ,$(CLUSTER_COMPOSE_FILES))
CLUSTER_PROJECT := balcao-cluster
CLUSTER_MONGO ?= mongo1 mongo2 mongo3
CLUSTER_MONGO_INIT ?= mongo-init
CLUSTER_SECRETS := $(SECRETS)/mongodb_keyfile $(SECRETS)/nats_route_password

up-cluster: $(GENERATED_SECRETS) $(CLUSTER_SECRETS) $(SECRETS)/telegram_bot_token $(PODMAN_COMPOSE) images
	$(CLUSTER_COMPOSE) up --detach --no-build $(CLUSTER_MONGO) nats1 nats2 nats3
	sh deploy/wait-healthy.sh $(CLUSTER_PROJECT) 180 $(CLUSTER_MONGO) nats1 nats2 nats3
	$(if $(strip $(CLUSTER_MONGO_INIT)),$(CLUSTER_COMPOSE) run --rm --no-deps $(CLUSTER_MONGO_INIT))
	$(CLUSTER_COMPOSE) up --detach --no-build --no-deps server1 server2 bot
	sh deploy/wait-healthy.sh $(CLUSTER_PROJECT) 180 server1 server2 bot
	@echo "the /v1 bearer token is in $(SECRETS)/api_token"

down-cluster:
	$(CLUSTER_COMPOSE) down

# The command-line image (pandas, no server): `podman run --rm localhost/balcao-cli --help`.
image-cli:
	BUILDAH_FORMAT=docker podman build --target cli --tag localhost/balcao-cli:latest $(IMAGE_BUILD_ARGS) --file Containerfile .

# Volumes survive; `$(COMPOSE) down -v` also deletes MongoDB and JetStream data.
down:
	$(COMPOSE) down

# `make logs SERVICE=bot` follows one service.
logs:
	$(COMPOSE) logs -f $(SERVICE)

# The real images and compose files, built and started with podman on base
# images made here from Debian's packages, and driven from outside
# (tests/containers/). Installs podman and the rest with apt-get when missing
# (as root), and leaves no container, image, network or host setting behind.
CONTAINER_TEST_TIMEOUT := 3600
test-containers: install-test
	$(PY) -m pytest --containers -n 0 -p no:randomly --timeout=$(CONTAINER_TEST_TIMEOUT) -s --durations=0 \
	  tests/containers/test_stack.py tests/containers/test_cluster.py

# The whole suite (make test) on the newest Python Balcão supports, in a Debian
# 13 container made the same way.
test-python313: install-test
	$(PY) -m pytest --containers -n 0 -p no:randomly --timeout=$(CONTAINER_TEST_TIMEOUT) -s --durations=0 \
	  tests/containers/test_python313.py

# The directory's 0700 keeps other host users out. The files stay 0644:
# rootless podman shows them root-owned inside the container, where the
# processes run as uid 10001 and must still read them.
$(SECRETS):
	install -d -m 700 $@

$(GENERATED_SECRETS): | $(SECRETS)
	@umask 022 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@
	@echo "generated $@"

$(SECRETS)/nats_route_password: | $(SECRETS)
	@umask 022 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@
	@echo "generated $@"

# mongod takes a key of 6 to 1024 characters of the base64 alphabet, which
# token_urlsafe's - and _ are not: hexadecimal is.
$(SECRETS)/mongodb_keyfile: | $(SECRETS)
	@umask 022 && $(PYTHON) -c 'import secrets; print(secrets.token_hex(48))' > $@.tmp && mv $@.tmp $@
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
