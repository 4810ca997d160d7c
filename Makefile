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

.PHONY: install services demo ui demo-cli tradeoffs-pets test lint format constraints pets repro clean

# pip (not uv/poetry) so the torch wheels already on disk are used; constraints.txt pins every
# package from a real, `pip check`-clean resolve.
$(INSTALLED): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(INSTALLED)

install: $(INSTALLED)

## The defence the lifecycle trains with (and `secmlops train`'s default): FGSM with random start
## at 4/255 on half of every batch (docs/results.md: 88% of PGD-3 training's robustness at 1.5x a
## clean epoch instead of 2x). The undefended baseline is trained with --adversarial none.
DEFENCE ?= --adversarial fgsm-rs --eps 4/255 --mix 0.5

# $(call robustness_gate,TRAIN_DATA,EVAL_DATA,SPLIT,DIR,POLICY): train an undefended and a defended
# model into DIR, attack both with the policy's suite, and gate both. The undefended model must
# FAIL the gate (exit 1, anything else stops make); the defended one must pass. Both decisions
# are signed records in DIR and entries in the audit log.
define robustness_gate
	test -f $(4)/keys/model-signer.key || $(SECMLOPS) keys generate --name model-signer --out $(4)/keys
	$(SECMLOPS) train --data $(1) --out $(4)/model --overwrite --adversarial none --history $(4)/training_history.json
	$(SECMLOPS) evaluate --model $(4)/model --data $(2) --split $(3) --attacks --policy $(5) --out $(4)/robustness-undefended.json
	$(SECMLOPS) gate --report $(4)/robustness-undefended.json --policy $(5) --key $(4)/keys/model-signer.key --record $(4)/gate-undefended.json; \
	  test $$? -eq 1 && echo "as expected: the undefended model fails the robustness gate"
	$(SECMLOPS) train --data $(1) --out $(4)/model-defended --overwrite $(DEFENCE)
	$(SECMLOPS) evaluate --model $(4)/model-defended --data $(2) --split $(3) --attacks --policy $(5) --baseline $(4)/model --out $(4)/robustness-defended.json
	$(SECMLOPS) gate --report $(4)/robustness-defended.json --policy $(5) --key $(4)/keys/model-signer.key --record $(4)/gate-defended.json
endef

## The main job on embedded defaults: the secure lifecycle, run by a real Airflow (scheduler,
## dag-processor, api-server; LocalExecutor, SQLite) on synthetic data: data pull (DVC, signed
## manifest, validation, poisoning screen) -> training with adversarial augmentation and its
## undefended baseline -> attack suite -> gate -> sign -> registry -> promote -> serving ->
## monitoring of a drifted window -> retraining request. Then the audit chain is verified.
SECMLOPS := $(abspath $(BIN))/secmlops
demo: install
	$(SECMLOPS) demo --workdir $(DEMO) --images 1000
	. $(DEMO)/secmlops.env && $(SECMLOPS) audit verify

## The demo's workspace in the Airflow UI (after `make demo`: its DAGs, runs and the SecMLOps
## view): prints the URL, the user and the password; Ctrl-C stops every process it started.
UI_PORT ?= 8080
ui: install
	$(SECMLOPS) ui --workdir $(DEMO) --port $(UI_PORT)

## The same stages without a scheduler, on the CLI: an undefended model must fail the gate, the
## defended one pass (both decisions signed and audited).
demo-cli: install
	$(SECMLOPS) data generate --out $(DEMO)-cli/data --images 1000 --seed 0 --overwrite
	test -f $(DEMO)-cli/keys/data-owner.key || $(SECMLOPS) keys generate --name data-owner --out $(DEMO)-cli/keys
	$(SECMLOPS) data sign $(DEMO)-cli/data --key $(DEMO)-cli/keys/data-owner.key
	$(SECMLOPS) policy override policy.yaml --out $(DEMO)-cli/policy.yaml \
	  --set "data.trusted_data_keys=[$$($(SECMLOPS) keys id $(DEMO)-cli/keys/data-owner.pub)]" \
	  --reason "embedded demo: trust the data-owner key generated for this workspace"
	$(SECMLOPS) data verify $(DEMO)-cli/data --trusted-keys $(DEMO)-cli/keys/data-owner.pub --policy $(DEMO)-cli/policy.yaml
	$(SECMLOPS) data validate $(DEMO)-cli/data --policy $(DEMO)-cli/policy.yaml --report $(DEMO)-cli/validation.json
	$(SECMLOPS) data screen $(DEMO)-cli/data --policy $(DEMO)-cli/policy.yaml --report $(DEMO)-cli/screening.json
	$(call robustness_gate,$(DEMO)-cli/data,$(DEMO)-cli/data,test,$(DEMO)-cli,$(DEMO)-cli/policy.yaml)
	$(SECMLOPS) audit verify

## The production-topology tests use this machine's PostgreSQL (127.0.0.1:5432) and Redis
## (127.0.0.1:6379); start them with Debian's own commands when they are not running.
services:
	pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster $$(pg_lsclusters -h | awk 'NR==1 {print $$1, $$2}') start
	redis-cli -h 127.0.0.1 -p 6379 ping > /dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379
	pg_isready -h 127.0.0.1 -p 5432 -t 30 && redis-cli -h 127.0.0.1 -p 6379 ping

## The trade-off study on the real PETS footage (about an hour on 2 cores; an interrupted run
## continues from its cache), then its table, plots and metadata are copied into docs/results/.
## Two processes, one core each: the PGD-3 models are trained beside the study, which waits for
## any of them still in training and reuses it (and trains it itself if the trainer failed).
TRADEOFFS_PETS ?= runs/tradeoffs/pets-full
TRADEOFFS_PETS_STUDY := tradeoffs --data runs/pets/train --eval-data runs/pets/test --eval-split all \
  --cache runs/tradeoffs-cache/pets-full
tradeoffs-pets: install
	test -f runs/pets/train/annotations.json || $(SECMLOPS) data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 1:600 --out runs/pets/train --overwrite
	test -f runs/pets/test/annotations.json || $(SECMLOPS) data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 601:795 --out runs/pets/test --overwrite
	test -f $(TRADEOFFS_PETS)/tradeoffs.csv || { \
	  OMP_NUM_THREADS=1 $(SECMLOPS) $(TRADEOFFS_PETS_STUDY) --train-only pgd3-eps2,pgd3-eps4,pgd3-eps8 & \
	  OMP_NUM_THREADS=1 $(SECMLOPS) $(TRADEOFFS_PETS_STUDY) --out $(TRADEOFFS_PETS); study=$$?; \
	  wait $$!; exit $$study; }
	mkdir -p docs/results/tradeoffs-pets
	cp $(TRADEOFFS_PETS)/tradeoffs.csv $(TRADEOFFS_PETS)/tradeoffs.md $(TRADEOFFS_PETS)/study.json \
	  $(TRADEOFFS_PETS)/robust_vs_training_cost.png $(TRADEOFFS_PETS)/robust_vs_clean_pareto.png docs/results/tradeoffs-pets/

## Lint, format check, type check, then every test.
test: install services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
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
	$(SECMLOPS) data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 1:600 --out runs/pets/train --overwrite
	$(SECMLOPS) data import-mot --video $(PETS)/vtest.avi --gt $(PETS)/gt.txt --frames 601:795 --out runs/pets/test --overwrite
	$(SECMLOPS) policy override policy.yaml --out runs/pets/policy.yaml \
	  --set gate.min_robust_map50.fgsm_linf_4=0.65 --set gate.min_robust_map50.pgd_linf_2=0.72 \
	  --set gate.min_robust_map50.pgd_linf_4=0.60 \
	  --reason "PETS camera: its undefended detector already keeps 0.41 mAP@0.5 under PGD-10 at 4/255 (docs/results.md); the robustness bar must sit above that"
	$(call robustness_gate,runs/pets/train,runs/pets/test,all,runs/pets,runs/pets/policy.yaml)

## The DVC pipeline (dvc.yaml + params.yaml): reruns only the stages whose inputs changed.
repro: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

clean:
	rm -rf runs .pytest_cache .ruff_cache
