# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_RUN  := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
VENDOR := web/static/vendor/socket.io.min.js
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench assets locale oidc-provider chromium coturn ffmpeg nginx clean

run: $(STAMP_RUN) assets locale ffmpeg
	$(VENV)/bin/sprechstunde serve $(ARGS)

test: $(STAMP_TEST) assets oidc-provider chromium coturn ffmpeg nginx
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/mypy

bench: $(STAMP_TEST)
	$(PY) bench/queue_load.py
	$(PY) bench/media_load.py
	$(PY) bench/townhall_load.py
	$(PY) bench/stats_load.py
	$(PY) bench/metrics_load.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP_RUN)

# The message catalogs (gettext .po, edited by translators) compiled to .mo; server/i18n.py loads them.
PO_FILES := $(wildcard server/locale/*/LC_MESSAGES/messages.po)
MO_FILES := $(PO_FILES:.po=.mo)
locale: $(MO_FILES)

server/locale/%/LC_MESSAGES/messages.mo: server/locale/%/LC_MESSAGES/messages.po $(STAMP_RUN)
	$(VENV)/bin/pybabel compile --statistics -D messages -i $< -o $@

# Browser assets come from npm at build time and are served by our server: no CDN.
assets: $(VENDOR)

$(VENDOR): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p web/static/vendor
	cp web/node_modules/socket.io-client/dist/socket.io.min.js web/static/vendor/
	cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css web/static/vendor/

# A real OpenID provider (panva/oidc-provider on Node) for the single sign-on tests (tests/test_oidc.py).
OIDC_PROVIDER := tests/oidc/node_modules/oidc-provider/package.json
oidc-provider: $(OIDC_PROVIDER)

$(OIDC_PROVIDER): tests/oidc/package.json tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the real-browser tests (Playwright drives it; no browser download).
chromium:
	@[ -x $(CHROMIUM) ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Debian's coturn for the TURN tests, which start their own turnserver: the package's service is stopped.
coturn:
	@command -v turnserver >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq coturn >/dev/null \
		&& { $(SUDO) systemctl disable --now coturn >/dev/null 2>&1 || true; }; }

# Debian's ffmpeg composes each finished recording into one playable file (server/media/compose.py).
ffmpeg:
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq ffmpeg >/dev/null; }

# Debian's nginx: tests check deploy/'s site with `nginx -t` and run several nodes behind it (they start their
# own nginx on free ports; the package's service is stopped).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx >/dev/null \
		&& { $(SUDO) systemctl disable --now nginx >/dev/null 2>&1 || $(SUDO) service nginx stop >/dev/null 2>&1 || true; }; }

clean:
	rm -rf $(VENV) web/node_modules web/static/vendor tests/oidc/node_modules
