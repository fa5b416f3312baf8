# carbon-sweep: two commands for a newcomer (make demo, make test); make bench for the figures.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench studies clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

DEMO_STUDY ?= pareto_dense_vs_moe

demo: $(STAMP)
	@echo "== 1. The footprint of one run: Llama 2 70B on 2,048 A100s (layout chosen for least CO2e)"
	$(BIN)/carbon-sweep estimate studies/llama2_70b.toml
	@echo "== 2. Predictions beside published figures"
	$(BIN)/carbon-sweep validate
	@echo "== 3. A design-space sweep: dense vs MoE, loss against tCO2e, with figures and a report"
	$(BIN)/carbon-sweep run studies/$(DEMO_STUDY).toml --out results/$(DEMO_STUDY)
	@echo
	@echo "Open results/$(DEMO_STUDY)/report.html (figures in results/$(DEMO_STUDY)/figures/)"

test: $(STAMP)
	$(BIN)/python -m pytest

# each study with the command it is written for: [search] → optimize, [grid]/[study] → run,
# [serving] → serve (figures in results/<name>/figures), a single design → estimate (its JSON saved beside the others)
studies: $(STAMP)
	@mkdir -p results
	@for s in studies/*.toml; do n=$$(basename $$s .toml); echo "== $$s"; \
	  if grep -q '^\[search\]' $$s; then $(BIN)/carbon-sweep optimize $$s --out results/$$n || exit 1; \
	  elif grep -q '^\[grid\]\|^\[study\]' $$s; then $(BIN)/carbon-sweep run $$s --out results/$$n || exit 1; \
	  elif grep -q '^\[serving\]' $$s; then $(BIN)/carbon-sweep serve $$s --out results/$$n || exit 1; \
	  else $(BIN)/carbon-sweep estimate $$s --json > results/$$n.json && $(BIN)/carbon-sweep estimate $$s || exit 1; fi; \
	done

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/suite.py
	$(BIN)/python bench/dask_workers.py
	$(BIN)/python bench/search_quality.py
	$(BIN)/python bench/uncertainty.py
	$(BIN)/python bench/start_time.py

clean:
	rm -rf $(VENV) results bench/out .pytest_cache
