# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/darkroom run configs/jobs/quickstart.yaml --no-table
	$(BIN)/darkroom compare --experiment quickstart --metric fid --html outputs/quickstart/report.html \
		--real-baseline builtin:digits:digits:500
	@echo
	@echo "Open the runs in MLflow's UI:  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: $(STAMP)
	$(BIN)/ruff check darkroom tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=25

# The inner loop: every test that needs no Ray, no server and no more than a few seconds, on two
# pytest workers (a module per worker, so module fixtures are built once): under 2 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/ruff check darkroom tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not ray and not slow" -n 2 --dist loadfile --durations=10

lint: $(STAMP)
	$(BIN)/ruff check darkroom tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) outputs mlflow.db mlruns
