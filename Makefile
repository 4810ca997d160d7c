# The two commands of the README: `make demo` and `make test`. Both install first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO ?= runs/demo
PETS ?= ../shared/data/pets09-s2l1
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test lint format constraints pets repro clean

# pip (not uv/poetry) so the torch wheels already on disk are used; constraints.txt pins every
# package from a real, `pip check`-clean resolve.
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(INSTALLED)

install: $(INSTALLED)

## The main job on embedded defaults: the secure lifecycle, stage by stage, on synthetic data.
## data: generate -> sign -> verify -> validate -> screen -> publish (DVC); then train -> evaluate;
## every control's decision lands in the hash-chained audit log, checked at the end.
SECMLOPS := $(abspath $(BIN))/secmlops
demo: install
	$(SECMLOPS) data generate --out $(DEMO)/data --images 1000 --seed 0 --overwrite
	test -f $(DEMO)/keys/data-owner.key || $(SECMLOPS) keys generate --name data-owner --out $(DEMO)/keys
	$(SECMLOPS) data sign $(DEMO)/data --key $(DEMO)/keys/data-owner.key
	$(SECMLOPS) policy override policy.yaml --out $(DEMO)/policy.yaml \
	  --set "data.trusted_data_keys=[$$($(SECMLOPS) keys id $(DEMO)/keys/data-owner.pub)]" \
	  --reason "embedded demo: trust the data-owner key generated for this workspace"
	$(SECMLOPS) data verify $(DEMO)/data --trusted-keys $(DEMO)/keys/data-owner.pub --policy $(DEMO)/policy.yaml
	$(SECMLOPS) data validate $(DEMO)/data --policy $(DEMO)/policy.yaml --report $(DEMO)/validation.json
	$(SECMLOPS) data screen $(DEMO)/data --policy $(DEMO)/policy.yaml --report $(DEMO)/screening.json
	$(SECMLOPS) data publish $(DEMO)/data --name street
	$(SECMLOPS) train --data $(DEMO)/data --out $(DEMO)/model --overwrite --history $(DEMO)/training_history.json
	$(SECMLOPS) evaluate --model $(DEMO)/model --data $(DEMO)/data --split test --out $(DEMO)/metrics.json
	$(SECMLOPS) audit verify
	@echo "model: $(DEMO)/model  metrics: $(DEMO)/metrics.json  reports: $(DEMO)/*.json  audit: runs/audit/audit.jsonl"

## Lint, format check, then every test.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Re-resolve and pin every dependency (run after changing pyproject.toml).
constraints:
	rm -rf .venv-resolve && $(PYTHON) -m venv .venv-resolve
	.venv-resolve/bin/python -m pip install --quiet --upgrade pip
	.venv-resolve/bin/python -m pip install --quiet -e '.[dev]'
	.venv-resolve/bin/python -m pip check
	( echo "# Pinned from a real resolve on Python 3.11 x86_64 (pip check clean). Regenerate: make constraints"; \
	  .venv-resolve/bin/python -m pip freeze --exclude-editable ) > constraints.txt
	rm -rf .venv-resolve

## The real-data profile: PETS 2009 S2.L1 frames 1-600 to train, 601-795 to test.
pets: install
	$(BIN)/secmlops data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 1:600 --out runs/pets/train --overwrite
	$(BIN)/secmlops data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 601:795 --out runs/pets/test --overwrite
	$(BIN)/secmlops train --data runs/pets/train --out runs/pets/model --overwrite
	$(BIN)/secmlops evaluate --model runs/pets/model --data runs/pets/test --split all --out runs/pets/metrics.json

## The DVC pipeline (dvc.yaml + params.yaml): reruns only the stages whose inputs changed.
repro: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

clean:
	rm -rf runs .pytest_cache .ruff_cache
