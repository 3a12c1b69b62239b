# Balcão: `make run` starts the system on embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install run test bench lint clean

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,bot,cli,dev]'
	@touch $@

# The Bruno CLI that runs the collection in bruno/ (tests/server/test_bruno.py);
# npm installs the pinned version under .tools/, never globally.
BRUNO_CLI_VERSION := 4.1.0
BRUNO_CLI := .tools/bruno/.installed-$(BRUNO_CLI_VERSION)

$(BRUNO_CLI):
	npm install --prefix .tools/bruno --save-exact --no-audit --no-fund --loglevel=error \
	  @usebruno/cli@$(BRUNO_CLI_VERSION)
	@touch $@

install: $(INSTALLED) $(BRUNO_CLI)

run: install
	$(PY) -m devstack

test: install
	$(PY) -m pytest --cov --cov-report=term --cov-fail-under=85 $(PYTEST_ARGS)

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
