# Two entry points (see README): `make demo` runs the codec on a sample clip, `make test` runs the tests
# (`make lint`: ruff and mypy on gvc_jax/ and weights_convert/, configured in pyproject.toml; CI runs it first).
# Each creates .venv and installs what it needs on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo lint test venv venv-dev clean

$(BIN)/.runtime: requirements.txt setup.cfg
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# torch goes first, on its own, so nothing pulls a CUDA build.
$(BIN)/.dev: $(BIN)/.runtime requirements-dev.txt
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(BIN)/.runtime
venv-dev: $(BIN)/.dev

demo: $(BIN)/.runtime
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(BIN)/python -m gvc_jax.demo

# Static checks (ruff: lint and import order; mypy: types), configured in pyproject.toml.
lint: $(BIN)/.dev
	$(BIN)/python -m ruff check gvc_jax weights_convert
	$(BIN)/python -m mypy gvc_jax weights_convert

# TEST_WORKERS pytest-xdist processes, each taking whole test files (module fixtures run once);
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: $(BIN)/.dev
	JAX_PLATFORMS=cpu HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
