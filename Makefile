# Two commands do everything on a fresh machine with Python >= 3.10 and pip:
#   make demo   creates .venv, installs the package, runs the main job
#   make test   creates .venv, installs the package and test tools, lints, runs pytest
PYTHON ?= python3
VENV ?= .venv
# The torch requirement installed first. On a CPU-only machine, a CPU build saves
# gigabytes, e.g. make test TORCH_SPEC='torch==2.13.0' where that build is on the index.
TORCH_SPEC ?= torch>=2.4
BIN := $(VENV)/bin
STAMP := $(VENV)/.npfl-installed

.PHONY: demo test lint format notebooks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# The main job: the students' training demo, then the instructors' grading demo.
demo: $(STAMP)
	$(BIN)/python -m npfl_lib demo
	$(BIN)/npfl-course demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test files run on TEST_JOBS processes side by side (pytest-xdist; one file stays in one
# process, so its module-scoped fixtures are built once). TEST_JOBS=0 runs them in this one.
TEST_JOBS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The lecture notebooks from their py:percent sources (cell ids and metadata kept).
notebooks: $(STAMP)
	for source in lectures/src/[0-9][0-9]_*.py; do \
	    $(BIN)/jupytext --quiet --update --to ipynb \
	        --output lectures/$$(basename $$source .py).ipynb $$source || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info
